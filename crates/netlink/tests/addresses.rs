//! Addresses against the real kernel (privileged).

mod common;

use common::{in_ns, link, local_veth, test_ns};
use ipnet::IpNet;
use trestle_netlink::Error;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// `IFA_F_NODAD`.
const NODAD: u32 = 0x02;
/// `IFA_F_TENTATIVE`.
const TENTATIVE: u32 = 0x40;

#[test]
#[ignore = "privileged: needs root"]
fn add_list_delete() {
    let mut t = test_ns();
    let (a, b) = local_veth(&mut t, "va", "vb");

    t.nl.add_address(a, net("10.1.2.3/24"), false).unwrap();
    let err = t.nl.add_address(a, net("10.1.2.3/24"), false);
    assert!(matches!(err, Err(Error::Exists)), "{err:?}");
    // `brd +`: the subnet broadcast, as iproute2 shows it.
    assert!(in_ns(&t.ns, "ip", &["-4", "addr", "show", "dev", "va"])
        .contains("inet 10.1.2.3/24 brd 10.1.2.255"));
    // /31 and /32 get none.
    t.nl.add_address(b, net("10.9.9.9/32"), false).unwrap();
    assert!(!in_ns(&t.ns, "ip", &["-4", "addr", "show", "dev", "vb"]).contains("brd"));

    t.nl.add_address(a, net("2001:db8::1/64"), true).unwrap();
    t.nl.add_address(b, net("2001:db8::2/64"), false).unwrap();

    let on_a = t.nl.addresses(Some(a)).unwrap();
    assert!(on_a.iter().all(|x| x.index == a));
    let v4 = on_a
        .iter()
        .find(|x| x.address == net("10.1.2.3/24"))
        .expect("v4 listed");
    assert_eq!(v4.scope, 0);
    let v6 = on_a
        .iter()
        .find(|x| x.address == net("2001:db8::1/64"))
        .expect("v6 listed");
    assert_eq!(
        v6.flags & (NODAD | TENTATIVE),
        NODAD,
        "nodad address is never tentative"
    );
    let on_b = t.nl.addresses(Some(b)).unwrap();
    let v6b = on_b
        .iter()
        .find(|x| x.address == net("2001:db8::2/64"))
        .expect("v6 on b");
    assert_eq!(v6b.flags & NODAD, 0);

    let all = t.nl.addresses(None).unwrap();
    assert!(all
        .iter()
        .any(|x| x.index == b && x.address == net("10.9.9.9/32")));
    assert!(all
        .iter()
        .any(|x| x.index == a && x.address == net("10.1.2.3/24")));

    t.nl.del_address(a, net("10.1.2.3/24")).unwrap();
    assert!(!t
        .nl
        .addresses(Some(a))
        .unwrap()
        .iter()
        .any(|x| x.address == net("10.1.2.3/24")));
    assert!(matches!(
        t.nl.del_address(a, net("10.1.2.3/24")),
        Err(Error::NotFound)
    ));
    t.nl.del_address(a, net("2001:db8::1/64")).unwrap();
    assert!(matches!(
        t.nl.del_address(a, net("2001:db8::1/64")),
        Err(Error::NotFound)
    ));

    t.nl.delete_link(a).unwrap();
    assert!(matches!(t.nl.addresses(Some(a)), Err(Error::NotFound)));
    assert!(matches!(
        t.nl.add_address(a, net("10.1.2.3/24"), false),
        Err(Error::NotFound)
    ));
}

#[test]
#[ignore = "privileged: needs root"]
fn loopback_addresses() {
    let mut t = test_ns();
    let lo = link(&mut t.nl, "lo").index;
    t.nl.set_up(lo, true).unwrap();
    let addrs = t.nl.addresses(Some(lo)).unwrap();
    let v4 = addrs
        .iter()
        .find(|a| a.address == net("127.0.0.1/8"))
        .expect("127.0.0.1/8");
    assert_eq!(v4.scope, 254, "loopback has host scope");
}
