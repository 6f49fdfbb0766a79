//! A node's host record (`hosts/<node>`): what its peers need to reach its pods. It carries no
//! lease: it stays while the node is down or cut off, and only an operator's removal (or a
//! later record) changes it, so a restart never withdraws a route anywhere.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// VXLAN's overhead over IPv4: outer IPv4 (20), UDP (8), VXLAN (8), inner Ethernet (14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// VXLAN's overhead over IPv6: the outer header is 40 bytes.
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// One underlay address of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Underlay {
    /// The address, with the prefix of its subnet (the L2 segment peers share).
    pub address: IpNet,
    /// The interface that holds it.
    pub interface: String,
    /// That interface's MTU.
    pub mtu: u32,
}

impl Underlay {
    /// The address alone.
    pub fn ip(&self) -> IpAddr {
        self.address.addr()
    }

    /// True when `peer` is on this address's subnet (one L2 segment: a direct route works).
    pub fn shares_subnet(&self, peer: &Underlay) -> bool {
        self.address.trunc().contains(&peer.ip())
    }
}

/// `hosts/<node>`'s value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRecord {
    /// The IPv4 underlay, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<Underlay>,
    /// The IPv6 underlay, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Underlay>,
    /// The MAC of its VXLAN device (`aa:bb:...`): derived from the node's name, so it survives
    /// restarts and re-installs and peers' FDB entries stay valid.
    pub vtep_mac: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub port: u16,
    /// The software that wrote it.
    pub version: String,
}

impl HostRecord {
    /// The underlay of `family` (`true`: IPv4).
    pub fn underlay(&self, v4: bool) -> Option<&Underlay> {
        if v4 {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    /// The underlay its VXLAN device speaks: IPv4 when it has one.
    pub fn vxlan_underlay(&self) -> Option<&Underlay> {
        self.v4.as_ref().or(self.v6.as_ref())
    }

    /// The VTEP MAC, parsed.
    pub fn mac(&self) -> Option<[u8; 6]> {
        trestle_netlink::parse_mac(&self.vtep_mac)
    }

    /// The MTU a pod's packet may have to cross VXLAN from this node: the VXLAN underlay's MTU
    /// less the encapsulation.
    pub fn vxlan_mtu(&self) -> Option<u32> {
        let u = self.vxlan_underlay()?;
        let overhead = if u.ip().is_ipv4() {
            VXLAN_OVERHEAD_V4
        } else {
            VXLAN_OVERHEAD_V6
        };
        Some(u.mtu.saturating_sub(overhead))
    }

    /// The JSON stored in etcd.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data")
    }

    /// Parses [`HostRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Option<HostRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The VTEP MAC of `node`: locally administered, unicast, and the same on every install (a
/// 48-bit FNV-1a of the name; Calico derives its own from SHA-1 the same way).
pub fn vtep_mac(node: &str) -> [u8; 6] {
    let h = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let b = h.to_be_bytes();
    // 0x02: locally administered; bit 0 clear: unicast.
    [(b[2] & 0xfc) | 0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// The IPv6 link-local next hop that stands for a peer on the VXLAN device: EUI-64 of its VTEP
/// MAC. IPv6 pods' routes use it, so they need no IPv6 underlay.
pub fn vtep_link_local(mac: [u8; 6]) -> IpAddr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    IpAddr::V6(a.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay(a: &str, mtu: u32) -> Underlay {
        Underlay {
            address: a.parse().unwrap(),
            interface: "eth0".into(),
            mtu,
        }
    }

    #[test]
    fn mac_is_stable_local_and_unicast() {
        let m = vtep_mac("node-1");
        assert_eq!(m, vtep_mac("node-1"));
        assert_ne!(m, vtep_mac("node-2"));
        assert_eq!(m[0] & 0x03, 0x02);
        // Pinned: a change would move every node's MAC on upgrade and stale every peer's FDB.
        assert_eq!(
            trestle_netlink::format_mac(vtep_mac("a")),
            "de:4c:86:01:ec:8c"
        );
    }

    #[test]
    fn link_local_is_eui64() {
        let ip = vtep_link_local([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(ip, "fe80::11:22ff:fe33:4455".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn record_round_trip_and_mtu() {
        let r = HostRecord {
            v4: Some(underlay("192.168.1.10/24", 1500)),
            v6: Some(underlay("fd00::10/64", 1400)),
            vtep_mac: trestle_netlink::format_mac(vtep_mac("n")),
            vni: 4096,
            port: 4789,
            version: "0.1.0".into(),
        };
        assert_eq!(HostRecord::decode(&r.encode()), Some(r.clone()));
        assert_eq!(r.vxlan_mtu(), Some(1450));
        let v6only = HostRecord { v4: None, ..r };
        assert_eq!(v6only.vxlan_mtu(), Some(1330));
        assert!(HostRecord::decode(b"{}").is_none());
    }

    #[test]
    fn same_subnet() {
        let a = underlay("192.168.1.10/24", 1500);
        assert!(a.shares_subnet(&underlay("192.168.1.11/24", 1500)));
        assert!(!a.shares_subnet(&underlay("192.168.2.11/24", 1500)));
    }
}
