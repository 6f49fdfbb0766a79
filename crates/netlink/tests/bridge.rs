//! Bridge port flags and VLANs against the real kernel (privileged).

mod common;

use common::{create_filtering_bridge, end, in_ns, link, test_ns, TestNs};
use trestle_netlink::{BridgeVlan, Error, PortOptions};

/// A bridge with one veth port; returns (bridge, port) indexes.
fn bridge_with_port(t: &mut TestNs) -> (u32, u32) {
    if link_missing(t, "br0") {
        t.nl.create_bridge("br0", None, false).unwrap();
    }
    let br = link(&mut t.nl, "br0").index;
    t.nl.create_veth(&end("port0"), &end("peer0"), t.ns.fd())
        .unwrap();
    let port = link(&mut t.nl, "port0").index;
    t.nl.set_master(port, Some(br)).unwrap();
    (br, port)
}

fn link_missing(t: &mut TestNs, name: &str) -> bool {
    t.nl.link_by_name(name).unwrap().is_none()
}

fn vlan(vid: u16, pvid: bool, untagged: bool) -> BridgeVlan {
    BridgeVlan {
        vid,
        pvid,
        untagged,
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn hairpin_and_isolated() {
    let mut t = test_ns();
    let (br, port) = bridge_with_port(&mut t);
    let off = PortOptions {
        hairpin: Some(false),
        isolated: Some(false),
    };
    assert_eq!(t.nl.port_options(port).unwrap(), off);

    let hairpin = PortOptions {
        hairpin: Some(true),
        isolated: None,
    };
    t.nl.set_bridge_port(port, &hairpin).unwrap();
    assert_eq!(
        t.nl.port_options(port).unwrap(),
        PortOptions {
            hairpin: Some(true),
            isolated: Some(false)
        }
    );
    let shown = in_ns(&t.ns, "bridge", &["-d", "link", "show", "dev", "port0"]);
    assert!(
        shown.contains("hairpin on") && shown.contains("isolated off"),
        "{shown}"
    );

    let isolated = PortOptions {
        hairpin: None,
        isolated: Some(true),
    };
    t.nl.set_bridge_port(port, &isolated).unwrap();
    let both = PortOptions {
        hairpin: Some(true),
        isolated: Some(true),
    };
    assert_eq!(t.nl.port_options(port).unwrap(), both);
    assert!(
        in_ns(&t.ns, "bridge", &["-d", "link", "show", "dev", "port0"]).contains("isolated on")
    );

    t.nl.set_bridge_port(port, &off).unwrap();
    assert_eq!(t.nl.port_options(port).unwrap(), off);
    t.nl.set_bridge_port(port, &PortOptions::default()).unwrap();

    // Not a port: nothing reported; gone: NotFound.
    assert_eq!(t.nl.port_options(br).unwrap(), PortOptions::default());
    t.nl.set_master(port, None).unwrap();
    assert_eq!(t.nl.port_options(port).unwrap(), PortOptions::default());
    assert!(t.nl.set_bridge_port(port, &hairpin).is_err());
    t.nl.delete_link(port).unwrap();
    assert!(matches!(t.nl.port_options(port), Err(Error::NotFound)));
}

#[test]
#[ignore = "privileged: needs root"]
fn port_and_bridge_vlans() {
    let mut t = test_ns();
    let supported = create_filtering_bridge(&mut t.nl, "br0");
    let (br, port) = bridge_with_port(&mut t);
    if !supported {
        let err =
            t.nl.bridge_vlan_add(port, 100, false, false, false)
                .unwrap_err();
        assert_eq!(err.errno(), Some(libc::EOPNOTSUPP), "{err}");
        assert_eq!(t.nl.bridge_vlans(port).unwrap(), vec![]);
        assert_eq!(t.nl.bridge_vlans(br).unwrap(), vec![]);
        return;
    }
    // The kernel gives every new port the default PVID 1, untagged.
    assert_eq!(t.nl.bridge_vlans(port).unwrap(), vec![vlan(1, true, true)]);

    t.nl.bridge_vlan_add(port, 100, false, false, false)
        .unwrap();
    t.nl.bridge_vlan_add(port, 200, true, true, false).unwrap();
    assert_eq!(
        t.nl.bridge_vlans(port).unwrap(),
        vec![
            vlan(1, false, true),
            vlan(100, false, false),
            vlan(200, true, true)
        ]
    );
    let shown = in_ns(&t.ns, "bridge", &["vlan", "show", "dev", "port0"]);
    assert!(
        shown.contains("100") && shown.contains("200 PVID Egress Untagged"),
        "{shown}"
    );

    t.nl.bridge_vlan_add(br, 100, false, false, true).unwrap();
    assert!(t
        .nl
        .bridge_vlans(br)
        .unwrap()
        .contains(&vlan(100, false, false)));
    assert!(in_ns(&t.ns, "bridge", &["vlan", "show", "dev", "br0"]).contains("100"));

    t.nl.bridge_vlan_del(port, 100, false).unwrap();
    assert_eq!(
        t.nl.bridge_vlans(port).unwrap(),
        vec![vlan(1, false, true), vlan(200, true, true)]
    );
    let again = t.nl.bridge_vlan_del(port, 100, false);
    assert!(matches!(again, Err(Error::NotFound)), "{again:?}");
    t.nl.bridge_vlan_del(br, 100, true).unwrap();
    assert!(!t.nl.bridge_vlans(br).unwrap().iter().any(|v| v.vid == 100));

    let bad = t.nl.bridge_vlan_add(port, 4095, false, false, false);
    assert_eq!(bad.unwrap_err().errno(), Some(libc::EINVAL));
    assert_eq!(t.nl.bridge_vlans(9999).unwrap(), vec![]);
}
