//! Simulated nodes for `bench --routes --routes-simulated N`: N host records and a block each, written straight
//! into etcd before the real nodes start, so that every real node routes to N more nodes (a route, a neighbour
//! and an FDB entry each: their underlay addresses are on no subnet of the real nodes). What that costs a real
//! node (its first pass, its kernel entries, its memory) is what docs/scale.md reports.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde::Serialize;
use trestle_ipam_etcd::client::Txn;
use trestle_ipam_etcd::{Bitmap, Block, Etcd, EtcdConfig, Keys, Pool};
use trestle_netns::NetNs;
use trestle_routes::{HostRecord, Underlay};

use trestle_demo::cluster::machine;

/// The network name of the bench's pods.
pub const NETWORK: &str = "podnet";
/// The block size of the bench.
pub const BLOCK: u8 = 29;

/// What the real nodes hold with the simulated ones in etcd.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Load {
    /// Simulated nodes.
    pub simulated: usize,
    /// Seconds to write them into etcd.
    pub write_s: f64,
    /// Per real node: ms from its trestled's start to every simulated node's route in its kernel.
    pub first_sync_ms: Vec<f64>,
    /// Routes of trestle's in a real node's kernel (the largest).
    pub routes: usize,
    /// Neighbour entries on its VXLAN device.
    pub neighbours: usize,
    /// FDB entries on its VXLAN device.
    pub fdb: usize,
    /// Resident memory of its trestled, KiB (the largest).
    pub rss_kib: u64,
}

/// Writes `n` simulated nodes (a host record and a block each) under `prefix`, from inside `world`.
pub fn populate(world: &NetNs, n: usize, prefix: &str) -> Result<f64, String> {
    if n == 0 {
        return Ok(0.0);
    }
    let start = Instant::now();
    world
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(write(n, prefix))
        })
        .map_err(|e| e.to_string())??;
    Ok(start.elapsed().as_secs_f64())
}

async fn write(n: usize, prefix: &str) -> Result<(), String> {
    let etcd = Etcd::new(&EtcdConfig {
        endpoints: vec![machine::ETCD.to_string()],
        tls: None,
        timeout: Duration::from_secs(10),
    })
    .map_err(|e| e.to_string())?;
    write_to(&etcd, n, prefix).await
}

/// Writes the pool and `n` simulated nodes under `prefix` through `etcd` (`bench --fanout` fills its own etcd
/// with them too).
pub(crate) async fn write_to(etcd: &Etcd, n: usize, prefix: &str) -> Result<(), String> {
    let keys = Keys::new(prefix);
    let pool = pool()?;
    let pool_json = serde_json::to_vec(&pool).map_err(|e| e.to_string())?;
    etcd.txn(Txn::new().put(&keys.pool(NETWORK, &pool.id()), pool_json, 0))
        .await
        .map_err(|e| e.to_string())?;
    let records: Vec<(String, Vec<u8>)> = (0..n).flat_map(|i| entries(&keys, &pool, i)).collect();
    // etcd takes at most 128 operations per transaction.
    for chunk in records.chunks(128) {
        let txn = chunk
            .iter()
            .fold(Txn::new(), |t, (k, v)| t.put(k, v.clone(), 0));
        etcd.txn(txn).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The bench's pool, as the real nodes make it from their config.
pub(crate) fn pool() -> Result<Pool, String> {
    let range = trestle_ipam_core::Range::new(
        machine::POOL.parse().map_err(|e| format!("{e}"))?,
        None,
        None,
        Some(machine::GATEWAY.parse().map_err(|e| format!("{e}"))?),
    )
    .map_err(|e| e.to_string())?;
    Pool::new(&range, BLOCK).map_err(|e| e.to_string())
}

/// Simulated node `i`: its host record (underlay 10.99.x.y/16, a subnet no real node is on) and one block of
/// the pool's upper half (real nodes claim free blocks, and these are taken).
fn entries(keys: &Keys, pool: &Pool, i: usize) -> [(String, Vec<u8>); 2] {
    let name = format!("sim-{i}");
    let ip = Ipv4Addr::new(10, 99, (i / 250) as u8, (i % 250 + 1) as u8);
    let host = HostRecord {
        v4: Some(Underlay {
            address: ipnet::IpNet::new(IpAddr::V4(ip), 16).expect("a /16"),
            interface: "eth0".into(),
            mtu: 1500,
        }),
        v6: None,
        vtep_mac: trestle_netlink::format_mac(trestle_routes::host::vtep_mac(&name)),
        vni: 4096,
        port: 4789,
        version: "bench".into(),
    };
    let start = u32::from(Ipv4Addr::new(10, 244, 255, 248)) - (i as u32) * 8;
    let start = IpAddr::V4(Ipv4Addr::from(start));
    [
        (keys.host(&name), host.encode()),
        (keys.block(NETWORK, &pool.id(), start), block(pool, &name)),
    ]
}

/// A block record of `owner`'s holding one address, as a node writes when it claims a block.
pub(crate) fn block(pool: &Pool, owner: &str) -> Vec<u8> {
    let mut held = Bitmap::new(pool.block_len());
    held.set(1, true);
    Block {
        owner: owner.into(),
        held,
        foreign: BTreeMap::new(),
        writer: "bench".into(),
        at_ms: 0,
    }
    .encode()
}

/// Trestle's routes, and the neighbour and FDB entries of its VXLAN device, in `ns`.
pub fn entries_in(ns: &NetNs) -> (usize, usize, usize) {
    ns.run(|| {
        let mut nl = trestle_netlink::Netlink::open().ok()?;
        let routes = nl
            .routes(None)
            .ok()?
            .iter()
            .filter(|r| r.protocol == trestle_routes::diff::ROUTE_PROTO)
            .count();
        let vx = nl.link_by_name(machine::VXLAN).ok()??;
        let neigh = nl
            .neighbours(None, Some(vx.index))
            .ok()?
            .iter()
            .filter(|n| n.state & trestle_routes::diff::NUD_PERMANENT != 0)
            .count();
        let fdb = nl
            .fdb(vx.index)
            .ok()?
            .iter()
            .filter(|e| e.dst.is_some())
            .count();
        Some((routes, neigh, fdb))
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Resident memory of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_nodes_are_distinct_and_inside_the_pool() {
        let keys = Keys::new("/p");
        let pool = pool().unwrap();
        let a = entries(&keys, &pool, 0);
        let b = entries(&keys, &pool, 999);
        assert_ne!(a[0].0, b[0].0);
        assert!(a[1].0.ends_with("10.244.255.248"), "{}", a[1].0);
        assert!(b[1].0.ends_with("10.244.224.192"), "{}", b[1].0);
        let h = HostRecord::decode(&b[0].1).unwrap();
        assert_eq!(h.v4.unwrap().address.to_string(), "10.99.3.250/16");
        assert!(Block::decode(&a[1].1, pool.block_len()).is_some());
    }
}
