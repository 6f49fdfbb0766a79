//! Watching a prefix: the changes after a revision, in revision order, as etcd commits them.
//!
//! A watch is created on one member with `hasleader` set, so a member that loses its leader
//! cancels it instead of going silent (a partitioned member would otherwise keep the stream
//! open and send nothing). Whatever ends a stream, the caller starts again from the last
//! revision it applied; a start below etcd's compaction ends with [`WatchError::Compacted`],
//! and the caller reads the whole prefix again.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::client::{prefix_end, Etcd, EtcdError, KeyValue, Kind};
use crate::pb;

/// One change of a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The key was written: its new value and revisions.
    Put(KeyValue),
    /// The key was deleted at `revision`.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The revision of the deletion.
        revision: i64,
    },
}

impl Change {
    /// The revision this change was committed at.
    pub fn revision(&self) -> i64 {
        match self {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }

    /// The key changed.
    pub fn key(&self) -> &[u8] {
        match self {
            Change::Put(kv) => &kv.key,
            Change::Delete { key, .. } => key,
        }
    }
}

/// Why a watch ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The start revision is older than etcd keeps: read the prefix again.
    #[error("etcd compacted its history to revision {0}")]
    Compacted(i64),
    /// etcd cancelled the watch (its member lost the leader, say), or the stream broke.
    #[error("etcd watch ended: {0}")]
    Ended(String),
    /// The watch could not be created.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// The changes of one prefix, in revision order.
pub struct Watcher {
    stream: Pin<Box<dyn Stream<Item = Result<Vec<Change>, WatchError>> + Send>>,
}

impl Watcher {
    /// A watcher over any stream of batches (the fake store's, in tests).
    pub fn from_stream(
        stream: impl Stream<Item = Result<Vec<Change>, WatchError>> + Send + 'static,
    ) -> Watcher {
        Watcher {
            stream: Box::pin(stream),
        }
    }

    /// The next batch of changes (one etcd revision or more); an error ends the watch.
    pub async fn next(&mut self) -> Result<Vec<Change>, WatchError> {
        match self.stream.next().await {
            Some(r) => r,
            None => Err(WatchError::Ended("stream closed".into())),
        }
    }

    /// The next batch if one has already arrived, without waiting: a follower that fell behind
    /// applies everything that is queued before it acts on the result once.
    pub fn ready(&mut self) -> Option<Result<Vec<Change>, WatchError>> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.as_mut().poll_next(&mut cx) {
            std::task::Poll::Ready(Some(r)) => Some(r),
            std::task::Poll::Ready(None) => Some(Err(WatchError::Ended("stream closed".into()))),
            std::task::Poll::Pending => None,
        }
    }
}

impl Etcd {
    /// Watches every key under `prefix` from `start_revision` on (inclusive).
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watcher, WatchError> {
        let create = pb::WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            start_revision,
            progress_notify: true,
            ..Default::default()
        };
        let opened = self.call(Kind::Read, |ch| open(ch, create.clone())).await?;
        match opened {
            Opened::Stream(s) => Ok(Watcher::from_stream((*s).map(batch).filter_map(|b| b))),
            Opened::Compacted(rev) => Err(WatchError::Compacted(rev)),
        }
    }
}

enum Opened {
    Stream(Box<tonic::Streaming<pb::WatchResponse>>),
    Compacted(i64),
}

/// Creates the watch on one member and waits for etcd's confirmation.
async fn open(ch: Channel, create: pb::WatchCreateRequest) -> Result<Opened, Status> {
    let first = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    };
    // The request stream stays open (pending) for the life of the watch: closing it would end
    // the watch on etcd's side.
    let requests = tokio_stream::iter([first]).chain(tokio_stream::pending());
    let mut request = Request::new(requests);
    request
        .metadata_mut()
        .insert("hasleader", MetadataValue::from_static("true"));
    let mut stream = pb::watch_client::WatchClient::new(ch)
        .watch(request)
        .await?
        .into_inner();
    match stream.message().await? {
        Some(r) if r.compact_revision > 0 => Ok(Opened::Compacted(r.compact_revision)),
        Some(r) if r.created && !r.canceled => Ok(Opened::Stream(Box::new(stream))),
        Some(r) => Err(Status::unavailable(format!(
            "watch not created: {}",
            r.cancel_reason
        ))),
        None => Err(Status::unavailable("watch stream closed")),
    }
}

/// One response as a batch: `None` for progress notifications (no events, nothing to do).
fn batch(r: Result<pb::WatchResponse, Status>) -> Option<Result<Vec<Change>, WatchError>> {
    let r = match r {
        Ok(r) => r,
        Err(s) => return Some(Err(WatchError::Ended(s.message().to_string()))),
    };
    if r.compact_revision > 0 {
        return Some(Err(WatchError::Compacted(r.compact_revision)));
    }
    if r.canceled {
        return Some(Err(WatchError::Ended(r.cancel_reason)));
    }
    if r.events.is_empty() {
        return None;
    }
    Some(Ok(r.events.into_iter().filter_map(change).collect()))
}

fn change(e: pb::Event) -> Option<Change> {
    let kv = e.kv?;
    Some(match pb::event::EventType::try_from(e.r#type) {
        Ok(pb::event::EventType::Delete) => Change::Delete {
            revision: kv.mod_revision,
            key: kv.key,
        },
        _ => Change::Put(kv),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: pb::event::EventType, key: &str, rev: i64) -> pb::Event {
        pb::Event {
            r#type: t as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                value: b"v".to_vec(),
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn responses_become_batches() {
        let r = pb::WatchResponse {
            events: vec![
                event(pb::event::EventType::Put, "a", 5),
                event(pb::event::EventType::Delete, "b", 5),
            ],
            ..Default::default()
        };
        let b = batch(Ok(r)).unwrap().unwrap();
        assert!(matches!(&b[0], Change::Put(kv) if kv.key == b"a" && kv.mod_revision == 5));
        assert_eq!(
            b[1],
            Change::Delete {
                key: b"b".to_vec(),
                revision: 5
            }
        );
        assert_eq!(b[1].revision(), 5);
        assert_eq!(b[1].key(), b"b");
    }

    #[test]
    fn progress_is_skipped_and_compaction_ends() {
        assert!(batch(Ok(pb::WatchResponse::default())).is_none());
        let compacted = pb::WatchResponse {
            compact_revision: 9,
            canceled: true,
            ..Default::default()
        };
        assert!(matches!(
            batch(Ok(compacted)),
            Some(Err(WatchError::Compacted(9)))
        ));
        let cancelled = pb::WatchResponse {
            canceled: true,
            cancel_reason: "no leader".into(),
            ..Default::default()
        };
        assert!(matches!(
            batch(Ok(cancelled)),
            Some(Err(WatchError::Ended(_)))
        ));
    }
}
