//! A small etcd v3 client over tonic: one lazily connected channel per endpoint, a deadline on
//! every request, failover to the next endpoint when one cannot answer, and counters of every
//! request by kind (the bench's "etcd requests per allocation" and the metrics read them).
//!
//! Retrying a write is safe here because every write trestle makes is a transaction whose
//! comparisons fail if an earlier attempt applied; the caller then reads back what is there
//! (and recognises its own write by the `writer` nonce it put in the value).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::pb;
use crate::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::request_op::Request;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `host:port` or URLs (`http://`, `https://`).
    pub endpoints: Vec<String>,
    /// TLS: the CA that signed the servers' certificates, and an optional client certificate.
    pub tls: Option<TlsFiles>,
    /// The deadline of one request, failover included.
    pub timeout: Duration,
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate the servers' certificates are checked against.
    pub ca: PathBuf,
    /// A client certificate and key, for `--client-cert-auth` servers.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// The TLS of the `--etcd-ca`, `--etcd-cert` and `--etcd-key` flags: on with a CA, with a
    /// client certificate when both of its files are named.
    pub fn from_flags(
        ca: Option<&PathBuf>,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
    ) -> Option<TlsFiles> {
        ca.map(|ca| TlsFiles {
            ca: ca.clone(),
            identity: cert.cloned().zip(key.cloned()),
        })
    }
}

/// Why a request failed.
///
/// Each message says everything, the cause included, and none has a `source()`: trestled passes
/// these errors on as text (to the plugin over its socket, or as its start-up error), and that
/// text is all an operator sees.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered within the deadline (unreachable, no leader, ...). The text is what
    /// the last attempt met, for the log; nothing decides on it.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// The lease named in the request does not exist (expired or revoked).
    #[error("etcd lease not found (expired or revoked)")]
    LeaseNotFound,
    /// etcd answered with an error that retrying will not fix.
    #[error("etcd refused: {code:?}: {message}")]
    Refused {
        /// The gRPC status code etcd answered with.
        code: Code,
        /// etcd's message.
        message: String,
    },
    /// The configuration names no endpoint.
    #[error("no etcd endpoints")]
    NoEndpoints,
    /// An endpoint is not a usable URL.
    #[error("etcd endpoint {endpoint:?}: {error}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        error: tonic::transport::Error,
    },
    /// The TLS settings cannot be applied to an endpoint.
    #[error("TLS for etcd endpoint {endpoint:?}: {error}")]
    Tls {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with them.
        error: tonic::transport::Error,
    },
    /// A certificate or key file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    ReadPem {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// [`Etcd::status`] was asked about an endpoint the client does not have.
    #[error("no etcd endpoint {0}")]
    NoSuchEndpoint(usize),
}

/// Requests sent, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    /// Range requests (and read-only transactions).
    pub reads: AtomicU64,
    /// Transactions that may write, puts, deletes, lease grants and revokes.
    pub writes: AtomicU64,
    /// Lease keep-alives.
    pub keepalives: AtomicU64,
    /// Attempts that failed (and were retried elsewhere or reported).
    pub failures: AtomicU64,
}

impl Counters {
    /// (reads, writes, keepalives, failures).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.keepalives.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

/// A request's kind, for the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Read,
    Write,
    KeepAlive,
}

/// An etcd client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Etcd {
    channels: Arc<Vec<Channel>>,
    current: Arc<AtomicUsize>,
    timeout: Duration,
    /// Requests sent.
    pub counters: Arc<Counters>,
}

/// One key and its revisions.
pub type KeyValue = pb::KeyValue;

impl Etcd {
    /// A client over `cfg`'s endpoints; nothing is connected until the first request.
    pub fn new(cfg: &EtcdConfig) -> Result<Etcd, EtcdError> {
        if cfg.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let tls = cfg.tls.as_ref().map(tls_config).transpose()?;
        let mut channels = Vec::new();
        for e in &cfg.endpoints {
            let url = if e.contains("://") {
                e.clone()
            } else if tls.is_some() {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            };
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|error| EtcdError::Endpoint {
                    endpoint: e.clone(),
                    error,
                })?
                .connect_timeout(cfg.timeout)
                .timeout(cfg.timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(cfg.timeout.max(Duration::from_secs(1)));
            if let Some(t) = &tls {
                ep = ep.tls_config(t.clone()).map_err(|error| EtcdError::Tls {
                    endpoint: e.clone(),
                    error,
                })?;
            }
            channels.push(ep.connect_lazy());
        }
        Ok(Etcd {
            channels: Arc::new(channels),
            current: Arc::new(AtomicUsize::new(0)),
            timeout: cfg.timeout,
            counters: Arc::new(Counters::default()),
        })
    }

    /// Runs `f` against the current endpoint, moving to the next one on a failure that another
    /// member may not have, until the deadline.
    pub(crate) async fn call<T, F, Fut>(&self, kind: Kind, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let counter = match kind {
            Kind::Read => &self.counters.reads,
            Kind::Write => &self.counters.writes,
            Kind::KeepAlive => &self.counters.keepalives,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let mut last = String::from("no attempt");
        let n = self.channels.len();
        let mut attempt = 0usize;
        while Instant::now() < deadline {
            let i = self.current.load(Ordering::Relaxed) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            let ch = self.channels[i].clone();
            match tokio::time::timeout(left, f(ch)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) if !retryable(s.code()) => return Err(refused(s)),
                Ok(Err(s)) => last = s.message().to_string(),
                Err(_) => last = "deadline exceeded".into(),
            }
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            // Another member may have a leader (or be up); the failed one is tried again last.
            let _ =
                self.current
                    .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
            attempt += 1;
            if attempt.is_multiple_of(n) {
                // Every member failed once: an election is likely under way.
                tokio::time::sleep(Duration::from_millis(50).min(left)).await;
            }
        }
        Err(EtcdError::Unavailable(last))
    }

    /// Keys in `[key, range_end)` (`range_end` empty: `key` alone), with the store revision.
    pub async fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        keys_only: bool,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let r = self
            .range_request(pb::RangeRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                keys_only,
                ..Default::default()
            })
            .await?;
        Ok((r.kvs, r.header.map_or(0, |h| h.revision)))
    }

    async fn range_request(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        self.call(Kind::Read, |ch| {
            let req = req.clone();
            async move { Ok(kv(ch).range(req).await?.into_inner()) }
        })
        .await
    }

    /// Every key under `prefix` as of one revision, read in pages of `page` keys, each page one
    /// request within the client's timeout (a large cluster's records would not fit one). Returns
    /// the keys and the revision they were read at; a revision compacted away while paging fails
    /// (etcd answers OutOfRange) and the caller reads again.
    pub async fn list_paged(
        &self,
        prefix: &str,
        page: i64,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let r = self
                .range_request(pb::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: page,
                    revision,
                    ..Default::default()
                })
                .await?;
            if revision == 0 {
                revision = r.header.map_or(0, |h| h.revision);
            }
            let Some(last) = r.kvs.last() else {
                return Ok((out, revision));
            };
            // The next page starts just after the last key read.
            from = last.key.clone();
            from.push(0);
            out.extend(r.kvs);
            if !r.more {
                return Ok((out, revision));
            }
        }
    }

    /// One key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let (mut kvs, _) = self.range(key.as_bytes(), b"", false).await?;
        Ok(kvs.pop())
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>, EtcdError> {
        let end = prefix_end(prefix.as_bytes());
        Ok(self.range(prefix.as_bytes(), &end, keys_only).await?.0)
    }

    /// A transaction; returns whether its comparisons held, its results, and the revision.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, EtcdError> {
        let kind = if txn.writes() {
            Kind::Write
        } else {
            Kind::Read
        };
        let req = pb::TxnRequest {
            compare: txn.compare,
            success: txn.success,
            failure: txn.failure,
        };
        let r = self
            .call(kind, |ch| {
                let req = req.clone();
                async move { Ok(kv(ch).txn(req).await?.into_inner()) }
            })
            .await?;
        Ok(TxnOutcome {
            succeeded: r.succeeded,
            revision: r.header.map_or(0, |h| h.revision),
            responses: r.responses,
        })
    }

    /// Grants a lease; returns its ID and TTL in seconds.
    pub async fn grant(&self, ttl_s: i64) -> Result<(i64, i64), EtcdError> {
        let req = pb::LeaseGrantRequest { ttl: ttl_s, id: 0 };
        let r = self
            .call(Kind::Write, |ch| async move {
                Ok(lease(ch).lease_grant(req).await?.into_inner())
            })
            .await?;
        // etcd refuses a grant with a gRPC status and never fills this field (it has no code);
        // it is checked in case something between fills it.
        if !r.error.is_empty() {
            return Err(EtcdError::Refused {
                code: Code::Unknown,
                message: r.error,
            });
        }
        Ok((r.id, r.ttl))
    }

    /// Revokes a lease (its keys go with it); an unknown lease is not an error.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let req = pb::LeaseRevokeRequest { id };
        match self
            .call(Kind::Write, |ch| async move {
                Ok(lease(ch).lease_revoke(req).await?.into_inner())
            })
            .await
        {
            Err(EtcdError::LeaseNotFound) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Renews a lease once; returns the TTL granted from now (0: the lease is gone).
    pub async fn keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let r = self
            .call(Kind::KeepAlive, |ch| async move {
                let out = tokio_stream::iter([pb::LeaseKeepAliveRequest { id }]);
                let mut replies = lease(ch).lease_keep_alive(out).await?.into_inner();
                match replies.message().await? {
                    Some(r) => Ok(r.ttl),
                    None => Err(Status::unavailable("keep-alive stream closed")),
                }
            })
            .await?;
        Ok(r)
    }

    /// The status of endpoint `i`: (its member ID, the leader's member ID).
    pub async fn status(&self, i: usize) -> Result<(u64, u64), EtcdError> {
        let ch = self
            .channels
            .get(i)
            .ok_or(EtcdError::NoSuchEndpoint(i))?
            .clone();
        let r = tokio::time::timeout(self.timeout, async move {
            pb::maintenance_client::MaintenanceClient::new(ch)
                .status(pb::StatusRequest {})
                .await
        })
        .await
        .map_err(|_| EtcdError::Unavailable("deadline exceeded".into()))?
        .map_err(|s| EtcdError::Unavailable(s.message().to_string()))?
        .into_inner();
        Ok((r.header.map_or(0, |h| h.member_id), r.leader))
    }
}

fn kv(ch: Channel) -> pb::kv_client::KvClient<Channel> {
    pb::kv_client::KvClient::new(ch)
}

fn lease(ch: Channel) -> pb::lease_client::LeaseClient<Channel> {
    pb::lease_client::LeaseClient::new(ch)
}

fn tls_config(t: &TlsFiles) -> Result<ClientTlsConfig, EtcdError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|error| EtcdError::ReadPem {
            path: p.clone(),
            error,
        })
    };
    let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&t.ca)?));
    if let Some((cert, key)) = &t.identity {
        cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(cfg)
}

/// Failures another member (or a moment later) may not have: transport errors, no leader,
/// leader changes, timeouts. Everything else is etcd's considered answer.
///
/// The code alone tells them apart. etcd (`api/v3rpc/rpctypes/error.go`) answers "no leader"
/// (since 3.0), "leader changed" (since 3.4, where it appeared), "request timed out" (also
/// "possibly due to previous leader failure"), "server stopped", "not capable" and "unhealthy
/// cluster" with `Unavailable`, and an internal error it has no code for (3.3's "leader transfer
/// took too long", say) with `Unknown`. Its other errors naming the leader ("not leader", "bad
/// leader transferee", a learner "not in sync with leader") are `FailedPrecondition` answers of
/// the member-promotion and leader-transfer requests, which this client never makes.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}

/// etcd's considered answer as an error.
fn refused(s: Status) -> EtcdError {
    match s.code() {
        // The only `NotFound` of the KV and Lease services (rpctypes.ErrGRPCLeaseNotFound): a
        // revoke, or a put in a transaction, naming a lease that expired or was revoked (a
        // keep-alive of one is answered with a TTL of 0 instead). The other `NotFound`,
        // ErrGRPCMemberNotFound, is the Cluster service's, which this client does not call.
        Code::NotFound => EtcdError::LeaseNotFound,
        code => EtcdError::Refused {
            code,
            message: s.message().to_string(),
        },
    }
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A transaction being built.
#[derive(Debug, Default, Clone)]
pub struct Txn {
    pub(crate) compare: Vec<pb::Compare>,
    pub(crate) success: Vec<pb::RequestOp>,
    pub(crate) failure: Vec<pb::RequestOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Only if `key` was last modified at `rev` (0: only if it does not exist).
    pub fn if_mod(mut self, key: &str, rev: i64) -> Txn {
        self.compare.push(if rev == 0 {
            cmp(
                key,
                CompareTarget::Create,
                CompareResult::Equal,
                TargetUnion::CreateRevision(0),
            )
        } else {
            cmp(
                key,
                CompareTarget::Mod,
                CompareResult::Equal,
                TargetUnion::ModRevision(rev),
            )
        });
        self
    }

    /// Only if `key` does not exist.
    pub fn if_absent(mut self, key: &str) -> Txn {
        self.compare.push(cmp(
            key,
            CompareTarget::Create,
            CompareResult::Equal,
            TargetUnion::CreateRevision(0),
        ));
        self
    }

    /// Only if no key under `prefix` was created or changed after revision `rev`.
    pub fn if_range_unchanged(mut self, prefix: &str, rev: i64) -> Txn {
        let mut c = cmp(
            prefix,
            CompareTarget::Mod,
            CompareResult::Less,
            TargetUnion::ModRevision(rev + 1),
        );
        c.range_end = prefix_end(prefix.as_bytes());
        self.compare.push(c);
        self
    }

    /// On success, puts `key` (attached to `lease` unless 0).
    pub fn put(mut self, key: &str, value: Vec<u8>, lease: i64) -> Txn {
        self.success.push(put_op(key, value, lease));
        self
    }

    /// On success, deletes `key`.
    pub fn delete(mut self, key: &str) -> Txn {
        self.success.push(pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        });
        self
    }

    /// On failure, reads `key` (so a lost race costs no extra round trip).
    pub fn or_get(mut self, key: &str) -> Txn {
        self.failure.push(pb::RequestOp {
            request: Some(Request::RequestRange(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        });
        self
    }

    fn writes(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .any(|op| !matches!(op.request, Some(Request::RequestRange(_))))
    }
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, value: TargetUnion) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(value),
        range_end: Vec::new(),
    }
}

fn put_op(key: &str, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// What a transaction did.
#[derive(Debug)]
pub struct TxnOutcome {
    /// Whether the comparisons held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after it: the `mod_revision` of every key it put.
    pub revision: i64,
    pub(crate) responses: Vec<pb::ResponseOp>,
}

impl TxnOutcome {
    /// The key-values of the `i`th read of the branch that ran.
    pub fn read(&self, i: usize) -> Vec<KeyValue> {
        self.responses
            .iter()
            .filter_map(|r| match &r.response {
                Some(pb::response_op::Response::ResponseRange(rr)) => Some(rr.kvs.clone()),
                _ => None,
            })
            .nth(i)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn only_transactions_with_writes_count_as_writes() {
        assert!(!Txn::new().if_absent("k").or_get("k").writes());
        assert!(Txn::new().if_absent("k").put("k", vec![], 0).writes());
        assert!(Txn::new().delete("k").writes());
    }

    #[test]
    fn a_missing_endpoint_list_is_refused() {
        let cfg = EtcdConfig {
            endpoints: vec![],
            tls: None,
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(Etcd::new(&cfg), Err(EtcdError::NoEndpoints)));
    }

    #[test]
    fn a_missing_lease_is_told_by_its_code_alone() {
        let e = refused(Status::not_found("etcdserver: requested lease not found"));
        assert!(matches!(e, EtcdError::LeaseNotFound));
        let e = refused(Status::invalid_argument("etcdserver: key not found"));
        assert!(matches!(
            e,
            EtcdError::Refused {
                code: Code::InvalidArgument,
                ..
            }
        ));
    }

    #[test]
    fn leader_trouble_is_retried_by_its_code_and_other_answers_are_not() {
        // etcd's "no leader" and "leader changed" are Unavailable.
        assert!(retryable(Code::Unavailable));
        assert!(retryable(Code::Unknown));
        // "etcdserver: not leader" answers only member promotion and leader transfer.
        assert!(!retryable(Code::FailedPrecondition));
        assert!(!retryable(Code::NotFound));
        assert!(!retryable(Code::InvalidArgument));
    }

    #[test]
    fn an_unreadable_certificate_names_the_file_and_the_os_error() {
        let e = tls_config(&TlsFiles {
            ca: PathBuf::from("/nonexistent/ca.pem"),
            identity: None,
        })
        .unwrap_err();
        match &e {
            EtcdError::ReadPem { path, error } => {
                assert_eq!(path, &PathBuf::from("/nonexistent/ca.pem"));
                assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        assert!(e
            .to_string()
            .starts_with("cannot read /nonexistent/ca.pem: "));
    }
}
