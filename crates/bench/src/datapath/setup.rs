//! The machinery of `bench --datapath`: three nodes (two on one segment, one on the other) with etcd and a trestled
//! each, trestle's pods made by the real plugin, and the kernel's baseline built by hand in the same node
//! namespaces: plain veths and routes, and a VXLAN device of the bench's own.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use trestle_netlink::{Netlink, Route, VethEnd, VxlanSpec};
use trestle_netns::NetNs;

use super::Error;
use trestle_demo::cluster::machine::{self, Node, Segment, Service};
use trestle_operator::runtime::Invocation;
use trestle_operator::sandbox::Pause;

/// The baseline's VXLAN device: its own name, VNI and port, so trestled's device, guard and routes never see it.
pub const BASE_VXLAN: &str = "bench.vx";
const BASE_VNI: u32 = 4242;
const BASE_PORT: u16 = 4790;

/// A pod: trestle's (a pause sandbox attached by the plugin) or the baseline's (a namespace wired by hand).
#[derive(Debug)]
pub struct Pod {
    /// Its namespace.
    pub ns: NetNs,
    /// Its address.
    pub ip: Ipv4Addr,
    /// eth0's MTU.
    pub mtu: u32,
    /// The sandbox holding a trestle pod's namespace; `None` for a baseline namespace (the handle holds it).
    _pause: Option<Pause>,
}

/// Everything the bench made; dropping it removes all of it (processes killed, anonymous namespaces gone with
/// their last handle).
#[derive(Debug)]
pub struct Cluster {
    /// The underlay's namespace (the segments' bridges, etcd's address): held so that it lives as long as the
    /// nodes need it.
    _world: NetNs,
    /// etcd.
    pub etcd: Service,
    /// n0, n1 on seg1; n2 on seg2.
    pub nodes: Vec<Node>,
    /// trestle's pods: A1, A2 on n0, B1 on n1, C1 on n2.
    pub pods: Vec<Pod>,
    /// The baselines' pods, the same layout: base-A1, base-A2, base-B1, base-C1.
    pub base: Vec<Pod>,
}

impl Cluster {
    /// Stops trestled and etcd in order (dropping does the same, harder).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            if let Some(d) = n.daemon.as_mut() {
                let _ = d.stop(Duration::from_secs(5));
            }
        }
        let _ = self.etcd.stop(Duration::from_secs(5));
    }
}

/// (node, pod name) of the pods: A1 and A2 share n0, B1 is on n0's segment, C1 on the other.
pub const LAYOUT: [(usize, &str); 4] = [(0, "A1"), (0, "A2"), (1, "B1"), (2, "C1")];

/// Makes the world, etcd, the nodes and trestle's pods. `work` holds etcd's data and the nodes' files.
pub fn cluster(bin_dir: &Path, work: &Path) -> Result<Cluster, Error> {
    let etcd_bin = trestle_etcd_local::etcd_binary().ok_or(Error::NoEtcd)?;
    let world = NetNs::new_anonymous().map_err(Error::Netns)?;
    let segments = [Segment::number(1), Segment::number(2)];
    world
        .run(|| -> Result<(), trestle_netlink::Error> {
            let mut nl = Netlink::open()?;
            let lo = nl
                .link_by_name("lo")?
                .ok_or(trestle_netlink::Error::NotFound)?;
            nl.set_up(lo.index, true)?;
            for s in &segments {
                s.create()?;
            }
            // The world routes between the segments: n2 is reached from n0 and n1 through it.
            trestle_netlink::sysctl::set("net/ipv4/ip_forward", "1")
                .map_err(trestle_netlink::Error::Io)
        })
        .map_err(Error::Netns)?
        .map_err(|e| netlink("the underlay", e))?;
    let mut etcd = Service::spawn(
        "etcd",
        machine::etcd_command(&etcd_bin, &work.join("etcd")),
        &world,
        &work.join("etcd.log"),
    )
    .map_err(|e| Error::Setup(format!("cannot start etcd: {e}")))?;
    machine::wait_serving(&world, machine::ETCD, &mut etcd, Duration::from_secs(20))
        .map_err(step)?;
    let mut nodes = Vec::new();
    for (i, seg) in [&segments[0], &segments[0], &segments[1]]
        .into_iter()
        .enumerate()
    {
        let ip = Ipv4Addr::new(192, 168, seg.address.addr().octets()[2], 10 + i as u8);
        let mut n = Node::create(&world, &format!("n{i}"), seg, ip, work).map_err(step)?;
        n.extra_args = vec!["--routing".into(), "auto".into()];
        n.start_daemon(bin_dir).map_err(step)?;
        nodes.push(n);
    }
    // Every host record in etcd before the first pod: the pods' MTU is the cluster's smallest path's.
    for n in &mut nodes {
        n.wait_daemon(Duration::from_secs(20)).map_err(step)?;
    }
    let exe = std::env::current_exe().map_err(|e| Error::Setup(format!("own executable: {e}")))?;
    let mut pods = Vec::new();
    for (node, name) in LAYOUT {
        pods.push(trestle_pod(bin_dir, &exe, &nodes[node], name)?);
        // An ADD that succeeded does not look at Ctrl-C: the next step would.
        if trestle_demo::interrupt::requested() {
            return Err(Error::Interrupted);
        }
    }
    Ok(Cluster {
        _world: world,
        etcd,
        nodes,
        pods,
        base: Vec::new(),
    })
}

/// A pause sandbox on `node`, ADDed by the plugin with the docs' config (as `demo --cluster` does).
fn trestle_pod(bin_dir: &Path, exe: &Path, node: &Node, name: &str) -> Result<Pod, Error> {
    let pause = Pause::start_detached(exe, Some(&node.ns))
        .map_err(|e| Error::Setup(format!("pause sandbox for {name}: {e}")))?;
    let path = pause.netns_path().display().to_string();
    let inv = Invocation::new(
        &bin_dir.join("trestle"),
        "ADD",
        &format!("bench-{name}"),
        &path,
        "eth0",
    );
    let (out, _) = machine::add_with_retry(&inv, &node.conf(), &node.ns, Duration::from_secs(30))
        .map_err(step)?;
    if !out.success {
        return Err(Error::Setup(format!(
            "ADD of {name} on {}: {} {}\n{}",
            node.name,
            out.stdout,
            out.stderr.trim(),
            node.daemon_log()
        )));
    }
    let ip = machine::result_address(&out.stdout)
        .ok_or_else(|| Error::Setup(format!("no address in {name}'s ADD result")))?
        .addr();
    let ns = pause.netns().map_err(Error::Netns)?;
    let mtu = ns
        .run(|| Netlink::open().and_then(|mut nl| nl.link_by_name("eth0")))
        .map_err(Error::Netns)?
        .map_err(|e| netlink("the pod's eth0", e))?
        .map_or(0, |l| l.mtu);
    Ok(Pod {
        ns,
        ip,
        mtu,
        _pause: Some(pause),
    })
}

/// The baseline's pods, each beside its trestle pod in the same node: a namespace and a plain veth to the node
/// (no bridge), `10.250.<k+1>.2/24` with the node's end at `.1` and the default route through it, eth0's MTU the
/// trestle pod's. Between nodes, plain routes to the other baseline pods' /24: via the peer's underlay address on
/// one segment, over [`BASE_VXLAN`] to the other (route onlink, permanent neighbour and FDB entries, as trestled
/// programs its own).
pub fn baseline(c: &mut Cluster) -> Result<(), Error> {
    let vxlan_mtu = c.nodes[0]
        .ns
        .run(|| Netlink::open().and_then(|mut nl| nl.link_by_name(machine::VXLAN)))
        .map_err(Error::Netns)?
        .map_err(|e| netlink("trestled's VXLAN device", e))?
        .map(|l| l.mtu);
    // VXLAN devices first: the routes over them need their MACs.
    let mut vteps = Vec::new();
    for n in &c.nodes {
        vteps.push(make_vxlan(n, vxlan_mtu)?);
    }
    for (k, (node, _)) in LAYOUT.into_iter().enumerate() {
        let mtu = c.pods[k].mtu;
        c.base.push(base_pod(&c.nodes[node], k, mtu)?);
    }
    for (k, (node, _)) in LAYOUT.into_iter().enumerate() {
        let subnet = base_subnet(k);
        for (i, n) in c.nodes.iter().enumerate() {
            if i == node {
                continue;
            }
            let peer = &c.nodes[node];
            let same_segment = n.segment.name == peer.segment.name;
            let (vx_index, peer_mac) = (vteps[i].0, vteps[node].1);
            n.ns.run(|| -> Result<(), trestle_netlink::Error> {
                let mut nl = Netlink::open()?;
                let mut r = Route::new(IpNet::V4(subnet));
                r.gateway = Some(peer.ip.addr().into());
                if !same_segment {
                    r.oif = Some(vx_index);
                    r.onlink = true;
                    nl.replace_neighbour(vx_index, peer.ip.addr().into(), peer_mac)?;
                    nl.replace_fdb(vx_index, peer_mac, peer.ip.addr().into())?;
                }
                nl.replace_route(&r)
            })
            .map_err(Error::Netns)?
            .map_err(|e| netlink("the baseline's routes", e))?;
        }
    }
    Ok(())
}

/// `10.250.<k+1>.0/24`: baseline pod `k`'s subnet.
fn base_subnet(k: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 250, k as u8 + 1, 0), 24).expect("a /24")
}

/// The baseline's VXLAN device on `n`: index and MAC.
fn make_vxlan(n: &Node, mtu: Option<u32>) -> Result<(u32, [u8; 6]), Error> {
    n.ns.run(|| -> Result<(u32, [u8; 6]), trestle_netlink::Error> {
        let mut nl = Netlink::open()?;
        let eth0 = nl
            .link_by_name("eth0")?
            .ok_or(trestle_netlink::Error::NotFound)?;
        let index = nl.create_vxlan(&VxlanSpec {
            name: BASE_VXLAN.into(),
            vni: BASE_VNI,
            port: BASE_PORT,
            local: Some(n.ip.addr().into()),
            underlay: Some(eth0.index),
            learning: false,
            mtu,
            mac: None,
        })?;
        nl.set_up(index, true)?;
        // As trestled does for its own device: packets come back from the peer's underlay, not via this device.
        trestle_netlink::sysctl::set(&format!("net/ipv4/conf/{BASE_VXLAN}/rp_filter"), "0")
            .map_err(trestle_netlink::Error::Io)?;
        let mac = nl
            .link_by_index(index)?
            .and_then(|l| l.mac)
            .ok_or(trestle_netlink::Error::NotFound)?;
        Ok((index, mac))
    })
    .map_err(Error::Netns)?
    .map_err(|e| netlink("the baseline's VXLAN device", e))
}

/// Baseline pod `k` on `node`: a namespace, a veth `bx<k>` to it, addresses and routes.
fn base_pod(node: &Node, k: usize, mtu: u32) -> Result<Pod, Error> {
    let ns = NetNs::new_anonymous().map_err(Error::Netns)?;
    let subnet = base_subnet(k);
    let [a, b, c, _] = subnet.addr().octets();
    let (gw, ip) = (Ipv4Addr::new(a, b, c, 1), Ipv4Addr::new(a, b, c, 2));
    let host = format!("bx{k}");
    let mtu_opt = (mtu > 0).then_some(mtu);
    node.ns
        .run(|| -> Result<(), trestle_netlink::Error> {
            let mut nl = Netlink::open()?;
            let end = |n: &str| VethEnd {
                name: n.into(),
                mtu: mtu_opt,
                ..VethEnd::default()
            };
            nl.create_veth(&end(&host), &end("eth0"), ns.fd())?;
            let link = nl
                .link_by_name(&host)?
                .ok_or(trestle_netlink::Error::NotFound)?;
            nl.add_address(
                link.index,
                IpNet::V4(Ipv4Net::new(gw, 24).expect("/24")),
                false,
            )?;
            nl.set_up(link.index, true)?;
            // trestle's ADD turned forwarding on already; the baseline does not lean on that.
            trestle_netlink::sysctl::set("net/ipv4/ip_forward", "1")
                .map_err(trestle_netlink::Error::Io)
        })
        .map_err(Error::Netns)?
        .map_err(|e| netlink("a baseline veth", e))?;
    ns.run(|| -> Result<(), trestle_netlink::Error> {
        let mut nl = Netlink::open()?;
        for dev in ["lo", "eth0"] {
            let link = nl
                .link_by_name(dev)?
                .ok_or(trestle_netlink::Error::NotFound)?;
            if dev == "eth0" {
                nl.add_address(
                    link.index,
                    IpNet::V4(Ipv4Net::new(ip, 24).expect("/24")),
                    false,
                )?;
            }
            nl.set_up(link.index, true)?;
        }
        let mut default = Route::new("0.0.0.0/0".parse().expect("a prefix"));
        default.gateway = Some(gw.into());
        nl.add_route(&default)
    })
    .map_err(Error::Netns)?
    .map_err(|e| netlink("a baseline pod", e))?;
    Ok(Pod {
        ns,
        ip,
        mtu,
        _pause: None,
    })
}

fn netlink(what: &'static str, source: trestle_netlink::Error) -> Error {
    Error::Netlink { what, source }
}

/// A step of the demo's machinery that failed: interrupted by Ctrl-C, or why.
fn step(e: impl std::fmt::Display) -> Error {
    if trestle_demo::interrupt::requested() {
        return Error::Interrupted;
    }
    Error::Setup(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_subnets_are_outside_the_pool_and_apart() {
        let pool: IpNet = machine::POOL.parse().unwrap();
        let nets: Vec<Ipv4Net> = (0..LAYOUT.len()).map(base_subnet).collect();
        assert_eq!(nets[0].to_string(), "10.250.1.0/24");
        for (i, n) in nets.iter().enumerate() {
            assert!(!pool.contains(&IpNet::V4(*n)));
            assert!(nets[i + 1..].iter().all(|m| !m.contains(n)));
        }
    }
}
