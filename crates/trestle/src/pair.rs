//! Which veth pair is this attachment's. Interface indexes are per namespace, so the `IFLA_LINK` of a pod's
//! interface names a host link only when its `IFLA_LINK_NETNSID` says the peer lives in the plugin's namespace;
//! and even then the host link is this attachment's only if it points back at the pod's interface, carries one of
//! the names ADD gives this attachment, and is (or, parked by DEL, was) a port of the network's bridge. DEL, CHECK
//! and GC act on the host side only for a pair proved this way; anything else they touch only inside the pod.

use crate::ns::NsIds;
use trestle_netlink::Link;

/// How many host names ADD tries per attachment (a collision moves it to the next).
pub const NAME_ATTEMPTS: u32 = 8;

/// Prefix of the host end's name; eight hex digits follow.
const HOST_PREFIX: &str = "veth";

/// Name the pod's end takes when DEL cuts it off, freeing `CNI_IFNAME` at once: this prefix and the host end's
/// eight hex digits, so a retried DEL still finds (and proves) the pair after a kill left it renamed.
pub const DEAD_PREFIX: &str = "trdead";

/// The host end's name: stable for an attachment (so a retried ADD or DEL finds its leftover), 12 bytes.
pub fn host_name(container_id: &str, ifname: &str, attempt: u32) -> String {
    // FNV-1a: no crypto needed, only spread; `attempt` moves to another name on a (rare) collision.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain([0])
        .chain(ifname.bytes())
        .chain(attempt.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_PREFIX}{:08x}", h as u32)
}

/// Every host name ADD may have given the attachment.
pub fn host_names(container_id: &str, ifname: &str) -> Vec<String> {
    (0..NAME_ATTEMPTS)
        .map(|a| host_name(container_id, ifname, a))
        .collect()
}

/// The name DEL gives the pod's end of the pair whose host end is `host_name`.
pub fn dead_name(host_name: &str) -> String {
    let digits = host_name.strip_prefix(HOST_PREFIX).unwrap_or(host_name);
    format!("{DEAD_PREFIX}{digits}")
}

/// Whether `name` is one [`host_name`] makes (for any attachment).
pub fn is_host_name(name: &str) -> bool {
    name.strip_prefix(HOST_PREFIX)
        .is_some_and(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The pod's interface and the host end a pair has to have, seen from each side.
pub struct Candidate<'a> {
    /// The pod's end.
    pub pod: &'a Link,
    /// The link of the plugin's namespace with index `pod.peer_index`, if any.
    pub host: Option<&'a Link>,
}

/// Where the proved host end is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// A port of the bridge whose index is given.
    Of(u32),
    /// On no bridge: parked by a DEL, or not attached yet by an ADD that was killed.
    Detached,
}

/// Why a pair is not this attachment's (logged, so that an operator sees what DEL left alone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Foreign {
    /// The pod's interface is not a veth.
    #[error("{0} is not a veth")]
    NotVeth(String),
    /// Its peer is not in the plugin's namespace.
    #[error("the peer of {0} is not in the plugin's namespace")]
    PeerElsewhere(String),
    /// The host link its index names does not point back at it.
    #[error("host link {host} is not the peer of {pod}")]
    NotPeer {
        /// The pod's interface.
        pod: String,
        /// The host link.
        host: String,
    },
    /// The host end does not carry a name ADD gives this attachment.
    #[error("host end {0} was not made for this attachment")]
    NotNamed(String),
    /// The host end is a port of another master.
    #[error("host end {0} is a port of another device")]
    OtherMaster(String),
}

/// Proves that `c` is this attachment's pair (`names`: [`host_names`]; `bridge`: the network's bridge index, if
/// it exists) and says where its host end is attached.
pub fn prove(
    c: &Candidate,
    ids: &NsIds,
    names: &[String],
    bridge: Option<u32>,
) -> Result<Port, Foreign> {
    let pod = c.pod;
    if pod.kind.as_deref() != Some("veth") {
        return Err(Foreign::NotVeth(pod.name.clone()));
    }
    // A peer in the pod's own namespace has no IFLA_LINK_NETNSID; one elsewhere has the id of its namespace.
    if pod.peer_index.is_none() || ids.host_in_pod.is_none() || pod.link_netnsid != ids.host_in_pod
    {
        return Err(Foreign::PeerElsewhere(pod.name.clone()));
    }
    let Some(host) = c.host.filter(|h| Some(h.index) == pod.peer_index) else {
        return Err(Foreign::PeerElsewhere(pod.name.clone()));
    };
    let points_back = host.kind.as_deref() == Some("veth")
        && host.peer_index == Some(pod.index)
        && ids.pod_in_host.is_some()
        && host.link_netnsid == ids.pod_in_host;
    if !points_back {
        return Err(Foreign::NotPeer {
            pod: pod.name.clone(),
            host: host.name.clone(),
        });
    }
    if !names.contains(&host.name) {
        return Err(Foreign::NotNamed(host.name.clone()));
    }
    match host.master {
        None => Ok(Port::Detached),
        Some(m) if Some(m) == bridge => Ok(Port::Of(m)),
        Some(_) => Err(Foreign::OtherMaster(host.name.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(index: u32, name: &str, peer: u32, nsid: Option<i32>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some("veth".into()),
            mac: None,
            mtu: 1500,
            up: true,
            oper_up: true,
            carrier: true,
            master: None,
            promisc: false,
            peer_index: Some(peer),
            link_netnsid: nsid,
            group: 0,
        }
    }

    const IDS: NsIds = NsIds {
        host_in_pod: Some(0),
        pod_in_host: Some(3),
    };

    fn names() -> Vec<String> {
        host_names("c1", "eth0")
    }

    #[test]
    fn host_names_are_stable_valid_and_distinct() {
        let a = host_name("abc", "eth0", 0);
        assert_eq!(a, host_name("abc", "eth0", 0));
        assert_ne!(a, host_name("abc", "eth1", 0));
        assert_ne!(a, host_name("abc", "eth0", 1));
        assert_ne!(a, host_name("abd", "eth0", 0));
        assert_eq!(a.len(), 12);
        assert!(is_host_name(&a));
        cni_proto::validate_ifname(&a).unwrap();
        let dead = dead_name(&a);
        assert_eq!(dead.len(), 14);
        assert!(dead.starts_with(DEAD_PREFIX) && dead.ends_with(&a[4..]));
        cni_proto::validate_ifname(&dead).unwrap();
        assert_eq!(host_names("abc", "eth0").len(), NAME_ATTEMPTS as usize);
        assert!(!is_host_name("veth0") && !is_host_name("vethxyzxyzxy") && !is_host_name("eth0"));
    }

    #[test]
    fn a_proper_pair_is_proved() {
        let host_end = names()[2].clone();
        let pod = veth(2, "eth0", 40, Some(0));
        let mut host = veth(40, &host_end, 2, Some(3));
        let c = Candidate {
            pod: &pod,
            host: Some(&host),
        };
        assert_eq!(prove(&c, &IDS, &names(), Some(7)), Ok(Port::Detached));
        host.master = Some(7);
        let c = Candidate {
            pod: &pod,
            host: Some(&host),
        };
        assert_eq!(prove(&c, &IDS, &names(), Some(7)), Ok(Port::Of(7)));
    }

    #[test]
    fn every_mismatch_is_foreign() {
        let n = names();
        let good_host = veth(40, &n[0], 2, Some(3));
        let good_pod = veth(2, "eth0", 40, Some(0));
        let cases: Vec<(&str, Link, Option<Link>)> = vec![
            (
                "not a veth",
                Link {
                    kind: Some("dummy".into()),
                    ..good_pod.clone()
                },
                Some(good_host.clone()),
            ),
            (
                "peer in the pod itself",
                veth(2, "eth0", 40, None),
                Some(good_host.clone()),
            ),
            (
                "peer in a third namespace",
                veth(2, "eth0", 40, Some(1)),
                Some(good_host.clone()),
            ),
            ("no host link", good_pod.clone(), None),
            (
                "host link points elsewhere",
                good_pod.clone(),
                Some(veth(40, &n[0], 9, Some(3))),
            ),
            (
                "host link's peer in another ns",
                good_pod.clone(),
                Some(veth(40, &n[0], 2, Some(5))),
            ),
            (
                "host link not a veth",
                good_pod.clone(),
                Some(Link {
                    kind: Some("vlan".into()),
                    ..good_host.clone()
                }),
            ),
            (
                "another attachment's name",
                good_pod.clone(),
                Some(veth(40, &host_name("c2", "eth0", 0), 2, Some(3))),
            ),
            (
                "port of another master",
                good_pod.clone(),
                Some(Link {
                    master: Some(99),
                    ..good_host.clone()
                }),
            ),
        ];
        for (what, pod, host) in cases {
            let c = Candidate {
                pod: &pod,
                host: host.as_ref(),
            };
            assert!(prove(&c, &IDS, &n, Some(7)).is_err(), "{what} was proved");
        }
        let no_ids = NsIds {
            host_in_pod: None,
            pod_in_host: None,
        };
        let c = Candidate {
            pod: &veth(2, "eth0", 40, None),
            host: Some(&good_host),
        };
        assert!(prove(&c, &no_ids, &n, Some(7)).is_err());
    }
}
