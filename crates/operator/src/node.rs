//! `trestlectl node list` and `node remove`: the cluster's nodes as routing sees them, read from etcd directly.

use std::net::SocketAddr;

use serde::Serialize;
use trestle_ipam_etcd::kv::Kv as _;
use trestle_ipam_etcd::Keys;
use trestle_routes::cluster::{Cluster, Mirror};
use trestle_routes::plan::Me;
use trestle_routes::{Mode, Plan};

use crate::ipam::cluster::{release_node, with_etcd, EtcdArgs};
use crate::ipam::Error;
use crate::table::table;

/// `trestlectl node ...`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Every node: its underlay addresses, VTEP MAC, the MTU of a path over VXLAN to it, how the `--from` node
    /// reaches it (direct, vxlan, or why it cannot), the blocks routed to it, and whether its lease is alive.
    List {
        /// The node whose view to show (default: this machine's hostname, as trestled's --node-name).
        #[arg(long)]
        from: Option<String>,
        /// The `--from` node's trestled --routing.
        #[arg(long, default_value = "auto", value_parser = ["auto", "direct", "vxlan"])]
        routing: String,
        /// The `--from` node's trestled --metrics-addr: adds which etcd revision its kernel was last brought to.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Remove a node for good: release everything it holds (as `ipam release-node`) and delete its host record,
    /// so no node routes to it any more. Refused while its lease is alive; asks for confirmation.
    Remove {
        /// The node's name.
        node: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// Print what was released as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

impl Command {
    /// The subcommand's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::List { .. } => "list",
            Command::Remove { .. } => "remove",
        }
    }
}

/// One row of `node list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// The node.
    pub name: String,
    /// Its lease is alive.
    pub alive: bool,
    /// Its underlay addresses, with their interfaces.
    pub underlay: Vec<String>,
    /// Its VTEP MAC.
    pub vtep_mac: Option<String>,
    /// The MTU of a path over VXLAN to it.
    pub vxlan_mtu: Option<u32>,
    /// How the viewing node reaches it: `self`, `direct`, `vxlan`, or why it cannot.
    pub path: String,
    /// Blocks it owns.
    pub blocks: Vec<String>,
}

/// Runs one `node` command.
pub fn run(cmd: &Command, out: &mut dyn std::io::Write) -> Result<(), Error> {
    let text = match cmd {
        Command::Remove {
            node,
            yes,
            json,
            etcd,
        } => release_node(etcd, node, *yes, *json)?,
        Command::List {
            from,
            routing,
            metrics,
            json,
            etcd,
        } => {
            let from = from.clone().unwrap_or_else(hostname);
            let mode: Mode = routing.parse().map_err(Error::Cluster)?;
            let (cluster, alive) = read(etcd)?;
            let rows = rows(&cluster, &alive, &from, mode);
            if *json {
                let mut s = serde_json::to_string_pretty(&rows).unwrap_or_default();
                s.push('\n');
                s
            } else {
                render(&rows, &from, &cluster, metrics.map(synced))
            }
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The cluster at one revision, and the nodes whose lease is alive.
fn read(args: &EtcdArgs) -> Result<(Cluster, Vec<String>), Error> {
    with_etcd(args, async move |etcd, prefix: String| {
        let keys = Keys::new(&prefix);
        let (kvs, rev) = etcd.list_at(keys.root()).await.map_err(|e| e.to_string())?;
        let rel = kvs.into_iter().filter_map(|kv| {
            let k = keys.relative(&kv.key)?.to_string();
            Some((k, kv.value))
        });
        let mirror = Mirror::new(rel, rev);
        let alive = mirror.keys_under("nodes/").map(|n| n.to_string()).collect();
        Ok((mirror.cluster(), alive))
    })
}

/// The rows, one per node with a host record or a block.
pub fn rows(cluster: &Cluster, alive: &[String], from: &str, mode: Mode) -> Vec<NodeRow> {
    let plan = cluster.hosts.get(from).map(|h| {
        Plan::new(
            &Me {
                name: from,
                host: h,
                mode,
            },
            cluster,
        )
    });
    let mut names: Vec<&String> = cluster.hosts.keys().collect();
    names.extend(cluster.blocks.iter().map(|b| &b.block.owner));
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let host = cluster.hosts.get(name);
            let blocks: Vec<String> = cluster
                .blocks
                .iter()
                .filter(|b| &b.block.owner == name)
                .map(|b| b.net.to_string())
                .collect();
            NodeRow {
                name: name.clone(),
                alive: alive.contains(name),
                underlay: host
                    .into_iter()
                    .flat_map(|h| [h.v4.as_ref(), h.v6.as_ref()])
                    .flatten()
                    .map(|u| format!("{} ({})", u.address, u.interface))
                    .collect(),
                vtep_mac: host.map(|h| h.vtep_mac.clone()),
                vxlan_mtu: host.and_then(|h| h.vxlan_mtu()),
                path: path(plan.as_ref(), name, from, &blocks),
                blocks,
            }
        })
        .collect()
}

fn path(plan: Option<&Plan>, name: &str, from: &str, blocks: &[String]) -> String {
    if name == from {
        return "self".into();
    }
    let Some(plan) = plan else {
        return format!("? ({from} has no host record)");
    };
    if let Some(u) = plan.unreachable.iter().find(|u| u.node == name) {
        return format!("unreachable: {}", u.why);
    }
    match plan.peers.get(name) {
        Some(true) => "vxlan".into(),
        Some(false) => "direct".into(),
        None if blocks.is_empty() => "- (no blocks)".into(),
        None => "-".into(),
    }
}

/// "applied etcd revision X (Y seen)" from a trestled's metrics, or why not.
fn synced(addr: SocketAddr) -> String {
    let text = (|| {
        let mut c = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
        c.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        std::io::Write::write_all(&mut c, b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut c, &mut s).map(|_| s)
    })();
    let Ok(text) = text else {
        return format!("its metrics at {addr} cannot be read");
    };
    let get = |what: &str| {
        let series = format!("trestle_ipam_routes{{what=\"{what}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<i64>().ok())
    };
    match (get("revision_applied"), get("revision_seen")) {
        (Some(a), Some(s)) => format!("its kernel is at etcd revision {a} ({s} seen)"),
        _ => "its trestled does not route (no routing figures)".into(),
    }
}

fn render(rows: &[NodeRow], from: &str, cluster: &Cluster, synced: Option<String>) -> String {
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.alive { "alive" } else { "expired" }.into(),
                if r.underlay.is_empty() {
                    "-".into()
                } else {
                    r.underlay.join(", ")
                },
                r.vtep_mac.clone().unwrap_or_else(|| "-".into()),
                r.vxlan_mtu.map_or("-".into(), |m| m.to_string()),
                r.path.clone(),
                if r.blocks.is_empty() {
                    "-".into()
                } else {
                    r.blocks.join(" ")
                },
            ]
        })
        .collect();
    let mut out = format!(
        "Nodes at etcd revision {}, as {from} reaches them{}\n",
        cluster.revision,
        synced.map(|s| format!(" ({s})")).unwrap_or_default()
    );
    out.push_str(&table(
        &[
            "NODE",
            "LEASE",
            "UNDERLAY",
            "VTEP MAC",
            "VXLAN MTU",
            "PATH",
            "BLOCKS",
        ],
        &table_rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use trestle_routes::Underlay;

    fn host(addr: &str) -> trestle_routes::HostRecord {
        trestle_routes::HostRecord {
            v4: Some(Underlay {
                address: addr.parse().unwrap(),
                interface: "eth0".into(),
                mtu: 1500,
            }),
            v6: None,
            vtep_mac: "02:00:00:00:00:01".into(),
            vni: 4096,
            port: 4789,
            version: "t".into(),
        }
    }

    #[test]
    fn paths_as_the_viewing_node_sees_them() {
        let mut c = Cluster::default();
        c.hosts.insert("a".into(), host("192.168.1.10/24").into());
        c.hosts.insert("b".into(), host("192.168.1.11/24").into());
        c.hosts.insert("c".into(), host("192.168.2.10/24").into());
        let rows = rows(&c, &["a".to_string()], "a", Mode::Auto);
        let paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, vec!["self", "- (no blocks)", "- (no blocks)"]);
        assert!(rows[0].alive && !rows[1].alive);
        assert_eq!(rows[2].vxlan_mtu, Some(1450));
        assert_eq!(rows[2].underlay, vec!["192.168.2.10/24 (eth0)".to_string()]);
        let unknown = super::rows(&c, &[], "z", Mode::Auto);
        assert!(unknown[0].path.starts_with('?'));
        let text = render(&rows, "a", &c, None);
        assert!(
            text.contains("NODE") && text.contains("02:00:00:00:00:01"),
            "{text}"
        );
    }
}
