//! The followers: each one `trestle_routes::follow::follow` (the code trestled runs) over an etcd client of its
//! own, and a task noting when each state it publishes arrives; and what those notes say about the claims.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use trestle_ipam_etcd::{Etcd, EtcdConfig, Keys};
use trestle_routes::cluster::Cluster;
use trestle_routes::follow::follow;
use trestle_routes::FollowStats;

/// When each state was published: (its etcd revision, when the follower's reader woke to it).
pub type Published = Arc<Mutex<Vec<(i64, Instant)>>>;

/// One simulated node's follower.
pub struct Follower {
    /// The member its client tries first.
    pub member: usize,
    /// What it publishes (the latest state).
    pub cluster: watch::Receiver<Option<Arc<Cluster>>>,
    /// Its counters (reads, watches, failures).
    pub stats: Arc<FollowStats>,
    /// Every state it published, in order.
    pub published: Published,
}

/// Starts `n` followers of `prefix` in `rt`, follower `i` on a client of its own that tries member `i % 3` first
/// (as nodes configured with the members in different orders would), with a `timeout` per request.
pub fn start(
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    n: usize,
    prefix: &str,
    timeout: Duration,
) -> Result<Vec<Follower>, String> {
    // The clients' channels are made inside the runtime.
    let _g = rt.enter();
    (0..n)
        .map(|i| {
            let member = i % endpoints.len();
            let etcd = Etcd::new(&EtcdConfig {
                endpoints: rotated(endpoints, member),
                tls: None,
                timeout,
            })
            .map_err(|e| e.to_string())?;
            let (tx, rx) = watch::channel(None);
            let stats = Arc::new(FollowStats::default());
            rt.spawn(follow(etcd, Keys::new(prefix), tx, stats.clone()));
            let published = Published::default();
            rt.spawn(note(rx.clone(), published.clone()));
            Ok(Follower {
                member,
                cluster: rx,
                stats,
                published,
            })
        })
        .collect()
}

/// `endpoints` starting at the `first`th.
fn rotated(endpoints: &[String], first: usize) -> Vec<String> {
    let mut v = endpoints.to_vec();
    v.rotate_left(first % endpoints.len().max(1));
    v
}

/// Notes each published state's revision and when it was seen, as trestled's router wakes to it.
async fn note(mut rx: watch::Receiver<Option<Arc<Cluster>>>, published: Published) {
    while rx.changed().await.is_ok() {
        let at = Instant::now();
        let revision = rx.borrow_and_update().as_ref().map(|c| c.revision);
        if let Some(r) = revision {
            published
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((r, at));
        }
    }
}

/// One block claim the bench committed.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The revision it was committed at.
    pub revision: i64,
    /// When the writer sent it.
    pub sent: Instant,
    /// When the writer had etcd's answer.
    pub at: Instant,
    /// Whether an etcd member was down when it was made.
    pub outage: bool,
    /// The block's first address.
    pub start: IpAddr,
    /// The node that claimed it.
    pub owner: String,
}

/// The claims' arrival times at the followers.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// From etcd's answer to each claim to each follower's state holding it (claims x followers).
    pub all: Vec<Duration>,
    /// The same from the claim's sending (its commit, raft round and fsync, included).
    pub from_send: Vec<Duration>,
    /// The same, claims made while a member was down.
    pub outage: Vec<Duration>,
    /// (claim, follower) pairs that never arrived.
    pub missed: usize,
    /// Per claim, its slowest arrival: whether lateness grows over the run (a backlog) or not.
    pub claim_worst: Vec<Duration>,
    /// Per follower, its slowest arrival: whether a few followers lag or all do.
    pub follower_worst: Vec<Duration>,
}

/// When `claims` reached each follower (given what each published): the first state at or after a claim's
/// revision holds it. A follower that saw it before the writer had etcd's answer counts 0 (etcd notifies its
/// watchers and answers the writer once it has applied the claim, so either may come first).
pub fn arrivals(claims: &[Claim], published: &[Vec<(i64, Instant)>]) -> Arrivals {
    let mut a = Arrivals {
        follower_worst: vec![Duration::ZERO; published.len()],
        ..Arrivals::default()
    };
    for c in claims {
        let mut worst = Duration::ZERO;
        for (i, p) in published.iter().enumerate() {
            match p.iter().find(|(r, _)| *r >= c.revision) {
                Some((_, at)) => {
                    let d = at.saturating_duration_since(c.at);
                    worst = worst.max(d);
                    a.follower_worst[i] = a.follower_worst[i].max(d);
                    a.all.push(d);
                    a.from_send.push(at.saturating_duration_since(c.sent));
                    if c.outage {
                        a.outage.push(d);
                    }
                }
                None => a.missed += 1,
            }
        }
        a.claim_worst.push(worst);
    }
    a
}

/// The claims a follower's latest state does not hold as blocks of their owners (a revision passed is not
/// enough: the block must be there and readable).
pub fn absent(cluster: Option<&Cluster>, claims: &[Claim]) -> usize {
    let Some(c) = cluster else {
        return claims.len();
    };
    claims
        .iter()
        .filter(|claim| {
            !c.blocks
                .iter()
                .any(|b| b.net.addr() == claim.start && b.block.owner == claim.owner)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::simulated;
    use trestle_routes::cluster::Mirror;

    fn claim(revision: i64, at: Instant, outage: bool) -> Claim {
        Claim {
            revision,
            sent: at - Duration::from_millis(5),
            at,
            outage,
            start: "10.244.0.8".parse().unwrap(),
            owner: "sim-1".into(),
        }
    }

    #[test]
    fn a_claim_arrives_with_the_first_state_at_its_revision() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let claims = [claim(10, t, false), claim(12, t + ms(100), true)];
        let published = vec![
            // Skipped revision 10: a state at 11 holds it too.
            vec![(5, t - ms(1)), (11, t + ms(30)), (12, t + ms(150))],
            // Saw 10 before the writer had the answer: 0.
            vec![(10, t - ms(2)), (13, t + ms(400))],
            // Stuck before both.
            vec![(9, t)],
        ];
        let a = arrivals(&claims, &published);
        assert_eq!(a.all, vec![ms(30), ms(0), ms(50), ms(300)]);
        assert_eq!(a.outage, vec![ms(50), ms(300)]);
        assert_eq!(a.from_send, vec![ms(35), ms(3), ms(55), ms(305)]);
        assert_eq!(a.missed, 2);
        assert_eq!(a.claim_worst, vec![ms(30), ms(300)]);
        assert_eq!(a.follower_worst, vec![ms(50), ms(300), ms(0)]);
    }

    #[test]
    fn endpoints_are_spread_over_the_members() {
        let e: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(rotated(&e, 0), e);
        assert_eq!(rotated(&e, 2), ["c", "a", "b"]);
        assert_eq!(rotated(&e, 4), ["b", "c", "a"]);
        assert!(rotated(&[], 1).is_empty());
    }

    #[test]
    fn a_claim_is_held_only_as_its_owners_readable_block() {
        let pool = simulated::pool().unwrap();
        let keys = Keys::new("/p");
        let mut kvs: Vec<(String, Vec<u8>)> = vec![(
            format!("pools/{}/{}", simulated::NETWORK, pool.id()),
            serde_json::to_vec(&pool).unwrap(),
        )];
        let start: IpAddr = "10.244.0.8".parse().unwrap();
        let key = keys.block(simulated::NETWORK, &pool.id(), start);
        let rel = keys.relative(key.as_bytes()).unwrap().to_string();
        kvs.push((rel, simulated::block(&pool, "sim-1")));
        let c = Mirror::new(kvs, 3).cluster();
        let t = Instant::now();
        assert_eq!(absent(Some(&c), &[claim(3, t, false)]), 0);
        let other = Claim {
            owner: "sim-2".into(),
            ..claim(3, t, false)
        };
        assert_eq!(absent(Some(&c), &[claim(3, t, false), other.clone()]), 1);
        assert_eq!(absent(None, &[other]), 1);
    }
}
