//! The kernel floor: the netlink work of one pod's ADD and DEL done in a loop inside this process, with no process
//! start and no IPAM, so trestle's latency can be read as a multiple of what the kernel itself costs.

use super::Error;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use trestle_netlink::{Netlink, Route, VethEnd};
use trestle_netns::NetNs;

/// Latencies of the floor's ADD and DEL per pod.
pub struct Floor {
    /// ADD: veth born in the pod namespace, bridge port, address, link up, default route.
    pub add: Vec<Duration>,
    /// DEL: deleting the veth pair (the call returns when the kernel has unregistered it).
    pub del: Vec<Duration>,
}

/// Measures the floor for `pods` pods in a fresh host namespace; `tick` is called after every ADD and DEL.
pub fn measure(pods: usize, tick: &dyn Fn()) -> Result<Floor, Error> {
    let netns = |what| move |source| Error::FloorNetns { what, source };
    let netlink = |what| move |source| Error::FloorNetlink { what, source };
    let host = NetNs::new_anonymous().map_err(netns("creating the host namespace"))?;
    let pod_ns: Vec<NetNs> = (0..pods)
        .map(|_| NetNs::new_anonymous().map_err(netns("creating a pod namespace")))
        .collect::<Result<_, _>>()?;
    // Sockets are opened up front: the floor is the kernel's work, not socket setup.
    let mut conts: Vec<Netlink> = pod_ns
        .iter()
        .map(|ns| {
            ns.run(Netlink::open)
                .map_err(netns("entering a pod namespace"))?
                .map_err(netlink("opening netlink in a pod namespace"))
        })
        .collect::<Result<_, _>>()?;
    let mut nl = host
        .run(Netlink::open)
        .map_err(netns("entering the host namespace"))?
        .map_err(netlink("opening netlink in the host namespace"))?;
    nl.create_bridge("floor0", None, false)
        .map_err(netlink("creating bridge floor0"))?;
    let br = nl
        .link_by_name("floor0")
        .map_err(netlink("looking up bridge floor0"))?
        .ok_or(Error::FloorNoBridge)?;
    nl.set_up(br.index, true)
        .map_err(netlink("setting bridge floor0 up"))?;
    let mut floor = Floor {
        add: Vec::with_capacity(pods),
        del: Vec::with_capacity(pods),
    };
    let mut hosts = Vec::with_capacity(pods);
    for (i, (ns, cont)) in pod_ns.iter().zip(conts.iter_mut()).enumerate() {
        let start = Instant::now();
        let index = add_one(&mut nl, cont, ns, br.index, i).map_err(netlink("ADD of a pod"))?;
        floor.add.push(start.elapsed());
        hosts.push(index);
        tick();
    }
    for index in hosts {
        let start = Instant::now();
        nl.delete_link(index)
            .map_err(netlink("DEL of a pod (deleting its veth pair)"))?;
        floor.del.push(start.elapsed());
        tick();
    }
    Ok(floor)
}

fn add_one(
    nl: &mut Netlink,
    cont: &mut Netlink,
    ns: &NetNs,
    bridge: u32,
    i: usize,
) -> Result<u32, trestle_netlink::Error> {
    let host_name = format!("fl{i}");
    let end = |name: &str| VethEnd {
        name: name.to_owned(),
        mtu: None,
        mac: None,
        group: None,
    };
    nl.create_veth(&end(&host_name), &end("eth0"), ns.fd())?;
    let host = nl
        .link_by_name(&host_name)?
        .ok_or(trestle_netlink::Error::NotFound)?;
    // As trestle attaches its ports: on the bridge, no IPv6 address, up, in one request.
    nl.set_port_up(host.index, bridge)?;
    let eth0 = cont
        .link_by_name("eth0")?
        .ok_or(trestle_netlink::Error::NotFound)?;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 2)) + i as u32);
    cont.add_address(
        eth0.index,
        ipnet::IpNet::new(ip.into(), 16).expect("valid prefix"),
        true,
    )?;
    cont.set_up(eth0.index, true)?;
    let mut route = Route::new("0.0.0.0/0".parse().expect("literal"));
    route.gateway = Some(Ipv4Addr::new(10, 250, 0, 1).into());
    route.oif = Some(eth0.index);
    cont.add_route(&route)?;
    Ok(host.index)
}
