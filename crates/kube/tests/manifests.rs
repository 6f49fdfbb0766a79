//! deploy/'s manifests, checked without a cluster: every object against the Kubernetes OpenAPI schemas (strict:
//! an unknown field fails) and every file read alike by YAML 1.1 and 1.2, then trestle's own policy: flags the binaries know, paths on the right mounts, the
//! conflist the plugins accept, written by trestled alone and never removed, the node-agent settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use trestle_kube::manifest::{self, Container, DaemonSet, EnvSource, PodSpec};

#[path = "manifests/loader.rs"]
mod loader;
#[path = "manifests/paths.rs"]
mod paths;
#[path = "manifests/schema.rs"]
mod schema;

/// The variants under deploy/.
const TREES: [&str; 2] = ["etcd", "single-node"];
/// Names other add-ons and the runtimes' own defaults give their configs; trestle's must sort before each.
const OTHER_CONFLISTS: [&str; 10] = [
    "10-calico.conflist",
    "10-canal.conflist",
    "10-containerd-net.conflist",
    "10-flannel.conflist",
    "10-kindnet.conflist",
    "10-kuberouter.conflist",
    "11-crio-ipv4-bridge.conflist",
    "87-podman-bridge.conflist",
    "99-loopback.conf",
    "100-crio-bridge.conflist",
];
/// Paths trestled reaches without a flag: named network namespaces (it finds the others through /proc).
const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// deploy/, or `TRESTLE_DEPLOY_DIR` (a changed copy, to see that these tests catch a mistake).
fn deploy() -> PathBuf {
    std::env::var_os("TRESTLE_DEPLOY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy"))
}

fn objects(tree: &str) -> Vec<Value> {
    manifest::load(&deploy().join(tree)).unwrap_or_else(|e| panic!("deploy/{tree}: {}", chain(&e)))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

fn daemon_set(tree: &str) -> (Vec<Value>, DaemonSet) {
    let objs = objects(tree);
    let ds = manifest::daemon_set(&objs, "trestle")
        .unwrap_or_else(|e| panic!("deploy/{tree}: {}", chain(&e)));
    (objs, ds)
}

fn install(pod: &PodSpec) -> &Container {
    pod.init_containers
        .iter()
        .find(|c| c.name == "install")
        .expect("init container `install`")
}

fn trestled(pod: &PodSpec) -> &Container {
    pod.containers
        .iter()
        .find(|c| c.name == "trestled")
        .expect("container `trestled`")
}

#[test]
fn trees_hold_the_add_on_and_no_secret() {
    for tree in TREES {
        let objs = objects(tree);
        let ids: Vec<String> = objs
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    manifest::str_at(o, "/kind"),
                    manifest::str_at(o, "/metadata/name")
                )
            })
            .collect();
        assert_eq!(
            ids,
            [
                "Namespace trestle-system",
                "ServiceAccount trestle",
                "ConfigMap trestle-config",
                "DaemonSet trestle"
            ],
            "deploy/{tree}"
        );
        for o in &objs[1..] {
            assert_eq!(
                manifest::str_at(o, "/metadata/namespace"),
                "trestle-system",
                "deploy/{tree}: {o}"
            );
        }
        // The etcd client certificate is created by hand (deploy/etcd/kustomization.yaml says why): a Secret in the
        // tree would overwrite it at every `kubectl apply -k`.
        assert!(
            objs.iter()
                .all(|o| manifest::str_at(o, "/kind") != "Secret"),
            "deploy/{tree} holds a Secret"
        );
    }
}

/// deploy/etcd/secret.example.yaml's one object.
fn secret_example() -> Vec<Value> {
    let path = deploy().join("etcd/secret.example.yaml");
    let docs = manifest::read_yaml(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 1, "{}", path.display());
    docs
}

#[test]
fn the_secret_example_is_the_secret_the_daemonset_mounts() {
    let secret = &secret_example()[0];
    let (_, ds) = daemon_set("etcd");
    let volume = ds
        .pod()
        .volumes
        .iter()
        .find_map(|v| v.secret.as_ref())
        .expect("a Secret volume");
    assert_eq!(manifest::str_at(secret, "/kind"), "Secret");
    assert_eq!(
        manifest::str_at(secret, "/metadata/name"),
        volume.secret_name
    );
    assert_eq!(
        manifest::str_at(secret, "/metadata/namespace"),
        ds.metadata.namespace
    );
    let keys: Vec<&String> = secret["stringData"].as_object().unwrap().keys().collect();
    let wanted: Vec<&String> = volume.items.iter().map(|i| &i.key).collect();
    assert_eq!(keys, wanted);
    // Not part of the tree: applied with it, it would overwrite the real certificates.
    let kustomization = std::fs::read_to_string(deploy().join("etcd/kustomization.yaml")).unwrap();
    assert!(!kustomization.contains("secret.example.yaml"));
}

/// A binary of this build: beside the test executable's directory (target/debug/deps/..).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p trestled -p trestlectl` first (`cargo test --workspace` builds it)",
        path.display()
    );
    path
}

/// The long options of `bin [subcommand...] --help`, with their defaults.
fn help(c: &Container) -> BTreeMap<String, Option<String>> {
    let name = Path::new(&c.command[0])
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let sub: Vec<&String> = c.command[1..]
        .iter()
        .chain(&c.args)
        .take_while(|a| !a.starts_with('-'))
        .collect();
    let out = Command::new(binary(name))
        .args(&sub)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{name} {sub:?} --help: {out:?}");
    let mut flags = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.trim_start().starts_with('-') {
            last = line
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| {
                    w.trim_end_matches(',')
                        .split(['=', '[', '<'])
                        .next()
                        .unwrap()
                        .to_string()
                });
            if let Some(f) = &last {
                flags.insert(f.clone(), None);
            }
        }
        if let (Some(f), Some(i)) = (&last, line.find("[default: ")) {
            let rest = &line[i + "[default: ".len()..];
            flags.insert(
                f.clone(),
                Some(rest[..rest.rfind(']').unwrap()].to_string()),
            );
        }
    }
    flags
}

#[test]
fn every_flag_is_one_the_binary_knows() {
    for tree in TREES {
        let (_, ds) = daemon_set(tree);
        for c in ds.pod().all_containers() {
            let known = help(c);
            for (flag, _) in c.flags() {
                assert!(
                    known.contains_key(flag),
                    "deploy/{tree}: {} {flag}: not in `{} --help`",
                    c.name,
                    c.command.join(" ")
                );
            }
        }
    }
}

/// The value a container runs with for `flag`: its own, else the binary's default.
fn value(c: &Container, defaults: &BTreeMap<String, Option<String>>, flag: &str) -> Option<String> {
    c.flag(flag)
        .map(str::to_string)
        .or_else(|| defaults.get(flag).cloned().flatten())
}

#[test]
fn the_conflist_is_one_the_plugins_accept_and_sorts_first() {
    for tree in TREES {
        let (objs, ds) = daemon_set(tree);
        let pod = ds.pod();
        let d = trestled(pod);
        let defaults = help(d);
        let path =
            value(d, &defaults, "--cni-conflist-path").expect("trestled writes the conflist");
        let host = pod
            .host_path(d, &path)
            .expect("the conflist path is on a hostPath");
        assert_eq!(
            host.parent(),
            Some(Path::new("/etc/cni/net.d")),
            "deploy/{tree}"
        );
        let name = host.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "05-trestle.conflist");
        for other in OTHER_CONFLISTS {
            assert!(name < other, "{name} does not sort before {other}");
        }
        let conf = manifest::config_map_data(&objs, "trestle-config").unwrap();
        let text = conf
            .get(name)
            .unwrap_or_else(|| panic!("deploy/{tree}: no ConfigMap key {name}"));
        let list = cni_runtime::NetworkList::from_bytes(text.as_bytes(), name).unwrap();
        assert_eq!(list.plugins.len(), 1, "deploy/{tree}");
        let plugin = &list.plugins[0];
        assert_eq!(plugin["type"], "trestle");
        let ipam = &plugin["ipam"];
        assert_eq!(ipam["type"], "trestle-ipam");
        assert_eq!(
            ipam["daemon"]["socket"].as_str(),
            value(d, &defaults, "--socket").as_deref(),
            "deploy/{tree}"
        );
        assert_eq!(
            ipam["daemon"]["deleteQueue"].as_str(),
            value(d, &defaults, "--delete-queue").as_deref(),
            "deploy/{tree}"
        );
        assert!(
            ipam["ranges"][0][0]["subnet"].is_string(),
            "deploy/{tree}: a pool"
        );
    }
}

#[test]
fn the_conflist_is_written_by_trestled_alone_and_never_removed() {
    for tree in TREES {
        let (_, ds) = daemon_set(tree);
        let pod = ds.pod();
        let init = install(pod);
        assert_eq!(
            init.flag("--plugins-only"),
            Some(""),
            "deploy/{tree}: install must not write a conflist"
        );
        for f in [
            "--conf-dir",
            "--config",
            "--file",
            "--start-daemon",
            "--systemd-units",
        ] {
            assert_eq!(init.flag(f), None, "deploy/{tree}: install {f}");
        }
        // Nor could it: none of its mounts is the host's conf dir, above it or inside it.
        let conf_dir = Path::new("/etc/cni/net.d");
        for m in &init.volume_mounts {
            if let Some(host) = pod.host_path(init, &m.mount_path) {
                let reaches = conf_dir.starts_with(&host) || host.starts_with(conf_dir);
                assert!(!reaches, "deploy/{tree}: install mounts {}", host.display());
            }
        }
        // No preStop hook or anything else that runs at stop: the typed view refuses `lifecycle` (the DaemonSet
        // could not be read above with one), and only the image's own binaries run, which have no shell to `rm`
        // with.
        for c in pod.all_containers() {
            let bin = c.command.first().map(String::as_str).unwrap_or("");
            assert!(
                ["trestled", "trestlectl"]
                    .map(|b| format!("/usr/local/bin/{b}"))
                    .contains(&bin.to_string()),
                "deploy/{tree}: {} runs {bin:?}",
                c.name
            );
        }
    }
}

#[test]
fn probes_reach_the_metrics_address() {
    for tree in TREES {
        let (_, ds) = daemon_set(tree);
        let d = trestled(ds.pod());
        let addr: std::net::SocketAddr = d
            .flag("--metrics-addr")
            .expect("--metrics-addr")
            .parse()
            .unwrap();
        for (probe, path) in [
            (&d.liveness_probe, "/healthz"),
            (&d.readiness_probe, "/readyz"),
        ] {
            let get = &probe
                .as_ref()
                .unwrap_or_else(|| panic!("deploy/{tree}: no {path} probe"))
                .http_get;
            assert_eq!(get.path, path, "deploy/{tree}");
            assert_eq!(get.port, addr.port(), "deploy/{tree}: {path}");
            assert_eq!(
                get.host.as_deref(),
                Some(addr.ip().to_string().as_str()),
                "deploy/{tree}: {path}"
            );
        }
        assert!(
            d.ports.iter().any(|p| p.container_port == addr.port()),
            "deploy/{tree}: the port is declared"
        );
    }
}

#[test]
fn one_image_of_this_version() {
    let want = format!("localhost/trestle:{}", env!("CARGO_PKG_VERSION"));
    for tree in TREES {
        let (_, ds) = daemon_set(tree);
        for c in ds.pod().all_containers() {
            assert_eq!(c.image, want, "deploy/{tree}: {}", c.name);
            assert_eq!(
                c.image_pull_policy.as_deref(),
                Some("IfNotPresent"),
                "deploy/{tree}: {}",
                c.name
            );
        }
    }
}

#[test]
fn a_node_agent_on_every_node() {
    for tree in TREES {
        let (objs, ds) = daemon_set(tree);
        let pod = ds.pod();
        assert!(pod.host_network && pod.host_pid, "deploy/{tree}");
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        assert_eq!(pod.tolerations.len(), 1);
        let t = &pod.tolerations[0];
        assert_eq!(
            (t.operator.as_deref(), &t.key, &t.effect),
            (Some("Exists"), &None, &None),
            "deploy/{tree}"
        );
        assert_eq!(
            pod.dns_policy.as_deref(),
            Some("Default"),
            "deploy/{tree}: cluster DNS needs this pod first"
        );
        let u = ds.spec.update_strategy.as_ref().unwrap();
        assert_eq!(u.kind.as_deref(), Some("RollingUpdate"));
        let r = u.rolling_update.as_ref().unwrap();
        assert_eq!(
            r.max_unavailable,
            Some(manifest::IntOrString::Int(1)),
            "deploy/{tree}"
        );
        assert_eq!(
            r.max_surge,
            Some(manifest::IntOrString::Int(0)),
            "deploy/{tree}"
        );
        assert!(
            pod.termination_grace_period_seconds.is_some_and(|s| s > 0),
            "deploy/{tree}"
        );
        assert_eq!(
            pod.automount_service_account_token,
            Some(false),
            "deploy/{tree}"
        );
        let sa = manifest::find(
            &objs,
            "ServiceAccount",
            pod.service_account_name.as_deref().unwrap(),
        )
        .unwrap();
        assert_eq!(sa["automountServiceAccountToken"], false);
        for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
            assert!(
                objs.iter().all(|o| manifest::str_at(o, "/kind") != kind),
                "deploy/{tree}: {kind}"
            );
        }
        let ns = manifest::find(&objs, "Namespace", "trestle-system").unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "privileged"
        );
        assert_eq!(
            pod.init_containers
                .iter()
                .chain(&pod.containers)
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["install", "trestled"]
        );
        assert!(trestled(pod).privileged(), "deploy/{tree}");
        for c in pod.all_containers() {
            let limits = c.resources.as_ref().map(|r| r.limits.len()).unwrap_or(0);
            assert_eq!(
                limits, 0,
                "deploy/{tree}: {}: no limits on what every pod's ADD depends on",
                c.name
            );
            assert!(
                c.resources.as_ref().is_some_and(|r| !r.requests.is_empty()),
                "deploy/{tree}: {}",
                c.name
            );
        }
    }
}

#[test]
fn every_variable_is_defined_and_every_reference_resolves() {
    for tree in TREES {
        let (objs, ds) = daemon_set(tree);
        let conf = manifest::config_map_data(&objs, "trestle-config").unwrap();
        for c in ds.pod().all_containers() {
            for a in c.command.iter().chain(&c.args) {
                for r in manifest::references(a) {
                    // An undefined $(VAR) reaches the binary as the literal text: a silent misconfiguration.
                    assert!(
                        c.env_var(&r).is_some(),
                        "deploy/{tree}: {}: {a} refers to undefined {r}",
                        c.name
                    );
                }
            }
            for e in &c.env {
                match e.source() {
                    EnvSource::ConfigMapKey { name, key } => {
                        assert_eq!(name, "trestle-config");
                        assert!(
                            conf.contains_key(key),
                            "deploy/{tree}: {}: no key {key}",
                            e.name
                        );
                    }
                    EnvSource::Field(f) => {
                        assert!(["spec.nodeName", "status.hostIP"].contains(&f), "{f}")
                    }
                    EnvSource::Value(_) => {}
                    EnvSource::SecretKey { .. } => {
                        panic!("deploy/{tree}: secrets are files, not variables")
                    }
                }
            }
        }
        if tree == "etcd" {
            let d = trestled(ds.pod());
            for (flag, var) in [("--node-name", "NODE_NAME"), ("--node-ip", "NODE_IP")] {
                assert_eq!(
                    d.flag(flag),
                    Some(format!("$({var})").as_str()),
                    "deploy/{tree}"
                );
            }
            assert_eq!(
                d.env_var("NODE_NAME").unwrap().source(),
                EnvSource::Field("spec.nodeName")
            );
            assert_eq!(
                d.env_var("NODE_IP").unwrap().source(),
                EnvSource::Field("status.hostIP")
            );
            for key in ["etcd-endpoints", "routing"] {
                assert!(conf.contains_key(key), "deploy/etcd: ConfigMap key {key}");
            }
        }
    }
}
