//! Which attachments keep a network's masquerade. The rules are per network (see `trestle_firewall`), so they go
//! when the last attachment that needs them goes. An attachment needs them when the network masquerades and it
//! has addresses; ADD marks such an attachment's host end with the network's link group as it creates it (one
//! attribute of the creation request, no extra kernel call), and "in use" is then "the bridge has a port in that
//! group". That does not depend on the pods' links being up (a bridge's carrier does: a pod whose `eth0` is down
//! gives its port none), and it reads only the bridge's ports, whatever else the host has.

use crate::error;
use cni_proto::CniError;
use trestle_firewall::{Backend, BackendKind};
use trestle_netlink::{Link, Netlink};

/// Link group of host ends that DEL has cut off and that await destruction ("tr" and 1).
pub const DEAD_GROUP: u32 = 0x7472_0001;

/// Link group of the host ends of attachments that need no masquerade ("tr" and 2).
pub const PLAIN_GROUP: u32 = 0x7472_0002;

/// High half of the groups of attachments that need their network's masquerade ("ts").
const MASQ_PREFIX: u32 = 0x7473_0000;

/// The link group that marks the host ends of `network`'s attachments needing masquerade: "ts" and 16 bits of
/// the name's FNV-1a hash. Two networks sharing a bridge and a hash keep each other's rules a little longer:
/// a rule too many is harmless, a pod without masquerade is not.
pub fn masq_group(network: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in network.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    MASQ_PREFIX | (h & 0xffff)
}

/// The group ADD gives an attachment's host end.
pub fn group_for(network: &str, needs_masquerade: bool) -> u32 {
    if needs_masquerade {
        masq_group(network)
    } else {
        PLAIN_GROUP
    }
}

/// Whether `port` keeps `network`'s masquerade. Host ends made before link groups were used (group 0) count, so
/// that an upgrade never strips a running pod's masquerade.
fn keeps(port: &Link, group: u32) -> bool {
    port.group == group || (port.group == 0 && crate::pair::is_host_name(&port.name))
}

/// The network's bridge: its name, and its index when the caller has already looked it up (saving DEL a request).
pub struct Bridge<'a> {
    /// The bridge's name.
    pub name: &'a str,
    /// Its index, if known.
    pub index: Option<u32>,
}

/// Whether `network` still has an attachment on `bridge` that needs masquerade. Called under the firewall lock
/// (see `Firewall::remove_if_unused`): an ADD's port is on the bridge, in its group, before that ADD ensures the
/// rules under the same lock, so a DEL seeing no user cannot strand a new pod.
pub fn in_use(host: &mut Netlink, bridge: &Bridge, network: &str) -> bool {
    let group = masq_group(network);
    let index = match bridge.index {
        Some(index) => Ok(Some(index)),
        None => host.link_by_name(bridge.name).map(|br| br.map(|b| b.index)),
    };
    let ports = index.and_then(|index| match index {
        Some(index) => host.links_with_master(index),
        None => Ok(Vec::new()),
    });
    match ports {
        Ok(ports) => ports.iter().any(|p| keeps(p, group)),
        // When in doubt, keep the rules.
        Err(e) => {
            log::warn!(
                "cannot list the ports of {}, keeping masquerade: {e}",
                bridge.name
            );
            true
        }
    }
}

/// Opens the masquerade backend in the plugin's namespace.
pub fn firewall(kind: BackendKind) -> Result<Box<dyn Backend>, CniError> {
    trestle_firewall::open_backend(kind, std::path::Path::new(trestle_firewall::LOCK_PATH))
        .map_err(error::firewall)
}

/// Removes `network`'s masquerade unless an attachment on `bridge` still needs it.
pub fn remove_if_unused(
    kind: BackendKind,
    host: &mut Netlink,
    network: &str,
    bridge: &Bridge,
) -> Result<bool, CniError> {
    firewall(kind)?
        .remove_if_unused(network, &mut || in_use(host, bridge, network))
        .map_err(error::firewall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_distinct_and_stable() {
        let a = masq_group("net-a");
        assert_eq!(a, masq_group("net-a"));
        assert_ne!(a, masq_group("net-b"));
        assert_eq!(a & 0xffff_0000, MASQ_PREFIX);
        for g in [a, masq_group(""), masq_group("cbr0")] {
            assert!(g != DEAD_GROUP && g != PLAIN_GROUP && g != 0);
        }
        assert_eq!(group_for("net-a", true), a);
        assert_eq!(group_for("net-a", false), PLAIN_GROUP);
    }

    #[test]
    fn legacy_ports_keep_the_rules() {
        let port = |name: &str, group| Link {
            index: 5,
            name: name.into(),
            kind: Some("veth".into()),
            mac: None,
            mtu: 1500,
            up: true,
            oper_up: false,
            carrier: false,
            master: Some(3),
            promisc: false,
            peer_index: Some(2),
            link_netnsid: Some(0),
            group,
        };
        let g = masq_group("n");
        assert!(keeps(&port("veth0123abcd", g), g));
        assert!(keeps(&port("veth0123abcd", 0), g), "pre-upgrade pod");
        assert!(!keeps(&port("veth0123abcd", PLAIN_GROUP), g));
        assert!(!keeps(&port("veth0123abcd", masq_group("other")), g));
        assert!(!keeps(&port("eno1", 0), g), "an uplink is no pod");
    }
}
