//! The allocation loop of an ADD, the one trestled, the cluster bench and the tests run: pick from
//! the node's holdings, and while there is nothing to pick, grow them and pick again.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::time::Instant;
use trestle_ipam_core::Range;

use super::{ClusterError, Node};
use crate::kv::Store;

/// What one attempt of [`Node::allocate`] found.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Allocated; the ranges where the node's holdings now run low, grown ahead in the
    /// background so the next ADDs find addresses without waiting for etcd.
    Done(T, Vec<Range>),
    /// Nothing free the node holds in these ranges (or not `Some(ip)`, a requested address):
    /// grow, then try again.
    Grow(Vec<Range>, Option<IpAddr>),
}

/// Why [`Node::allocate`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError<E> {
    /// The attempt itself failed.
    #[error("{0}")]
    Attempt(E),
    /// Growing failed: every range exhausted, or any other error at once.
    #[error(transparent)]
    Grow(ClusterError),
    /// The deadline passed while growing.
    #[error("no answer from etcd in time")]
    Late,
}

impl<K: Store + Send + Sync + 'static> Node<K> {
    /// Allocates in `network`: `attempt` picks from the holdings (under the caller's own lock,
    /// and with the caller's commit), and while it finds nothing, the holdings grow (in the
    /// first of its ranges that can) and it tries again, until it allocates, growth fails or
    /// `deadline` passes while growing. An attempt after another ADD grew the holdings in the
    /// meantime tries again without growing (see [`Node::grow`]).
    ///
    /// `attempt` is a closure that returns a future rather than an async closure: the future of
    /// an async closure cannot yet be proved `Send` for every borrow, which a server's needs.
    pub async fn allocate<T, E, F, Fut>(
        self: &Arc<Self>,
        network: &str,
        deadline: Option<Instant>,
        mut attempt: F,
    ) -> Result<T, AllocationError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Attempt<T>, E>>,
    {
        loop {
            // Before the attempt: a growth that lands between the attempt and ours is seen.
            let seen = self.generation();
            let (ranges, want) = match attempt().await.map_err(AllocationError::Attempt)? {
                Attempt::Done(done, low) => {
                    self.grow_ahead_in_background(network, low);
                    return Ok(done);
                }
                Attempt::Grow(ranges, want) => (ranges, want),
            };
            let grown = self.grow_any(network, &ranges, want, seen);
            let grown = match deadline {
                Some(d) => tokio::time::timeout_at(d, grown)
                    .await
                    .map_err(|_| AllocationError::Late)?,
                None => grown.await,
            };
            grown.map_err(AllocationError::Grow)?;
        }
    }

    /// Grows the first of `ranges` that can give an address; `Exhausted` when none can.
    async fn grow_any(
        &self,
        network: &str,
        ranges: &[Range],
        want: Option<IpAddr>,
        seen: u64,
    ) -> Result<(), ClusterError> {
        let mut last = None;
        for r in ranges {
            match self.grow(network, r, want, seen).await {
                Ok(()) => return Ok(()),
                Err(e @ ClusterError::Exhausted(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClusterError::Exhausted(network.to_string())))
    }

    fn grow_ahead_in_background(self: &Arc<Self>, network: &str, low: Vec<Range>) {
        if low.is_empty() {
            return;
        }
        let (node, network) = (self.clone(), network.to_string());
        tokio::spawn(async move {
            for r in low {
                node.grow_ahead(&network, &r).await;
            }
        });
    }
}
