//! The node's lease: registration (taking over this instance's earlier one), the keep-alive
//! loop, the deadline until which the lease is certainly valid, and starting over (with
//! fencing) after a lease loss.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use trestle_ipam_core::{boottime_ns, unix_ms};

use super::{ClusterError, Node, Registration};
use crate::client::{EtcdError, Txn};
use crate::kv::Store;

impl<K: Store> Node<K> {
    /// True while the lease is certainly valid and the holdings are fenced.
    pub fn lease_valid(&self) -> bool {
        boottime_ns() < self.lease_deadline()
    }

    /// CLOCK_BOOTTIME (ns) until which the lease is certainly valid; 0: it is not.
    pub fn lease_deadline(&self) -> u64 {
        self.deadline_ns.load(Ordering::Acquire)
    }

    /// Runs the node: registers, fences, keeps the lease alive, and starts over after losing it.
    pub async fn run(self: Arc<Self>) {
        loop {
            let lease = match self.register().await {
                Ok(l) => l,
                Err(e) => {
                    log::warn!("cannot register node {} in etcd: {e}", self.s.name);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            self.keep_alive(lease).await;
            self.deadline_ns.store(0, Ordering::Release);
            self.stats.fencings.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "node {}'s lease {lease:x} is gone: re-registering and re-validating blocks",
                self.s.name
            );
        }
    }

    /// Counts on the lease until `ttl_s` (as etcd granted it, which may differ from the TTL
    /// asked for) after `sent`, the send time of the request that renewed it, less a margin:
    /// clock rates differ a little between this node and etcd's leader, the more so the longer
    /// the TTL.
    fn valid_until(&self, sent: u64, ttl_s: i64) {
        let ttl = ttl_s.max(0) as u64 * 1_000_000_000;
        let margin = (ttl / 10).max(500_000_000);
        let until = (sent + ttl).saturating_sub(margin);
        self.deadline_ns.store(until, Ordering::Release);
    }

    /// Registers (taking over this instance's earlier registration), then fences; the lease
    /// is valid from here on.
    async fn register(&self) -> Result<i64, ClusterError> {
        let key = self.keys.node(&self.s.name);
        loop {
            let sent = boottime_ns();
            let (lease, ttl) = self
                .etcd
                .grant(self.s.lease_ttl.as_secs().max(1) as i64)
                .await?;
            let value = serde_json::to_vec(&Registration {
                instance: self.s.instance.clone(),
                lease,
                since_ms: unix_ms(),
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .expect("plain data");
            let expired = self.keys.expired(&self.s.name);
            let out = self
                .etcd
                .txn(
                    Txn::new()
                        .if_absent(&key)
                        .put(&key, value.clone(), lease)
                        .delete(&expired)
                        .or_get(&key),
                )
                .await?;
            let registered = if out.succeeded {
                self.registration.store(out.revision, Ordering::Release);
                true
            } else {
                let cur = out.read(0).pop();
                let theirs = cur
                    .as_ref()
                    .and_then(|kv| serde_json::from_slice::<Registration>(&kv.value).ok());
                match (cur, theirs) {
                    (Some(kv), Some(r)) if r.instance == self.s.instance || r.lease == lease => {
                        let o = self
                            .etcd
                            .txn(
                                Txn::new()
                                    .if_mod(&key, kv.mod_revision)
                                    .put(&key, value, lease)
                                    .delete(&expired),
                            )
                            .await?;
                        if o.succeeded {
                            self.registration.store(o.revision, Ordering::Release);
                        }
                        if o.succeeded && r.lease != lease {
                            self.etcd.revoke(r.lease).await.ok();
                        }
                        o.succeeded
                    }
                    _ => {
                        log::warn!(
                            "node name {} is registered by another instance; waiting for its lease to lapse",
                            self.s.name
                        );
                        false
                    }
                }
            };
            if !registered {
                self.etcd.revoke(lease).await.ok();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.fence().await?;
            // Fencing may have taken a while: renew before counting on the lease.
            let (sent, ttl) = {
                let again = boottime_ns();
                match self.etcd.keepalive(lease).await {
                    Ok(t) if t > 0 => (again, t),
                    // Gone already (and the registration with it): start over.
                    Ok(_) | Err(EtcdError::LeaseNotFound) => continue,
                    // Unanswered: the grant still counts from when it was sent.
                    Err(_) => (sent, ttl),
                }
            };
            self.valid_until(sent, ttl);
            log::info!(
                "node {} registered in etcd (lease {lease:x}, TTL {ttl} s)",
                self.s.name
            );
            return Ok(lease);
        }
    }

    /// Keeps `lease` alive until etcd says it is gone.
    async fn keep_alive(&self, lease: i64) {
        let every = (self.s.lease_ttl / 3).max(Duration::from_millis(300));
        let mut failing = false;
        loop {
            tokio::time::sleep(if failing {
                Duration::from_millis(200)
            } else {
                every
            })
            .await;
            let sent = boottime_ns();
            match self.etcd.keepalive(lease).await {
                Ok(ttl) if ttl > 0 => {
                    self.valid_until(sent, ttl);
                    if failing {
                        log::info!("etcd reachable again; lease {lease:x} renewed");
                    }
                    failing = false;
                }
                // etcd answers a keep-alive of a lease it no longer has with a TTL of 0; a
                // LeaseNotFound (from anything between) says the same.
                Ok(_) | Err(EtcdError::LeaseNotFound) => return,
                Err(e) => {
                    if !failing {
                        log::warn!("cannot renew lease {lease:x}: {e}");
                    }
                    failing = true;
                }
            }
        }
    }
}
