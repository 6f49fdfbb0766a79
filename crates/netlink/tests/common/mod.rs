//! Shared helpers for the privileged tests: every test works in namespaces
//! it creates itself, never in the machine's own.

#![allow(dead_code)] // each test binary uses a different subset

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use trestle_netlink::{Link, Netlink, VethEnd};
use trestle_netns::NetNs;

/// A fresh namespace and a netlink socket bound to it.
pub struct TestNs {
    /// The namespace (kept open: it dies with the handle).
    pub ns: NetNs,
    /// A socket opened inside `ns`.
    pub nl: Netlink,
}

/// Creates a fresh namespace and opens a socket inside it.
pub fn test_ns() -> TestNs {
    let ns = NetNs::new_anonymous().expect("create netns");
    let nl = ns
        .run(Netlink::open)
        .expect("enter netns")
        .expect("open netlink");
    assert!(
        !ns.is_current().unwrap(),
        "test must not run in its caller's namespace"
    );
    TestNs { ns, nl }
}

/// Runs `cmd args..` (iproute2) inside `ns` through nsenter, as an
/// independent view of the kernel state, and returns its stdout.
pub fn in_ns(ns: &NetNs, cmd: &str, args: &[&str]) -> String {
    let path = format!("/proc/{}/fd/{}", std::process::id(), ns.fd().as_raw_fd());
    let out = Command::new("nsenter")
        .arg(format!("--net={path}"))
        .arg(cmd)
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A veth end named `name` with kernel defaults.
pub fn end(name: &str) -> VethEnd {
    VethEnd {
        name: name.into(),
        ..VethEnd::default()
    }
}

/// Looks `name` up and fails the test if it is missing.
pub fn link(nl: &mut Netlink, name: &str) -> Link {
    nl.link_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("link {name} missing"))
}

/// Waits (up to 2 s) until `name` is operationally up.
pub fn wait_oper_up(nl: &mut Netlink, name: &str) -> Link {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let l = link(nl, name);
        if l.oper_up || Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A veth pair with both ends in `t`'s namespace, both up.
pub fn local_veth(t: &mut TestNs, a: &str, b: &str) -> (u32, u32) {
    t.nl.create_veth(&end(a), &end(b), t.ns.fd()).unwrap();
    let (ia, ib) = (link(&mut t.nl, a).index, link(&mut t.nl, b).index);
    t.nl.set_up(ia, true).unwrap();
    t.nl.set_up(ib, true).unwrap();
    (ia, ib)
}

/// Creates bridge `name` with VLAN filtering; `false` (after checking the
/// kernel's exact answer) on kernels built without
/// `CONFIG_BRIDGE_VLAN_FILTERING`, which refuse it with `EOPNOTSUPP`.
pub fn create_filtering_bridge(nl: &mut Netlink, name: &str) -> bool {
    match nl.create_bridge(name, None, true) {
        Ok(()) => true,
        Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
            assert_eq!(
                nl.link_by_name(name).unwrap(),
                None,
                "failed create left a link"
            );
            eprintln!("kernel lacks CONFIG_BRIDGE_VLAN_FILTERING: only the refusal is checked");
            false
        }
        Err(e) => panic!("create filtering bridge: {e:?}"),
    }
}
