//! VXLAN devices: creation, and reading back the settings that decide whether an existing one can be adopted.

use std::net::IpAddr;

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};

use crate::{link::check_name, Error, Netlink, VxlanInfo, VxlanSpec};

impl Netlink {
    /// Creates a VXLAN device, down, and returns its index. [`Error::Exists`] when the name is taken, and also
    /// when another VXLAN device of the namespace already has the same VNI, port and underlay family.
    ///
    /// Like `ip link add NAME [mtu MTU] [address MAC] type vxlan id VNI dstport PORT [local IP] [dev UNDERLAY]
    /// [no]learning`.
    pub fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<u32, Error> {
        check_name(&spec.name)?;
        self.create("create vxlan", vxlan_message(spec))?;
        // The index is the kernel's choice; names are unique in a namespace, so the name finds it.
        let link = self.link_by_name(&spec.name)?.ok_or(Error::NotFound)?;
        Ok(link.index)
    }

    /// The VXLAN settings of link `index`; `None` when it is not a VXLAN device. [`Error::NotFound`] when the link
    /// does not exist.
    pub fn vxlan_info(&mut self, index: u32) -> Result<Option<VxlanInfo>, Error> {
        Ok(vxlan_from_infos(self.link_info(index)?))
    }
}

fn vxlan_message(spec: &VxlanSpec) -> LinkMessage {
    let mut data = vec![
        InfoVxlan::Id(spec.vni),
        InfoVxlan::Port(spec.port),
        // Always said, since the kernel's default is to learn.
        InfoVxlan::Learning(spec.learning),
    ];
    data.extend(spec.local.map(|local| match local {
        IpAddr::V4(a) => InfoVxlan::Local(a),
        IpAddr::V6(a) => InfoVxlan::Local6(a),
    }));
    data.extend(spec.underlay.map(InfoVxlan::Link));
    let mut msg = LinkMessage::default();
    let a = &mut msg.attributes;
    a.push(LinkAttribute::IfName(spec.name.clone()));
    a.extend(spec.mtu.map(LinkAttribute::Mtu));
    a.extend(spec.mac.map(|m| LinkAttribute::Address(m.to_vec())));
    a.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(data)),
    ]));
    msg
}

/// The VXLAN settings among a link's `IFLA_LINKINFO` entries, if it is a VXLAN device.
fn vxlan_from_infos(infos: Vec<LinkInfo>) -> Option<VxlanInfo> {
    if !infos.contains(&LinkInfo::Kind(InfoKind::Vxlan)) {
        return None;
    }
    let mut info = VxlanInfo {
        vni: 0,
        port: 0,
        local: None,
        underlay: None,
        learning: false,
    };
    let data = infos.into_iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    });
    for attribute in data.into_iter().flatten() {
        match attribute {
            InfoVxlan::Id(vni) => info.vni = vni,
            InfoVxlan::Port(port) => info.port = port,
            InfoVxlan::Local(a) => info.local = Some(a.into()),
            InfoVxlan::Local6(a) => info.local = Some(a.into()),
            // 0 names no device, as in a request.
            InfoVxlan::Link(index) if index != 0 => info.underlay = Some(index),
            InfoVxlan::Learning(on) => info.learning = on,
            _ => {}
        }
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "vxlan0".into(),
            vni: 42,
            port: 4789,
            local: Some("192.0.2.10".parse().unwrap()),
            underlay: Some(3),
            learning: false,
            mtu: Some(1450),
            mac: Some([0x02, 0, 0, 0, 0, 0x42]),
        }
    }

    /// Emits `msg` and parses it back, as the kernel's reply would arrive.
    fn reparse(msg: &LinkMessage) -> LinkMessage {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        LinkMessage::parse(&buf[..]).unwrap()
    }

    fn infos(msg: LinkMessage) -> Vec<LinkInfo> {
        msg.attributes
            .into_iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn info_data_round_trip() {
        let spec = spec();
        let msg = reparse(&vxlan_message(&spec));
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(msg
            .attributes
            .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 0x42])));
        assert_eq!(vxlan_from_infos(infos(msg)), Some(VxlanInfo::from(&spec)));
    }

    #[test]
    fn v6_local_goes_in_local6() {
        let mut spec = spec();
        spec.local = Some("2001:db8::10".parse().unwrap());
        spec.underlay = None;
        spec.learning = true;
        let data = infos(vxlan_message(&spec));
        let LinkInfo::Data(InfoData::Vxlan(vx)) = &data[1] else {
            panic!("{data:?}")
        };
        assert!(vx.contains(&InfoVxlan::Local6("2001:db8::10".parse().unwrap())));
        assert!(!vx
            .iter()
            .any(|a| matches!(a, InfoVxlan::Local(_) | InfoVxlan::Link(_))));
        assert_eq!(
            vxlan_from_infos(infos(reparse(&vxlan_message(&spec)))),
            Some(VxlanInfo::from(&spec))
        );
    }

    #[test]
    fn port_is_big_endian_and_learning_always_sent() {
        // IFLA_VXLAN_PORT (15) = 4789 in network order, IFLA_VXLAN_LEARNING (7) = 0.
        let msg = vxlan_message(&spec());
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        let port = [6, 0, 15, 0, 0x12, 0xb5];
        let learning = [5, 0, 7, 0, 0];
        assert!(buf.windows(port.len()).any(|w| w == port), "{buf:?}");
        assert!(
            buf.windows(learning.len()).any(|w| w == learning),
            "{buf:?}"
        );
    }

    #[test]
    fn other_kinds_have_no_vxlan_info() {
        assert_eq!(vxlan_from_infos(vec![LinkInfo::Kind(InfoKind::Veth)]), None);
        assert_eq!(vxlan_from_infos(Vec::new()), None);
    }
}
