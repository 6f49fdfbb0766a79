//! `trestlectl ipam show --etcd` and `ipam release-node`: the cluster store, read and repaired in etcd directly.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use trestle_ipam_etcd::{admin, Etcd, EtcdConfig, TlsFiles};

use super::render::{age, now_ms};
use super::{to_json, Error};
use crate::table::table;

/// Where the cluster's records are.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (as trestled's --etcd-endpoints).
    #[arg(long = "etcd", value_name = "ENDPOINTS")]
    pub endpoints: Option<String>,
    /// The key prefix (as trestled's --etcd-prefix).
    #[arg(long, default_value = "/trestle")]
    pub etcd_prefix: String,
    /// CA certificate of etcd's servers (TLS).
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

pub(crate) fn with_etcd<T>(
    args: &EtcdArgs,
    f: impl AsyncFnOnce(Etcd, String) -> Result<T, String>,
) -> Result<T, Error> {
    let endpoints = args
        .endpoints
        .as_deref()
        .unwrap_or("127.0.0.1:2379")
        .split(',')
        .map(str::to_string)
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Cluster(format!("runtime: {e}")))?;
    rt.block_on(async {
        let etcd = Etcd::new(&EtcdConfig {
            endpoints,
            tls: TlsFiles::from_flags(
                args.etcd_ca.as_ref(),
                args.etcd_cert.as_ref(),
                args.etcd_key.as_ref(),
            ),
            timeout: Duration::from_secs(5),
        })
        .map_err(|e| e.to_string())?;
        f(etcd, args.etcd_prefix.clone()).await
    })
    .map_err(Error::Cluster)
}

/// The cluster view, as a table or JSON.
pub fn show(args: &EtcdArgs, json: bool) -> Result<String, Error> {
    let v = with_etcd(args, async |etcd, prefix| {
        admin::view(&etcd, &prefix).await.map_err(|e| e.to_string())
    })?;
    if json {
        return Ok(to_json(&v));
    }
    Ok(render(&v, now_ms()))
}

fn render(v: &admin::ClusterView, now: i64) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = v
        .pools
        .iter()
        .map(|p| {
            vec![
                p.network.clone(),
                p.pool.subnet.to_string(),
                format!("/{}", p.pool.block_prefix),
                format!("{}/{}", p.blocks_claimed, p.blocks_total),
                p.held.to_string(),
                p.usable_claimed.to_string(),
                percent(p.held, p.usable_claimed),
                p.borrowed.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NETWORK",
            "POOL",
            "BLOCK",
            "BLOCKS",
            "HELD",
            "IN BLOCKS",
            "USE",
            "BORROWED",
        ],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = v
        .nodes
        .iter()
        .map(|n| {
            let lease = if n.alive {
                "alive".to_string()
            } else {
                match n.expired_since_ms {
                    Some(ms) => format!("expired {} ago", age(Some(ms), now)),
                    None => "expired".to_string(),
                }
            };
            vec![
                n.name.clone(),
                lease,
                n.blocks.to_string(),
                n.held.to_string(),
                n.borrowed.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NODE", "LEASE", "BLOCKS", "HELD", "BORROWED"],
        &rows,
    ));
    out.push_str(
        "\nHELD: addresses a node may hand out without asking etcd (in use, or reserved for its next ADDs); USE: HELD of the usable addresses in claimed blocks. \
         A node's own view: trestlectl ipam show on that node.\n",
    );
    out
}

/// `part` of `whole` as a whole percentage ("-" of nothing).
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{}%", part * 100 / whole)
}

/// Releases a dead node, after confirmation (unless `yes`).
pub fn release_node(args: &EtcdArgs, node: &str, yes: bool, json: bool) -> Result<String, Error> {
    if !yes {
        confirm(node)?;
    }
    let node = node.to_string();
    let r = with_etcd(args, async move |etcd, prefix| {
        admin::release_node(&etcd, &prefix, &node)
            .await
            .map_err(|e| e.to_string())
    })?;
    if json {
        return Ok(to_json(&r));
    }
    Ok(format!(
        "released {} block(s) and {} address(es){}\n",
        r.blocks,
        r.addresses,
        if r.host_record {
            "; its host record is gone, so no node routes to it any more"
        } else {
            ""
        }
    ))
}

fn confirm(node: &str) -> Result<(), Error> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Cluster(format!(
            "refusing without confirmation: pass --yes if node {node} and its pods are gone"
        )));
    }
    eprint!(
        "Every address node {node} holds will be handed out again. Its pods must be gone.\nType the node's name to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::Cluster(format!("reading the confirmation: {e}")))?;
    if line.trim() != node {
        return Err(Error::Cluster("not confirmed".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_is_a_whole_percentage_of_the_claimed_addresses() {
        assert_eq!(percent(31, 62), "50%");
        assert_eq!(percent(1, 3), "33%");
        assert_eq!(percent(0, 0), "-");
    }
}
