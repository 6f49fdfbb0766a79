//! Links: lookup, creation of bridges and veths, attribute changes, removal.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    link::{
        InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags,
        LinkInfo, LinkMessage, State,
    },
    RouteNetlinkMessage as Msg,
};

use crate::{Error, Link, Netlink, VethEnd};

/// `IFNAMSIZ - 1`: the longest interface name the kernel accepts.
const MAX_NAME_LEN: usize = 15;

impl Netlink {
    /// Looks a link up by name; `Ok(None)` when there is none.
    ///
    /// Like `ip link show NAME`. Names the kernel could never accept are
    /// rejected with [`Error::InvalidName`].
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, Error> {
        check_name(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(msg)
    }

    /// Looks a link up by index; `Ok(None)` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, Error> {
        self.get_link(message(index))
    }

    /// Lists every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(skip_stats());
        let replies = self.transport.dump("dump links", Msg::GetLink(msg))?;
        Ok(replies
            .into_iter()
            .filter_map(link_reply)
            .map(Link::from_message)
            .collect())
    }

    /// Lists the ports of a bridge (links whose master is `master`). The kernel filters the dump (strict
    /// checking is on), so the cost follows the ports of this bridge rather than every link of the namespace.
    ///
    /// Like `ip link show master BRIDGE`.
    pub fn links_with_master(&mut self, master: u32) -> Result<Vec<Link>, Error> {
        let replies = self.transport.dump("dump bridge ports", ports_of(master))?;
        Ok(replies
            .into_iter()
            .filter_map(link_reply)
            .map(Link::from_message)
            .filter(|l| l.master == Some(master))
            .collect())
    }

    /// Whether a link enslaved to `master` passes `test`, reading the dump only until one does. Consumes the
    /// socket: a dump stopped early ends only with its socket (see the transport's `dump_until`). Where a bridge
    /// has many veth ports this is the cheap question: the kernel fills each veth's reply by walking every
    /// namespace id of the host, so a whole dump costs ports x namespaces.
    pub fn any_link_with_master(
        self,
        master: u32,
        mut test: impl FnMut(&Link) -> bool,
    ) -> Result<bool, Error> {
        self.transport
            .dump_until("dump bridge ports", ports_of(master), |reply| {
                link_reply(reply)
                    .map(Link::from_message)
                    .is_some_and(|l| l.master == Some(master) && test(&l))
            })
    }

    /// Creates a bridge, down. [`Error::Exists`] when the name is taken;
    /// `EOPNOTSUPP` ([`Error::Kernel`]) for `vlan_filtering` on a kernel
    /// without `CONFIG_BRIDGE_VLAN_FILTERING`.
    ///
    /// Like `ip link add NAME [mtu MTU] type bridge vlan_filtering 0|1`.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<(), Error> {
        check_name(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        // Only ask for filtering when wanted: kernels built without
        // CONFIG_BRIDGE_VLAN_FILTERING refuse the attribute even when it is 0.
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.create("create bridge", msg)
    }

    /// Creates a veth pair: `host` in this socket's namespace and `peer`
    /// directly inside `peer_netns` (`IFLA_NET_NS_FD` on the peer), so the
    /// peer is never moved between namespaces. Both ends start down.
    ///
    /// [`Error::Exists`] when either name is taken in its namespace.
    pub fn create_veth(
        &mut self,
        host: &VethEnd,
        peer: &VethEnd,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        check_name(&host.name)?;
        check_name(&peer.name)?;
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = end_attributes(peer);
        // The fd only has to stay open until the kernel has read the
        // request, which `create` waits for.
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes = end_attributes(host);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.create("create veth", msg)
    }

    /// Sets a link administratively up or down (`ip link set up|down`).
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), Error> {
        self.set_flag(index, LinkFlags::Up, up)
    }

    /// Enslaves a link to `master` (a bridge), or frees it with `None`
    /// (`ip link set master|nomaster`).
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> Result<(), Error> {
        self.set_attribute(
            "set master",
            index,
            LinkAttribute::Controller(master.unwrap_or(0)),
        )
    }

    /// Enslaves a link to bridge `master`, stops it from generating an IPv6 link-local address, and brings it
    /// up, in one request (one rtnl round). A bridge port forwards frames and needs no address of its own;
    /// without one the kernel also skips the port's DAD and MLD reports, and the host's IPv6 routing table does
    /// not grow a `fe80::/64` route per port, which every later carrier change of any port walks. On a kernel
    /// without IPv6 the port is simply enslaved and brought up.
    ///
    /// Like `ip link set DEV master MASTER addrgenmode none up`.
    pub fn set_port_up(&mut self, index: u32, master: u32) -> Result<(), Error> {
        let mut msg = message(index);
        msg.header.change_mask = LinkFlags::Up;
        msg.header.flags = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Controller(master));
        let mut l2 = msg.clone();
        let mode = nla(IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE]);
        let af_spec = nla(libc::AF_INET6 as u16, &mode);
        l2.attributes
            .push(LinkAttribute::Other(DefaultNla::new(IFLA_AF_SPEC, af_spec)));
        match self.transport.ack("attach port", Msg::SetLink(l2), 0) {
            Err(Error::Kernel { errno, .. }) if errno == libc::EAFNOSUPPORT => {
                self.transport.ack("attach port", Msg::SetLink(msg), 0)
            }
            other => other,
        }
    }

    /// Sets the MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        self.set_attribute("set mtu", index, LinkAttribute::Mtu(mtu))
    }

    /// Turns user-requested promiscuous mode on or off (`ip link set promisc`).
    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<(), Error> {
        self.set_flag(index, LinkFlags::Promisc, on)
    }

    /// Sets the hardware address.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), Error> {
        self.set_attribute("set mac", index, LinkAttribute::Address(mac.to_vec()))
    }

    /// Sets per-device IPv4 settings (`net.ipv4.conf.<dev>.*`, keys from `IPV4_DEVCONF_*`) through
    /// `IFLA_AF_SPEC`, on this socket's namespace: no `/proc/sys` write, hence no thread inside the namespace.
    pub fn set_ipv4_conf(&mut self, index: u32, settings: &[(u16, u32)]) -> Result<(), Error> {
        let conf: Vec<u8> = settings
            .iter()
            .flat_map(|&(key, value)| nla(key, &value.to_ne_bytes()))
            .collect();
        let inet = nla(IFLA_INET_CONF, &conf);
        let af_spec = nla(libc::AF_INET as u16, &inet);
        let attr = LinkAttribute::Other(DefaultNla::new(IFLA_AF_SPEC, af_spec));
        self.set_attribute("set ipv4 conf", index, attr)
    }

    /// Renames a link. Older kernels refuse ([`Error::Busy`]) while the
    /// link is up, so rename links while they are down.
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<(), Error> {
        check_name(name)?;
        self.set_attribute("set name", index, LinkAttribute::IfName(name.to_owned()))
    }

    /// Deletes a link; [`Error::NotFound`] when it does not exist. Deleting
    /// one end of a veth removes both.
    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        self.transport
            .ack("delete link", Msg::DelLink(message(index)), 0)
    }

    /// Takes a link out of its bridge and into link `group`, in one request (one rtnl round): how DEL parks the
    /// host end of a veth for [`Netlink::delete_group`]. It stays administratively up: DEL has already taken the
    /// other end down, which takes this end's carrier with it, and taking a device down costs an RCU grace
    /// period under rtnl (`dev_deactivate`) that would hold up every other link operation for nothing.
    ///
    /// Like `ip link set DEV nomaster group GROUP`.
    pub fn park(&mut self, index: u32, group: u32) -> Result<(), Error> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::Controller(0));
        msg.attributes.push(LinkAttribute::Group(group));
        self.transport.ack("park link", Msg::SetLink(msg), 0)
    }

    /// Deletes every link of `group` with ONE unregistration, so the kernel's RCU waits are paid once for the
    /// whole batch instead of once per link. [`Error::NotFound`] when the group is empty; group 0 (the default)
    /// is refused by the kernel.
    ///
    /// Like `ip link delete group GROUP`.
    pub fn delete_group(&mut self, group: u32) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(group));
        self.transport.ack("delete group", Msg::DelLink(msg), 0)
    }

    /// Sends `RTM_NEWLINK` for an existing link (a "changelink").
    pub(crate) fn change_link(&mut self, op: &'static str, msg: LinkMessage) -> Result<(), Error> {
        self.transport.ack(op, Msg::NewLink(msg), 0)
    }

    /// Sends `RTM_NEWLINK` for a link that must not exist yet.
    pub(crate) fn create(&mut self, op: &'static str, msg: LinkMessage) -> Result<(), Error> {
        self.transport
            .ack(op, Msg::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    fn get_link(&mut self, msg: LinkMessage) -> Result<Option<Link>, Error> {
        Ok(self.get_link_message(msg)?.map(Link::from_message))
    }

    /// The raw `RTM_GETLINK` reply for the link `msg` names, if it exists.
    pub(crate) fn get_link_message(
        &mut self,
        mut msg: LinkMessage,
    ) -> Result<Option<LinkMessage>, Error> {
        msg.attributes.push(skip_stats());
        match self.transport.get("get link", Msg::GetLink(msg)) {
            Ok(replies) => Ok(replies.into_iter().find_map(link_reply)),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_attribute(
        &mut self,
        op: &'static str,
        index: u32,
        attribute: LinkAttribute,
    ) -> Result<(), Error> {
        let mut msg = message(index);
        msg.attributes.push(attribute);
        self.transport.ack(op, Msg::SetLink(msg), 0)
    }

    fn set_flag(&mut self, index: u32, flag: LinkFlags, on: bool) -> Result<(), Error> {
        let mut msg = message(index);
        msg.header.change_mask = flag;
        if on {
            msg.header.flags = flag;
        }
        self.transport.ack("set link flags", Msg::SetLink(msg), 0)
    }
}

/// An empty link message addressed to `index`.
pub(crate) fn message(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// `IFLA_AF_SPEC` and, inside its `AF_INET` entry, `IFLA_INET_CONF` (`linux/if_link.h`).
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET_CONF: u16 = 1;

/// `IFLA_INET6_ADDR_GEN_MODE` inside `AF_INET6`, and its "no address" value (`linux/if_link.h`).
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;

/// `IPV4_DEVCONF_ARP_NOTIFY` (`linux/ip.h`): announce the address (gratuitous ARP) when the device comes up.
pub const IPV4_DEVCONF_ARP_NOTIFY: u16 = 22;

/// One netlink attribute: header, payload, padding to 4 bytes.
fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity((len + 3) & !3);
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize((len + 3) & !3, 0);
    out
}

/// Statistics are most of a link reply and nobody here reads them.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

/// The dump request of the links enslaved to `master` (the kernel filters them), without statistics.
fn ports_of(master: u32) -> Msg {
    let mut msg = LinkMessage::default();
    msg.attributes.push(skip_stats());
    msg.attributes.push(LinkAttribute::Controller(master));
    Msg::GetLink(msg)
}

fn link_reply(msg: Msg) -> Option<LinkMessage> {
    match msg {
        Msg::NewLink(m) => Some(m),
        _ => None,
    }
}

fn end_attributes(end: &VethEnd) -> Vec<LinkAttribute> {
    let mut attributes = vec![
        LinkAttribute::IfName(end.name.clone()),
        // Without explicit counts the kernel allocates one queue per possible CPU, registers the device, then
        // cuts the real count to one (the veth default), and cutting queues of a registered device waits for an
        // expedited RCU grace period while holding rtnl: every other link operation on the machine queues
        // behind it. Asking for the one queue up front ends up with the same real queues and no wait.
        LinkAttribute::NumTxQueues(1),
        LinkAttribute::NumRxQueues(1),
    ];
    attributes.extend(end.mtu.map(LinkAttribute::Mtu));
    attributes.extend(end.mac.map(|m| LinkAttribute::Address(m.to_vec())));
    attributes.extend(end.group.map(LinkAttribute::Group));
    attributes
}

/// Applies the kernel's `dev_valid_name` rules.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

impl Link {
    pub(crate) fn from_message(msg: LinkMessage) -> Link {
        let flags = msg.header.flags;
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            up: flags.contains(LinkFlags::Up),
            oper_up: false,
            carrier: flags.contains(LinkFlags::LowerUp),
            master: None,
            promisc: flags.contains(LinkFlags::Promisc),
            peer_index: None,
            link_netnsid: None,
            group: 0,
        };
        for attribute in msg.attributes {
            link.apply(attribute);
        }
        link
    }

    fn apply(&mut self, attribute: LinkAttribute) {
        match attribute {
            LinkAttribute::IfName(name) => self.name = name,
            LinkAttribute::Mtu(mtu) => self.mtu = mtu,
            LinkAttribute::Address(mac) => self.mac = mac.try_into().ok(),
            LinkAttribute::OperState(state) => self.oper_up = state == State::Up,
            LinkAttribute::Controller(master) if master != 0 => self.master = Some(master),
            LinkAttribute::Link(peer) if peer != 0 => self.peer_index = Some(peer),
            LinkAttribute::Group(group) => self.group = group,
            LinkAttribute::LinkNetNsId(id) => self.link_netnsid = Some(id),
            LinkAttribute::LinkInfo(infos) => {
                self.kind = infos.into_iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "eth0",
            "veth1234abcd",
            "a",
            "cni-br0.100",
            "123456789012345",
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\0",
            "a\tb",
        ] {
            assert!(
                matches!(check_name(bad), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn link_from_message() {
        let mut msg = message(7);
        msg.header.flags = LinkFlags::Up | LinkFlags::Promisc;
        msg.attributes = vec![
            LinkAttribute::IfName("veth0".into()),
            LinkAttribute::Mtu(1400),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::OperState(State::Up),
            LinkAttribute::Controller(3),
            LinkAttribute::Link(9),
            LinkAttribute::LinkNetNsId(0),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let link = Link::from_message(msg);
        assert_eq!(
            link,
            Link {
                index: 7,
                name: "veth0".into(),
                kind: Some("veth".into()),
                mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: 1400,
                up: true,
                oper_up: true,
                carrier: false,
                master: Some(3),
                promisc: true,
                peer_index: Some(9),
                link_netnsid: Some(0),
                group: 0,
            }
        );
    }
}
