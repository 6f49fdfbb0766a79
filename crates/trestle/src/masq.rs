//! Which attachments keep a network's masquerade. The rules are per network (see `trestle_firewall`), so they go
//! when the last attachment that needs them goes. An attachment needs them when the network masquerades and it
//! has addresses; ADD marks such an attachment's host end with the network's link group as it creates it (one
//! attribute of the creation request, no extra kernel call), and "in use" is then "the bridge has a port in that
//! group". That does not depend on the pods' links being up (a bridge's carrier does: a pod whose `eth0` is down
//! gives its port none), and it reads only the bridge's ports, whatever else the host has.

use crate::error;
use cni_proto::CniError;
use ipnet::IpNet;
use trestle_firewall::{Backend, BackendKind, Firewall, NoneBackend};
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
    /// Host-end names of the attachment being deleted, whose port must not count when DEL could not cut it off:
    /// with the pod's namespace already gone, the kernel deletes the pair only later, from a work queue, and
    /// until then the pod's own port would keep its network's rules past its last DEL. Only a 32-bit hash
    /// collision of host names could make another pod's port look like it; that pod would then lack its rules
    /// until its network's next ADD (CHECK says so).
    pub own: &'a [String],
}

/// Whether `port` keeps `network`'s forward accept: any attachment with addresses does, with or without
/// masquerade. Ports of attachments without addresses, and of other networks without masquerade on the same
/// bridge, count too (they share [`PLAIN_GROUP`]): rules kept a little longer are harmless, a pod cut off is not.
fn keeps_forward(port: &Link, group: u32) -> bool {
    keeps(port, group) || port.group == PLAIN_GROUP
}

/// Whether `network` still has an attachment on `bridge` that needs masquerade. Called under the firewall lock
/// (see `Firewall::remove_if_unused`): an ADD's port is on the bridge, in its group, before that ADD ensures the
/// rules under the same lock, so a DEL seeing no user cannot strand a new pod.
pub fn in_use(host: &mut Netlink, bridge: &Bridge, network: &str) -> bool {
    let group = masq_group(network);
    any_port(host, bridge, |p| keeps(p, group))
}

/// Whether `network` still has an attachment on `bridge` that needs its forward accept; called under the
/// firewall lock, like [`in_use`].
pub fn forward_in_use(host: &mut Netlink, bridge: &Bridge, network: &str) -> bool {
    let group = masq_group(network);
    any_port(host, bridge, |p| keeps_forward(p, group))
}

/// Whether a port of `bridge` passes `test`; true when the ports cannot be listed (when in doubt, keep the rules).
/// The ports are read on a socket of their own (in `host`'s namespace, the plugin's), only until one passes:
/// a DEL on a bridge of a thousand pods would otherwise have the kernel fill a thousand veths, each by walking
/// the host's thousand namespace ids, under rtnl.
fn any_port(host: &mut Netlink, bridge: &Bridge, test: impl Fn(&Link) -> bool) -> bool {
    let index = match bridge.index {
        Some(index) => Ok(Some(index)),
        None => host.link_by_name(bridge.name).map(|br| br.map(|b| b.index)),
    };
    let found = index.and_then(|index| match index {
        Some(index) => Netlink::open()?
            .any_link_with_master(index, |p| !bridge.own.contains(&p.name) && test(p)),
        None => Ok(false),
    });
    match found {
        Ok(found) => found,
        Err(e) => {
            log::warn!(
                "cannot list the ports of {}, keeping its firewall rules: {e}",
                bridge.name
            );
            true
        }
    }
}

/// The host's firewall as one command of the plugin uses it: one netfilter socket and lock file for the
/// masquerade (through the backend `ipMasqBackend` selects) and the forward accept.
pub struct HostFirewall {
    fw: Firewall,
    kind: BackendKind,
    none: NoneBackend,
}

impl HostFirewall {
    /// Opens it in the plugin's namespace.
    pub fn open(kind: BackendKind) -> Result<HostFirewall, CniError> {
        let fw = Firewall::open(std::path::Path::new(trestle_firewall::LOCK_PATH))
            .map_err(error::firewall)?;
        Ok(HostFirewall {
            fw,
            kind,
            none: NoneBackend,
        })
    }

    /// The masquerade backend.
    fn masq(&mut self) -> &mut dyn Backend {
        match self.kind {
            BackendKind::Nftables => &mut self.fw,
            BackendKind::None => &mut self.none,
        }
    }

    /// ADD: masquerades `subnets` of `network`.
    pub fn ensure_masquerade(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), CniError> {
        self.masq()
            .ensure(network, subnets)
            .map_err(error::firewall)
    }

    /// ADD: lets `subnets` of `network` through the host's forward filter, and says so when a foreign nftables
    /// chain may drop them anyway.
    pub fn ensure_forward(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), CniError> {
        let foreign = self
            .fw
            .ensure_forward(network, subnets)
            .map_err(error::firewall)?;
        for f in foreign {
            log::warn!(
                "nftables chain {} {} {} drops forwarded packets by policy: the pods of {network} may be cut \
                 off (trestle does not edit other tables; see forwardAccept in trestle's README)",
                f.family,
                f.table,
                f.chain
            );
        }
        Ok(())
    }

    /// Removes `network`'s masquerade unless an attachment on `bridge` still needs it.
    pub fn remove_if_unused(
        &mut self,
        host: &mut Netlink,
        network: &str,
        bridge: &Bridge,
    ) -> Result<bool, CniError> {
        self.masq()
            .remove_if_unused(network, &mut || in_use(host, bridge, network))
            .map_err(error::firewall)
    }

    /// Removes `network`'s forward accept unless an attachment on `bridge` still needs it.
    pub fn remove_forward_if_unused(
        &mut self,
        host: &mut Netlink,
        network: &str,
        bridge: &Bridge,
    ) -> Result<bool, CniError> {
        self.fw
            .remove_forward_if_unused(network, || forward_in_use(host, bridge, network))
            .map_err(error::firewall)
    }

    /// CHECK of the masquerade of `subnets`.
    pub fn check(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), CniError> {
        self.masq().check(network, subnets).map_err(error::firewall)
    }

    /// CHECK of the forward accept of `subnets`.
    pub fn check_forward(&mut self, network: &str, subnets: &[IpNet]) -> Result<(), CniError> {
        self.fw
            .check_forward(network, subnets)
            .map_err(error::firewall)
    }

    /// GC: removes `network`'s masquerade.
    pub fn remove(&mut self, network: &str) -> Result<bool, CniError> {
        self.masq().remove(network).map_err(error::firewall)
    }

    /// GC: removes `network`'s forward accept.
    pub fn remove_forward(&mut self, network: &str) -> Result<bool, CniError> {
        self.fw.remove_forward(network).map_err(error::firewall)
    }
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
        assert!(keeps_forward(&port("veth0123abcd", PLAIN_GROUP), g));
        assert!(keeps_forward(&port("veth0123abcd", g), g));
        assert!(!keeps_forward(
            &port("veth0123abcd", masq_group("other")),
            g
        ));
    }
}
