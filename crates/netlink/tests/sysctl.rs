//! sysctl inside a namespace (privileged).

use trestle_netlink::sysctl;
use trestle_netns::NetNs;

#[test]
#[ignore = "privileged: needs root"]
fn set_inside_namespace_leaves_root_alone() {
    let key = "net/ipv4/conf/all/forwarding";
    let root_before = sysctl::get(key).unwrap();
    let flipped = if root_before == "1" { "0" } else { "1" };
    let ns = NetNs::new_anonymous().unwrap();
    let inside = ns
        .run(|| {
            sysctl::set(key, flipped)?;
            sysctl::get(key)
        })
        .unwrap()
        .unwrap();
    assert_eq!(inside, flipped);
    assert_eq!(
        sysctl::get(key).unwrap(),
        root_before,
        "root namespace changed"
    );
    // A second thread in the namespace sees the value that was set.
    assert_eq!(ns.run(|| sysctl::get(key)).unwrap().unwrap(), flipped);

    let missing = ns
        .run(|| sysctl::get("net/ipv4/conf/nosuchdev/rp_filter"))
        .unwrap();
    assert_eq!(missing.unwrap_err().kind(), std::io::ErrorKind::NotFound);
}
