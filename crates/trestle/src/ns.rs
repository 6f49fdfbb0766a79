//! The two namespaces of every command: the pod's (`CNI_NETNS`) and the plugin's own ("host"), each with its
//! netlink socket, opened once.

use crate::error;
use cni_proto::{CniError, ErrorCode};
use trestle_netlink::{Link, Netlink};
use trestle_netns::NetNs;

/// Opens `CNI_NETNS` and refuses the plugin's own namespace (wiring the host itself as a pod would cut it off).
pub fn open_pod_netns(path: &str) -> Result<NetNs, CniError> {
    let ns = NetNs::open(path).map_err(error::netns)?;
    if ns.is_current().map_err(error::netns)? {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {path} is the plugin's own network namespace"),
        ));
    }
    Ok(ns)
}

/// Opens a netlink socket in `ns`: only its creation happens inside (the socket keeps the namespace for life), on
/// this thread, which is back in the plugin's namespace before anything else runs.
pub fn netlink_in(ns: &NetNs) -> Result<Netlink, CniError> {
    ns.run_on_this_thread(Netlink::socket)
        .map_err(error::netns)?
        .and_then(Netlink::from_socket)
        .map_err(|e| error::kernel("open pod netlink socket", e))
}

/// Opens a netlink socket in the plugin's own namespace.
pub fn host_netlink() -> Result<Netlink, CniError> {
    Netlink::open().map_err(|e| error::kernel("open netlink socket", e))
}

/// The pod's namespace and sockets on both sides.
pub struct Sides {
    /// The pod's namespace.
    pub pod_ns: NetNs,
    /// A socket in the pod's namespace.
    pub pod: Netlink,
    /// A socket in the plugin's namespace.
    pub host: Netlink,
}

impl Sides {
    /// Opens the sockets of both sides for the already opened pod namespace.
    pub fn open(pod_ns: NetNs) -> Result<Sides, CniError> {
        let pod = netlink_in(&pod_ns)?;
        let host = host_netlink()?;
        Ok(Sides { pod_ns, pod, host })
    }

    /// The host link that `pod`'s `IFLA_LINK` names, when its peer is in another namespace at all (whether that
    /// is the plugin's is for [`crate::pair::prove`] to say).
    pub fn host_peer(&mut self, pod: &Link) -> Result<Option<Link>, CniError> {
        match pod.peer_index {
            Some(p) if pod.link_netnsid.is_some() => self
                .host
                .link_by_index(p)
                .map_err(|e| error::kernel("look up host veth", e)),
            _ => Ok(None),
        }
    }

    /// The ids by which each namespace knows the other; see [`crate::pair`].
    pub fn ids(&mut self) -> Result<NsIds, CniError> {
        let home = NetNs::current().map_err(error::netns)?;
        let host_in_pod = self
            .pod
            .netns_id(home.fd())
            .map_err(|e| error::kernel("get the plugin namespace's id in the pod", e))?;
        let pod_in_host = self
            .host
            .netns_id(self.pod_ns.fd())
            .map_err(|e| error::kernel("get the pod namespace's id", e))?;
        Ok(NsIds {
            host_in_pod,
            pod_in_host,
        })
    }
}

/// Namespace ids are per namespace: a veth's `IFLA_LINK_NETNSID` names its peer's namespace as the veth's own
/// namespace numbers it. `None`: that namespace has no id for the other (then no veth links them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsIds {
    /// The plugin's namespace as the pod's namespace numbers it.
    pub host_in_pod: Option<i32>,
    /// The pod's namespace as the plugin's namespace numbers it.
    pub pod_in_host: Option<i32>,
}
