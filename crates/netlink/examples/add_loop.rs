//! Times the netlink work of one CNI ADD, repeated: a veth born with its
//! peer in a fresh "container" namespace, the host end enslaved to a bridge
//! and set up, the peer set up with an address and a default route.
//!
//! Needs root; works only in namespaces it creates. Run with
//! `cargo run --release -p trestle-netlink --example add_loop [ITERATIONS]`.

use std::error::Error;
use std::time::{Duration, Instant};

use trestle_netlink::{Netlink, Route, VethEnd};
use trestle_netns::NetNs;

fn main() -> Result<(), Box<dyn Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(200), |a| a.parse())?;
    let host = NetNs::new_anonymous()?;
    let mut nl = host.run(Netlink::open)??;
    nl.create_bridge("cni0", None, false)?;
    let br = nl.link_by_name("cni0")?.ok_or("bridge missing")?.index;
    nl.set_up(br, true)?;

    // Containers stay alive until the end so that namespace teardown does
    // not compete with the measured requests.
    let mut containers = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let ns = NetNs::new_anonymous()?;
        let mut cnl = ns.run(Netlink::open)??;
        let start = Instant::now();
        add(&mut nl, &mut cnl, &ns, br, i)?;
        times.push(start.elapsed());
        containers.push(ns);
    }
    report(&mut times);
    Ok(())
}

/// The measured part: what the bridge plugin asks of netlink on ADD.
fn add(
    nl: &mut Netlink,
    cnl: &mut Netlink,
    ns: &NetNs,
    br: u32,
    i: usize,
) -> Result<(), Box<dyn Error>> {
    let host_end = VethEnd {
        name: format!("veth{i}"),
        ..VethEnd::default()
    };
    let peer = VethEnd {
        name: "eth0".into(),
        ..VethEnd::default()
    };
    nl.create_veth(&host_end, &peer, ns.fd())?;
    let h = nl
        .link_by_name(&host_end.name)?
        .ok_or("host end missing")?
        .index;
    nl.set_master(h, Some(br))?;
    nl.set_up(h, true)?;
    let c = cnl.link_by_name("eth0")?.ok_or("peer missing")?.index;
    cnl.set_up(c, true)?;
    let ip = format!("10.88.{}.{}/16", i / 250, i % 250 + 2);
    cnl.add_address(c, ip.parse()?, false)?;
    let mut default = Route::new("0.0.0.0/0".parse()?);
    default.gateway = Some("10.88.0.1".parse()?);
    cnl.add_route(&default)?;
    Ok(())
}

fn report(times: &mut [Duration]) {
    times.sort();
    let total: Duration = times.iter().sum();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "{} ADDs: mean {:?}, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        times.len(),
        total / times.len() as u32,
        at(0.5),
        at(0.9),
        at(0.99),
        times[times.len() - 1]
    );
}
