//! Bridge specifics: VLAN filtering, port flags and VLAN membership.

use netlink_packet_core::DefaultNla;
use netlink_packet_route::{
    link::{
        AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoBridgePort,
        InfoData, InfoKind, InfoPortData, LinkAttribute, LinkExtentMask, LinkInfo, LinkMessage,
        LinkProtoInfoBridge,
    },
    AddressFamily, RouteNetlinkMessage as Msg,
};

use crate::{link::message, BridgeVlan, Error, Netlink, PortOptions};

/// `IFLA_BRPORT_MODE`: hairpin mode.
const IFLA_BRPORT_MODE: u16 = 4;
/// `IFLA_BRPORT_ISOLATED`.
const IFLA_BRPORT_ISOLATED: u16 = 33;

impl Netlink {
    /// Turns VLAN filtering of a bridge on or off
    /// (`ip link set BR type bridge vlan_filtering 0|1`).
    pub fn set_vlan_filtering(&mut self, bridge_index: u32, on: bool) -> Result<(), Error> {
        let msg = vlan_filtering_message(bridge_index, on);
        self.change_link("set vlan filtering", msg)
    }

    /// Sets the flags of a bridge port that are `Some` in `opts`
    /// (`bridge link set dev PORT hairpin on isolated on`), through
    /// `IFLA_PROTINFO` as the reference plugins do.
    pub fn set_bridge_port(&mut self, index: u32, opts: &PortOptions) -> Result<(), Error> {
        match port_message(index, opts) {
            Some(msg) => self.transport.ack("set bridge port", Msg::SetLink(msg), 0),
            None => Ok(()),
        }
    }

    /// Reads the hairpin and isolated flags of a bridge port back; both are
    /// `None` when the link is not a bridge port. [`Error::NotFound`] when
    /// the link does not exist.
    pub fn port_options(&mut self, index: u32) -> Result<PortOptions, Error> {
        let mut opts = PortOptions::default();
        for attribute in self
            .link_info(index)?
            .into_iter()
            .filter_map(port_data)
            .flatten()
        {
            match attribute {
                InfoBridgePort::HairpinMode(on) => opts.hairpin = Some(on),
                InfoBridgePort::Isolated(on) => opts.isolated = Some(on),
                _ => {}
            }
        }
        Ok(opts)
    }

    /// Whether VLAN filtering is on; `None` when the link is not a bridge.
    /// [`Error::NotFound`] when the link does not exist.
    pub fn vlan_filtering(&mut self, bridge_index: u32) -> Result<Option<bool>, Error> {
        let infos = self.link_info(bridge_index)?;
        if !infos.contains(&LinkInfo::Kind(InfoKind::Bridge)) {
            return Ok(None);
        }
        let filtering = infos.into_iter().find_map(|info| match info {
            LinkInfo::Data(InfoData::Bridge(data)) => data.into_iter().find_map(|d| match d {
                InfoBridge::VlanFiltering(on) => Some(on),
                _ => None,
            }),
            _ => None,
        });
        // Kernels that cannot filter may leave the attribute out.
        Ok(Some(filtering.unwrap_or(false)))
    }

    /// Adds VLAN `vid` to a bridge port, or to the bridge device itself when
    /// `on_bridge_self` (then `index` is the bridge's)
    /// (`bridge vlan add vid VID dev DEV [pvid] [untagged] [self]`).
    pub fn bridge_vlan_add(
        &mut self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
        on_bridge_self: bool,
    ) -> Result<(), Error> {
        let mut flags = BridgeVlanInfoFlags::empty();
        flags.set(BridgeVlanInfoFlags::Pvid, pvid);
        flags.set(BridgeVlanInfoFlags::Untagged, untagged);
        let msg = vlan_message(index, vid, flags, on_bridge_self);
        self.transport.ack("add bridge vlan", Msg::SetLink(msg), 0)
    }

    /// Removes VLAN `vid` from a bridge port, or from the bridge itself when
    /// `on_bridge_self` (`bridge vlan del`).
    pub fn bridge_vlan_del(
        &mut self,
        index: u32,
        vid: u16,
        on_bridge_self: bool,
    ) -> Result<(), Error> {
        let msg = vlan_message(index, vid, BridgeVlanInfoFlags::empty(), on_bridge_self);
        self.transport
            .ack("delete bridge vlan", Msg::DelLink(msg), 0)
    }

    /// Lists the VLANs of a bridge port or bridge, sorted by id; empty when
    /// the link has none or does not exist (`bridge vlan show dev DEV`).
    pub fn bridge_vlans(&mut self, index: u32) -> Result<Vec<BridgeVlan>, Error> {
        // Strict checking forbids an index in a bridge dump header, so the
        // whole dump is read and filtered here.
        let mut msg = bridge_message(0);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
        let replies = self
            .transport
            .dump("dump bridge vlans", Msg::GetLink(msg))?;
        let mut vlans: Vec<BridgeVlan> = replies
            .into_iter()
            .filter_map(|m| match m {
                Msg::NewLink(m) if m.header.index == index => Some(m.attributes),
                _ => None,
            })
            .flatten()
            .filter_map(|a| match a {
                LinkAttribute::AfSpecBridge(spec) => Some(spec),
                _ => None,
            })
            .flatten()
            .filter_map(|s| match s {
                AfSpecBridge::VlanInfo(info) => Some(vlan_from_info(info)),
                _ => None,
            })
            .collect();
        vlans.sort();
        vlans.dedup();
        Ok(vlans)
    }
}

fn bridge_message(index: u32) -> LinkMessage {
    let mut msg = message(index);
    msg.header.interface_family = AddressFamily::Bridge;
    msg
}

fn vlan_filtering_message(index: u32, on: bool) -> LinkMessage {
    let mut msg = message(index);
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Bridge),
        LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
    ]));
    msg
}

/// The `IFLA_PROTINFO` request for `opts`; `None` when nothing is to change.
fn port_message(index: u32, opts: &PortOptions) -> Option<LinkMessage> {
    let flags: Vec<_> = [
        (IFLA_BRPORT_MODE, opts.hairpin),
        (IFLA_BRPORT_ISOLATED, opts.isolated),
    ]
    .into_iter()
    .filter_map(|(kind, on)| on.map(|on| port_flag(kind, on)))
    .collect();
    if flags.is_empty() {
        return None;
    }
    let mut msg = bridge_message(index);
    msg.attributes.push(LinkAttribute::ProtoInfoBridge(flags));
    Some(msg)
}

fn port_flag(kind: u16, on: bool) -> LinkProtoInfoBridge {
    LinkProtoInfoBridge::Other(DefaultNla::new(kind, vec![u8::from(on)]))
}

fn vlan_message(
    index: u32,
    vid: u16,
    flags: BridgeVlanInfoFlags,
    on_bridge_self: bool,
) -> LinkMessage {
    let mut spec = Vec::with_capacity(2);
    if on_bridge_self {
        spec.push(AfSpecBridge::Flags(BridgeFlag::LowerDev));
    }
    spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }));
    let mut msg = bridge_message(index);
    msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
    msg
}

fn vlan_from_info(info: BridgeVlanInfo) -> BridgeVlan {
    BridgeVlan {
        vid: info.vid,
        pvid: info.flags.contains(BridgeVlanInfoFlags::Pvid),
        untagged: info.flags.contains(BridgeVlanInfoFlags::Untagged),
    }
}

/// The bridge-port attributes of one `IFLA_LINKINFO` entry
/// (`IFLA_INFO_SLAVE_DATA`).
fn port_data(info: LinkInfo) -> Option<Vec<InfoBridgePort>> {
    match info {
        LinkInfo::PortData(InfoPortData::BridgePort(data)) => Some(data),
        _ => None,
    }
}

impl Netlink {
    /// The `IFLA_LINKINFO` entries of a link; [`Error::NotFound`] when the
    /// link does not exist.
    pub(crate) fn link_info(&mut self, index: u32) -> Result<Vec<LinkInfo>, Error> {
        let msg = self
            .get_link_message(message(index))?
            .ok_or(Error::NotFound)?;
        Ok(msg
            .attributes
            .into_iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    //! The expected bytes are what iproute2 6.x sends for the same command
    //! (captured with `strace -e trace=sendmsg -e write=3`), minus the
    //! netlink header.

    use netlink_packet_core::Emitable;

    use super::*;

    fn bytes(msg: &LinkMessage) -> Vec<u8> {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    /// `struct ifinfomsg` for AF_BRIDGE (7) and `index`.
    fn bridge_header(index: u8) -> Vec<u8> {
        vec![7, 0, 0, 0, index, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }

    #[test]
    fn vlan_add_on_port() {
        // bridge vlan add vid 200 dev va pvid untagged
        let flags = BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged;
        let mut want = bridge_header(4);
        want.extend([12, 0, 26, 0, 8, 0, 2, 0, 6, 0, 200, 0]);
        assert_eq!(bytes(&vlan_message(4, 200, flags, false)), want);
    }

    #[test]
    fn vlan_add_on_bridge_self() {
        // bridge vlan add vid 100 dev br0 self
        let mut want = bridge_header(2);
        want.extend([
            20, 0, 26, 0, 6, 0, 0, 0, 2, 0, 0, 0, 8, 0, 2, 0, 0, 0, 100, 0,
        ]);
        assert_eq!(
            bytes(&vlan_message(2, 100, BridgeVlanInfoFlags::empty(), true)),
            want
        );
    }

    #[test]
    fn vlan_del_on_port() {
        // bridge vlan del vid 100 dev va
        let mut want = bridge_header(4);
        want.extend([12, 0, 26, 0, 8, 0, 2, 0, 0, 0, 100, 0]);
        assert_eq!(
            bytes(&vlan_message(4, 100, BridgeVlanInfoFlags::empty(), false)),
            want
        );
    }

    #[test]
    fn hairpin_and_isolated_protinfo() {
        // bridge link set dev va hairpin on isolated on
        let opts = PortOptions {
            hairpin: Some(true),
            isolated: Some(true),
        };
        let mut want = bridge_header(4);
        want.extend([
            20, 0, 12, 0x80, 5, 0, 4, 0, 1, 0, 0, 0, 5, 0, 33, 0, 1, 0, 0, 0,
        ]);
        assert_eq!(bytes(&port_message(4, &opts).unwrap()), want);
        assert!(port_message(4, &PortOptions::default()).is_none());
    }

    #[test]
    fn vlan_filtering_link_info() {
        // ip link set br0 type bridge vlan_filtering 1: IFLA_INFO_DATA
        // holding IFLA_BR_VLAN_FILTERING (7) = 1.
        let got = bytes(&vlan_filtering_message(2, true));
        assert_eq!(got[..16], [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let data = [12, 0, 2, 0, 5, 0, 7, 0, 1, 0, 0, 0];
        assert!(got.windows(data.len()).any(|w| w == data), "{got:?}");
    }
}
