//! The `CNI_*` environment, table-driven against the Go skel's rules.

use std::collections::HashMap;
use std::path::PathBuf;

use cni_proto::env::netns_override;
use cni_proto::{Command, Env};

const VARS: [&str; 5] = [
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

fn required(cmd: Command) -> &'static [&'static str] {
    match cmd {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        Command::Gc | Command::Status => &["CNI_PATH"],
        Command::Version => &[],
    }
}

fn full(cmd: &str) -> HashMap<&'static str, String> {
    HashMap::from([
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", "ctr-1".to_string()),
        ("CNI_NETNS", "/run/netns/a".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_ARGS", "IgnoreUnknown=1".to_string()),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni".to_string()),
    ])
}

fn read(env: &HashMap<&'static str, String>) -> Result<Option<Env>, cni_proto::CniError> {
    Env::from_lookup(|k| env.get(k).cloned())
}

fn missing_msg(names: &[&str]) -> String {
    format!("required env variables [{}] missing", names.join(","))
}

#[test]
fn complete_environment_for_every_command() {
    for cmd in Command::ALL {
        let env = read(&full(cmd.as_str())).unwrap().unwrap();
        assert_eq!(
            env,
            Env {
                command: cmd,
                container_id: "ctr-1".into(),
                netns: "/run/netns/a".into(),
                ifname: "eth0".into(),
                args: "IgnoreUnknown=1".into(),
                path: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            }
        );
    }
}

#[test]
fn every_command_times_every_missing_var() {
    for cmd in Command::ALL {
        for var in VARS {
            // Unset and set-but-empty are the same to the skel.
            for empty in [false, true] {
                let mut env = full(cmd.as_str());
                if empty {
                    env.insert(var, String::new());
                } else {
                    env.remove(var);
                }
                let got = read(&env);
                if required(cmd).contains(&var) {
                    let e = got.unwrap_err();
                    assert_eq!(
                        (e.code, e.msg.clone()),
                        (4, missing_msg(&[var])),
                        "{cmd} {var}"
                    );
                } else {
                    let env = got.unwrap().unwrap();
                    assert_eq!(env.command, cmd);
                }
            }
        }
        // Everything missing: all required ones, in Go's order.
        let env = HashMap::from([("CNI_COMMAND", cmd.as_str().to_string())]);
        match required(cmd) {
            [] => assert!(read(&env).unwrap().is_some()),
            names => assert_eq!(read(&env).unwrap_err().msg, missing_msg(names), "{cmd}"),
        }
    }
}

#[test]
fn no_command_means_no_env() {
    let mut env = full("ADD");
    env.remove("CNI_COMMAND");
    assert_eq!(read(&env), Ok(None));
    env.insert("CNI_COMMAND", String::new());
    assert_eq!(read(&env), Ok(None));
}

#[test]
fn unknown_command_is_code_4() {
    for cmd in ["add", "FOO", "Add", " ADD"] {
        let e = read(&full(cmd)).unwrap_err();
        assert_eq!((e.code, e.msg), (4, format!("unknown CNI_COMMAND: {cmd}")));
    }
}

#[test]
fn validation_of_required_values() {
    let mut env = full("ADD");
    env.insert("CNI_CONTAINERID", "-bad".into());
    let e = read(&env).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (4, "invalid characters in containerID")
    );
    let mut env = full("DEL");
    env.insert("CNI_IFNAME", "a/b".into());
    let e = read(&env).unwrap_err();
    assert_eq!(e.code, 4);
    assert!(e.msg.starts_with("interface name contains"));
    // A validation error is returned at once, before missing variables are reported.
    let mut env = full("ADD");
    env.remove("CNI_NETNS");
    env.remove("CNI_PATH");
    env.insert("CNI_IFNAME", "x".repeat(16));
    assert_eq!(read(&env).unwrap_err().msg, "interface name is too long");
    // ...and the container ID is checked before the interface name.
    env.insert("CNI_CONTAINERID", "a b".into());
    assert_eq!(
        read(&env).unwrap_err().msg,
        "invalid characters in containerID"
    );
    // But a missing container ID does not hide a bad ifname.
    env.remove("CNI_CONTAINERID");
    assert_eq!(read(&env).unwrap_err().msg, "interface name is too long");
}

#[test]
fn values_unused_by_a_command_are_not_validated() {
    for cmd in ["GC", "STATUS", "VERSION"] {
        let mut env = full(cmd);
        env.insert("CNI_CONTAINERID", "../../etc".into());
        env.insert("CNI_IFNAME", "bad name with spaces".into());
        let got = read(&env).unwrap().unwrap();
        assert_eq!(got.container_id, "../../etc");
    }
    // DEL tolerates an empty netns.
    let mut env = full("DEL");
    env.insert("CNI_NETNS", String::new());
    assert_eq!(read(&env).unwrap().unwrap().netns, "");
}

#[test]
fn path_splitting_drops_empty_entries() {
    let mut env = full("ADD");
    env.insert("CNI_PATH", ":/a::/b/:".into());
    let got = read(&env).unwrap().unwrap();
    assert_eq!(got.path, vec![PathBuf::from("/a"), PathBuf::from("/b/")]);
    // Only separators: present (so not "missing") but naming no directory.
    env.insert("CNI_PATH", ":".into());
    assert!(read(&env).unwrap().unwrap().path.is_empty());
}

#[test]
fn netns_override_values() {
    for (v, expected) in [
        ("1", true),
        ("true", true),
        ("TRUE", true),
        ("0", false),
        ("yes", false),
        ("", false),
    ] {
        assert_eq!(netns_override(|_| Some(v.to_string())), expected, "{v}");
    }
    assert!(!netns_override(|_| None));
}

#[test]
fn non_utf8_variables_are_named_not_missing() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let env = full("ADD");
    for bad in [
        "CNI_IFNAME",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_ARGS",
        "CNI_PATH",
        "CNI_COMMAND",
    ] {
        let get = |k: &str| -> Option<OsString> {
            if k == bad {
                return Some(OsString::from_vec(vec![b'e', b't', 0xff]));
            }
            env.get(k).map(OsString::from)
        };
        let err = Env::from_os_lookup(get).unwrap_err();
        assert_eq!(err.code, 4, "{bad}");
        assert_eq!(err.msg, format!("{bad} is not valid UTF-8"));
    }
    // Valid UTF-8 reads as from_lookup does.
    let got = Env::from_os_lookup(|k| env.get(k).map(OsString::from)).unwrap();
    assert_eq!(got, read(&env).unwrap());
}
