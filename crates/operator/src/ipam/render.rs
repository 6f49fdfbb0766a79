//! Text output: tables readable at a glance.

use super::*;
use crate::table::table;

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// A container ID cut to 12 characters, as `docker ps` shows it.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

/// The age of something made at `since_ms`, kubectl style: `42s`, `5m`, `2h` (up to two days), `3d`; `-` when
/// unknown. A time in the future (the clock was stepped back) shows as `0s`.
pub fn age(since_ms: Option<i64>, now_ms: i64) -> String {
    let Some(since) = since_ms.filter(|t| *t > 0) else {
        return "-".into();
    };
    let s = now_ms.saturating_sub(since).max(0) / 1000;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `namespace/name`, the name alone outside a namespace, or `-`.
pub(super) fn pod_text(pod: Option<&Pod>) -> String {
    match pod {
        Some(p) if !p.namespace.is_empty() && !p.name.is_empty() => {
            format!("{}/{}", p.namespace, p.name)
        }
        Some(p) if !p.name.is_empty() => p.name.clone(),
        _ => "-".into(),
    }
}

pub(super) fn dash_if_empty(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

pub(super) fn count_text(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

/// `show`'s text: where it looked, the pools, then the allocations, with ages relative to `now_ms`.
pub fn render_listing(l: &Listing, now_ms: i64) -> String {
    let mut out = match (l.source.kind, &l.source.server) {
        (SourceKind::Daemon, Some(s)) => format!("trestled at {} ({s})\n\n", l.source.path),
        (SourceKind::Daemon, None) => format!("trestled at {}\n\n", l.source.path),
        (SourceKind::DataDir, _) => format!("dataDir {}\n\n", l.source.path),
    };
    for w in &l.source.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if !l.source.warnings.is_empty() {
        out.push('\n');
    }
    if l.pools.is_empty() {
        out.push_str("no networks\n");
        return out;
    }
    out.push_str(&pools_table(&l.pools));
    for p in &l.pools {
        if let Some(socket) = &p.handed_over_to {
            out.push_str(&format!(
                "note: {} was handed over to trestled at {socket}; these files may be stale (--socket {socket})\n",
                p.network
            ));
        }
    }
    out.push('\n');
    if l.allocations.is_empty() {
        out.push_str("no allocations\n");
    } else {
        out.push_str(&allocations_table(&l.allocations, now_ms));
    }
    out
}

pub(super) fn pools_table(pools: &[Pool]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.network.clone(),
                dash_if_empty(&p.range_sets.join(" ")),
                p.used.to_string(),
                count_text(p.free),
                count_text(p.cooling),
            ]
        })
        .collect();
    table(&["NETWORK", "RANGES", "USED", "FREE", "COOLING"], &rows)
}

pub(super) fn allocations_table(allocations: &[Allocation], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = allocations
        .iter()
        .map(|a| {
            vec![
                a.network.clone(),
                a.address.clone(),
                short_id(&a.container_id).to_owned(),
                dash_if_empty(&a.ifname),
                pod_text(a.pod.as_ref()),
                age(a.since_unix_ms, now_ms),
            ]
        })
        .collect();
    table(
        &["NETWORK", "ADDRESS", "CONTAINER", "IFNAME", "POD", "SINCE"],
        &rows,
    )
}

/// `release`'s and `gc`'s text: one line per freed address (full container IDs: this is a record of a change).
pub fn render_released(network: &str, released: &[Released]) -> String {
    if released.is_empty() {
        return format!("nothing released in network {network}\n");
    }
    released
        .iter()
        .map(|r| {
            format!(
                "released {} of {}/{} in network {}\n",
                r.address,
                r.container_id,
                dash_if_empty(&r.ifname),
                r.network
            )
        })
        .collect()
}
