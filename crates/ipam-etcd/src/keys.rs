//! The key layout under the configured prefix (`/trestle` by default). Version `v1` is part of
//! every key, so a later layout can live beside this one during an upgrade.
//!
//! - `nodes/<node>`: the node's registration, attached to its lease (gone when it expires).
//! - `hosts/<node>`: how peers reach the node's pods (underlay addresses, VTEP MAC, MTU); no
//!   lease, so a restart or a short partition withdraws nobody's routes.
//! - `expired/<node>`: when another node first saw `<node>`'s lease gone (reclaim grace).
//! - `pools/<net>/<pool>`: a pool's geometry, fixed by the first node that used it.
//! - `blocks/<net>/<pool>/<start>`: a block's record ([`crate::block::Block`]).
//! - `affinity/<node>/<net>/<pool>/<start>`: index of the blocks `<node>` owns.
//! - `borrowed/<node>/<net>/<pool>/<start>`: index of the blocks where `<node>` holds
//!   addresses it does not own.

use std::net::IpAddr;

/// Keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is optional).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            root: format!("{}/v1/", prefix.trim_end_matches('/')),
        }
    }

    /// `nodes/`.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }

    /// `nodes/<node>`.
    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.root)
    }

    /// `hosts/`.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.root)
    }

    /// `hosts/<node>`.
    pub fn host(&self, node: &str) -> String {
        format!("{}hosts/{node}", self.root)
    }

    /// The root of every key (`<prefix>/v1/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The part of `key` after the root, if it is under it.
    pub fn relative<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key).ok()?.strip_prefix(&self.root)
    }

    /// `expired/<node>`.
    pub fn expired(&self, node: &str) -> String {
        format!("{}expired/{node}", self.root)
    }

    /// `pools/<net>/<pool>`.
    pub fn pool(&self, net: &str, pool: &str) -> String {
        format!("{}pools/{net}/{pool}", self.root)
    }

    /// `pools/`.
    pub fn pools(&self) -> String {
        format!("{}pools/", self.root)
    }

    /// `blocks/<net>/<pool>/`.
    pub fn blocks(&self, net: &str, pool: &str) -> String {
        format!("{}blocks/{net}/{pool}/", self.root)
    }

    /// `blocks/<net>/<pool>/<start>`.
    pub fn block(&self, net: &str, pool: &str, start: IpAddr) -> String {
        format!("{}{start}", self.blocks(net, pool))
    }

    /// `affinity/` or `affinity/<node>/`.
    pub fn affinities(&self, node: Option<&str>) -> String {
        match node {
            None => format!("{}affinity/", self.root),
            Some(n) => format!("{}affinity/{n}/", self.root),
        }
    }

    /// `affinity/<node>/<net>/<pool>/<start>`.
    pub fn affinity(&self, node: &str, net: &str, pool: &str, start: IpAddr) -> String {
        format!("{}affinity/{node}/{net}/{pool}/{start}", self.root)
    }

    /// `borrowed/` or `borrowed/<node>/`.
    pub fn borrowings(&self, node: Option<&str>) -> String {
        match node {
            None => format!("{}borrowed/", self.root),
            Some(n) => format!("{}borrowed/{n}/", self.root),
        }
    }

    /// `borrowed/<node>/<net>/<pool>/<start>`.
    pub fn borrowed(&self, node: &str, net: &str, pool: &str, start: IpAddr) -> String {
        format!("{}borrowed/{node}/{net}/{pool}/{start}", self.root)
    }

    /// Splits an `affinity/` or `borrowed/` key into (node, net, pool, start).
    pub fn parse_index(&self, key: &[u8]) -> Option<(String, String, String, IpAddr)> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix(&self.root)?;
        let rest = key
            .strip_prefix("affinity/")
            .or_else(|| key.strip_prefix("borrowed/"))?;
        let mut it = rest.splitn(4, '/');
        let (node, net, pool, start) = (it.next()?, it.next()?, it.next()?, it.next()?);
        Some((node.into(), net.into(), pool.into(), start.parse().ok()?))
    }

    /// The last component of a key (a node's name under `nodes/`).
    pub fn last(key: &[u8]) -> String {
        let s = String::from_utf8_lossy(key);
        s.rsplit('/').next().unwrap_or_default().to_string()
    }

    /// Splits a `pools/` key into (net, pool).
    pub fn parse_pool(&self, key: &[u8]) -> Option<(String, String)> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix(&self.root)?;
        let (net, pool) = key.strip_prefix("pools/")?.split_once('/')?;
        Some((net.into(), pool.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_round_trip() {
        let k = Keys::new("/trestle/");
        let ip: IpAddr = "10.1.0.64".parse().unwrap();
        let a = k.affinity("node-1", "net", "10.1.0.0_16", ip);
        assert_eq!(a, "/trestle/v1/affinity/node-1/net/10.1.0.0_16/10.1.0.64");
        assert_eq!(
            k.parse_index(a.as_bytes()),
            Some(("node-1".into(), "net".into(), "10.1.0.0_16".into(), ip))
        );
        let b = k.borrowed("n", "net", "fd00::_64", "fd00::40".parse().unwrap());
        assert_eq!(
            k.parse_index(b.as_bytes()).unwrap().3,
            "fd00::40".parse::<IpAddr>().unwrap()
        );
        assert!(k.parse_index(b"/other/v1/affinity/a/b/c/1.2.3.4").is_none());
        assert!(k.parse_index(k.node("n").as_bytes()).is_none());
    }

    #[test]
    fn every_node_key_is_under_nodes() {
        let k = Keys::new("/p");
        assert!(k.node("a").starts_with(&k.nodes()));
        assert_eq!(Keys::last(k.node("a").as_bytes()), "a");
        assert!(k
            .affinity("a", "n", "p", "1.1.1.1".parse().unwrap())
            .starts_with(&k.affinities(Some("a"))));
        assert_eq!(
            k.parse_pool(k.pool("net", "10.0.0.0_8").as_bytes()),
            Some(("net".into(), "10.0.0.0_8".into()))
        );
    }
}
