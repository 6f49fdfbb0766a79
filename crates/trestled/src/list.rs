//! List, in pages: the state lock is held for one chunk of allocations at a time, never for
//! the whole table, so a large List cannot hold up Allocate. A client that asks for a page
//! size gets that many (at most [`MAX_PAGE`]) and a token for the next page; one that does not
//! (API minor 0) gets everything, still gathered chunk by chunk.

use std::net::IpAddr;
use std::ops::Bound;

use trestle_ipam_api::convert::attachment_to_proto;
use trestle_ipam_api::v1;

use crate::daemon::Daemon;
use crate::state::Record;

/// The most allocations a page holds, and a chunk the lock is held for.
pub const MAX_PAGE: usize = 1000;

/// Where a page starts: after this (network, address).
pub type Cursor = Option<(String, IpAddr)>;

/// A page token that is not one this daemon made.
#[derive(Debug, thiserror::Error)]
#[error("invalid page token")]
pub struct BadToken;

/// The cursor a token stands for ("" for the first page).
pub fn parse_token(token: &str) -> Result<Cursor, BadToken> {
    if token.is_empty() {
        return Ok(None);
    }
    let (network, ip) = token.rsplit_once('/').ok_or(BadToken)?;
    let ip = ip.parse().map_err(|_| BadToken)?;
    Ok(Some((network.to_string(), ip)))
}

fn token(network: &str, ip: IpAddr) -> String {
    format!("{network}/{ip}")
}

/// One page (or everything, for `page_size` 0) of `network`'s allocations ("" for all
/// networks), starting after `after`. The pools come with the first page.
pub fn list(daemon: &Daemon, network: &str, after: Cursor, page_size: u32) -> v1::ListReply {
    let paged = page_size > 0;
    let want = if paged {
        (page_size as usize).min(MAX_PAGE)
    } else {
        usize::MAX
    };
    let mut reply = v1::ListReply {
        server: Some(trestle_ipam_api::version::peer("trestled")),
        ..Default::default()
    };
    if after.is_none() {
        reply.pools = pools(daemon, network);
    }
    let mut cursor = after;
    loop {
        let room = (want - reply.allocations.len()).min(MAX_PAGE);
        let (chunk, last, more) = chunk(daemon, network, &cursor, room);
        if last.is_some() {
            cursor = last;
        }
        reply.allocations.extend(chunk);
        if !more {
            return reply;
        }
        if reply.allocations.len() >= want {
            if let Some((n, ip)) = &cursor {
                reply.next_page_token = token(n, *ip);
            }
            return reply;
        }
    }
}

fn pools(daemon: &Daemon, network: &str) -> Vec<v1::Pool> {
    let st = daemon.lock();
    st.pools
        .iter()
        .filter(|(n, _)| network.is_empty() || *n == network)
        .map(|(name, pool)| v1::Pool {
            network: name.clone(),
            range_sets: pool.range_sets.clone(),
            used: pool.by_ip.len() as u64,
            free: u64::try_from(pool.free()).unwrap_or(u64::MAX),
            cooling: pool.cooling.len() as u64,
        })
        .collect()
}

/// Up to `room` allocations after `cursor`, under the lock once; the last one's cursor, and
/// true if more follow.
fn chunk(
    daemon: &Daemon,
    network: &str,
    cursor: &Cursor,
    room: usize,
) -> (Vec<v1::Allocation>, Cursor, bool) {
    let st = daemon.lock();
    let mut out = Vec::new();
    let mut last = None;
    let start = cursor.as_ref().map(|(n, _)| n.as_str()).unwrap_or("");
    for (name, pool) in st
        .pools
        .range::<str, _>((Bound::Included(start), Bound::Unbounded))
    {
        if !network.is_empty() && name != network {
            continue;
        }
        let from = match cursor {
            Some((n, ip)) if n == name => Bound::Excluded(*ip),
            _ => Bound::Unbounded,
        };
        for (ip, r) in pool.by_ip.range((from, Bound::Unbounded)) {
            if out.len() == room {
                return (out, last, true);
            }
            out.push(allocation(name, *ip, r));
            last = Some((name.clone(), *ip));
        }
    }
    (out, last, false)
}

/// An allocation as List shows it.
pub fn allocation(network: &str, ip: IpAddr, r: &Record) -> v1::Allocation {
    v1::Allocation {
        network: network.to_string(),
        address: ip.to_string(),
        attachment: Some(attachment_to_proto(&r.attachment())),
        pod: Some(v1::Pod {
            namespace: r.pod_namespace.clone(),
            name: r.pod_name.clone(),
            uid: r.pod_uid.clone(),
        }),
        netns: r.netns.clone(),
        netns_inode: r.netns_inode,
        since_unix_ms: r.since_unix_ms,
        set_index: r.set_index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let ip: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            parse_token(&token("net-1", ip)).unwrap(),
            Some(("net-1".to_string(), ip))
        );
        assert_eq!(parse_token("").unwrap(), None);
        assert!(parse_token("no-slash").is_err());
        assert!(parse_token("n/not-an-ip").is_err());
    }
}
