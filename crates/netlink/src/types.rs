//! Plain data types exchanged with [`crate::Netlink`].

use std::net::IpAddr;

use ipnet::IpNet;

/// A network interface as reported by `RTM_GETLINK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND`: `"bridge"`, `"veth"`...; `None` for devices without
    /// link ops such as `lo` or physical NICs.
    pub kind: Option<String>,
    /// Hardware address, when the device has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Operationally up (`IF_OPER_UP`).
    pub oper_up: bool,
    /// Carrier (`IFF_LOWER_UP`), read from the device itself, so unlike the operational state (which the
    /// kernel's linkwatch updates later) it is current. A bridge has carrier while any port forwards.
    pub carrier: bool,
    /// Index of the master device (bridge), if enslaved.
    pub master: Option<u32>,
    /// Promiscuous mode requested by the user (`IFF_PROMISC`); a bridge's
    /// own promiscuity towards its ports does not show here.
    pub promisc: bool,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace id of the peer, when it lives in
    /// another namespace.
    pub link_netnsid: Option<i32>,
    /// `IFLA_GROUP`: the link group (0 by default).
    pub group: u32,
}

/// One end of a veth pair to create.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VethEnd {
    /// Interface name.
    pub name: String,
    /// MTU; the kernel default (1500) when `None`.
    pub mtu: Option<u32>,
    /// Hardware address; random when `None`.
    pub mac: Option<[u8; 6]>,
    /// Link group (`IFLA_GROUP`), set as the device is created; the default group 0 when `None`.
    pub group: Option<u32>,
}

/// Bridge port flags. `None` leaves a flag unchanged when setting and means
/// "not reported" when reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortOptions {
    /// Hairpin mode: frames may be sent back out of the port they came in on.
    pub hairpin: Option<bool>,
    /// Isolated: the port cannot talk to other isolated ports.
    pub isolated: Option<bool>,
}

/// One VLAN of a bridge or bridge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BridgeVlan {
    /// VLAN id (1..=4094).
    pub vid: u16,
    /// Untagged ingress frames are assigned this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the port untagged.
    pub untagged: bool,
}

/// An interface address as reported by `RTM_GETADDR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Index of the interface that holds the address.
    pub index: u32,
    /// Address and prefix length.
    pub address: IpNet,
    /// Scope (`0` universe, `253` link, `254` host).
    pub scope: u8,
    /// `IFA_F_*` flags (e.g. `0x80` permanent, `0x02` nodad, `0x40` tentative).
    pub flags: u32,
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// The family of `net`.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

/// A route, for adding, deleting and listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination; `0.0.0.0/0` or `::/0` for a default route.
    pub dst: IpNet,
    /// Next hop, if the route goes through a gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Routing table (`254` main, `255` local).
    pub table: u32,
    /// Scope (`0` universe, `253` link, `254` host).
    pub scope: u8,
    /// Origin (`2` kernel, `3` boot, `4` static).
    pub protocol: u8,
    /// Route type (`1` unicast, `2` local, `6` blackhole...).
    pub kind: u8,
    /// Metric (`RTA_PRIORITY`).
    pub priority: Option<u32>,
    /// Path MTU metric (`RTAX_MTU`).
    pub mtu: Option<u32>,
    /// Advertised MSS metric (`RTAX_ADVMSS`).
    pub advmss: Option<u32>,
    /// The gateway is taken to be directly on the output link even though no address or route of that link
    /// covers it (`RTNH_F_ONLINK`, `ip route ... onlink`): how a route reaches a VXLAN peer's subnet through the
    /// peer's own address. The kernel wants `oif` set and the link up.
    pub onlink: bool,
}

/// `RT_TABLE_MAIN`.
pub(crate) const TABLE_MAIN: u32 = 254;
/// `RTPROT_BOOT`, what `ip route add` uses.
pub(crate) const PROTO_BOOT: u8 = 3;
/// `RTN_UNICAST`.
pub(crate) const TYPE_UNICAST: u8 = 1;

impl Route {
    /// A unicast route to `dst` in the main table with universe scope and
    /// boot protocol, like a bare `ip route add DST`.
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            table: TABLE_MAIN,
            scope: 0,
            protocol: PROTO_BOOT,
            kind: TYPE_UNICAST,
            priority: None,
            mtu: None,
            advmss: None,
            onlink: false,
        }
    }

    /// The family of the destination.
    pub fn family(&self) -> Family {
        Family::of(&self.dst)
    }
}

/// An IPv4 ARP or IPv6 NDP neighbour entry as reported by `RTM_GETNEIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Index of the interface the entry belongs to.
    pub index: u32,
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its link-layer address; `None` while unresolved (or when it is not 6 bytes long).
    pub mac: Option<[u8; 6]>,
    /// `NUD_*` state bits (`libc::NUD_PERMANENT` is `0x80`, `libc::NUD_REACHABLE` `0x02`...).
    pub state: u16,
    /// `NTF_*` flags (`libc::NTF_ROUTER`, `libc::NTF_PROXY`...).
    pub flags: u8,
    /// `ndm_type`: the route type of the address (`1` unicast, `5` multicast...).
    pub kind: u8,
}

/// A forwarding database entry of a bridge, a bridge port or a VXLAN device (`AF_BRIDGE` neighbour), as
/// `bridge fdb show` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// Index of the device the entry belongs to.
    pub index: u32,
    /// The MAC address; all zeros for a VXLAN device's default (flooding) destinations.
    pub mac: [u8; 6],
    /// `NDA_DST`: on a VXLAN device, the remote tunnel endpoint frames for `mac` are sent to.
    pub dst: Option<IpAddr>,
    /// `NDA_VNI`: the VNI used towards `dst`; the kernel reports it only when it is not the device's own.
    pub vni: Option<u32>,
    /// `NDA_PORT`: the UDP port used towards `dst`; the kernel reports it only when it is not the device's own.
    pub port: Option<u16>,
    /// `NDA_VLAN`: the VLAN of a bridge entry.
    pub vlan: Option<u16>,
    /// `NDA_MASTER`: the bridge, for an entry of a bridge port's master database.
    pub master: Option<u32>,
    /// `NTF_*` flags; `libc::NTF_SELF` (`0x02`) marks the device's own database.
    pub flags: u8,
    /// `NUD_*` state bits; `libc::NUD_PERMANENT` (`0x80`) for static entries.
    pub state: u16,
}

/// A VXLAN device to create (see [`crate::Netlink::create_vxlan`]).
///
/// The default is learning off, which is also what a route controller that programs the FDB itself wants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanSpec {
    /// Interface name.
    pub name: String,
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// Destination UDP port, e.g. IANA's 4789. 0 lets the kernel pick its default (the old Linux port 8472,
    /// a module parameter), which [`VxlanInfo::from`] cannot predict: set it.
    pub port: u16,
    /// Source address of the tunnel packets (`IFLA_VXLAN_LOCAL` or `IFLA_VXLAN_LOCAL6`); it also fixes the
    /// underlay family.
    pub local: Option<IpAddr>,
    /// Index of the underlay device (`IFLA_VXLAN_LINK`), whose MTU the device's default MTU follows.
    pub underlay: Option<u32>,
    /// Learn remote MACs from received packets (`IFLA_VXLAN_LEARNING`).
    pub learning: bool,
    /// MTU. When `None` the kernel takes the underlay's MTU minus the encapsulation (50 bytes over IPv4, 70 over
    /// IPv6), or 1500 without an underlay.
    pub mtu: Option<u32>,
    /// Hardware address; random when `None`.
    pub mac: Option<[u8; 6]>,
}

/// The VXLAN settings of an existing device (see [`crate::Netlink::vxlan_info`]); compare it with
/// `VxlanInfo::from(&spec)` to tell whether a device left by an earlier run can be adopted as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanInfo {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Destination UDP port.
    pub port: u16,
    /// Source address of the tunnel packets, when one is set.
    pub local: Option<IpAddr>,
    /// Index of the underlay device, when one is set.
    pub underlay: Option<u32>,
    /// Whether remote MACs are learned from received packets.
    pub learning: bool,
}

impl From<&VxlanSpec> for VxlanInfo {
    /// What a device created from `spec` reports.
    fn from(spec: &VxlanSpec) -> VxlanInfo {
        VxlanInfo {
            vni: spec.vni,
            port: spec.port,
            local: spec.local,
            underlay: spec.underlay,
            learning: spec.learning,
        }
    }
}
