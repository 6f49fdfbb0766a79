//! The fake's transactions, evaluated as etcd's `applyTxn` does (server/etcdserver/txn): every
//! comparison against the store as it is, then one branch's operations in order, each seeing
//! the writes of those before it, all at one new revision if anything changed.

use std::collections::BTreeMap;

use super::State;
use crate::client::{EtcdError, KeyValue, Txn, TxnOutcome};
use crate::pb;
use crate::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::request_op::Request;
use crate::pb::response_op::Response;
use crate::watch::Change;

/// The keys of `[key, range_end)` as etcd reads them: `range_end` empty is `key` alone, `\0`
/// is every key from `key` on.
pub(super) fn in_range<'a>(
    data: &'a BTreeMap<Vec<u8>, KeyValue>,
    key: &[u8],
    range_end: &[u8],
) -> Vec<&'a KeyValue> {
    if range_end.is_empty() {
        return data.get(key).into_iter().collect();
    }
    data.range(key.to_vec()..)
        .take_while(|(k, _)| range_end == [0] || k.as_slice() < range_end)
        .map(|(_, v)| v)
        .collect()
}

/// Whether `kv` (the zero record for a missing key) satisfies `c`, as etcd's `compareKV`.
fn compare_kv(c: &pb::Compare, kv: &KeyValue) -> bool {
    let ord = match (CompareTarget::try_from(c.target), &c.target_union) {
        (Ok(CompareTarget::Version), Some(TargetUnion::Version(v))) => kv.version.cmp(v),
        (Ok(CompareTarget::Create), Some(TargetUnion::CreateRevision(v))) => {
            kv.create_revision.cmp(v)
        }
        (Ok(CompareTarget::Mod), Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
        (Ok(CompareTarget::Value), Some(TargetUnion::Value(v))) => kv.value.cmp(v),
        (Ok(CompareTarget::Lease), Some(TargetUnion::Lease(v))) => kv.lease.cmp(v),
        // etcd compares a mismatched target against the zero value; nothing trestle sends.
        _ => return false,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Err(_) => false,
    }
}

fn refused(what: &str) -> EtcdError {
    EtcdError::Refused {
        code: tonic::Code::Unimplemented,
        message: format!("the fake store does not do {what}"),
    }
}

impl State {
    /// Whether comparison `c` holds: on a range, for every key in it; a range with no key is
    /// compared as one missing key (create revision 0), except on its value, which fails.
    fn holds(&self, c: &pb::Compare) -> bool {
        let kvs = in_range(&self.data, &c.key, &c.range_end);
        if kvs.is_empty() {
            return c.target != CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default());
        }
        kvs.into_iter().all(|kv| compare_kv(c, kv))
    }

    /// Applies `txn` as etcd would; an operation the fake does not do, or a put naming a lease
    /// that does not exist, refuses the whole transaction before anything applies.
    pub(super) fn apply(&mut self, txn: &Txn) -> Result<TxnOutcome, EtcdError> {
        let succeeded = txn.compare.iter().all(|c| self.holds(c));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            match &op.request {
                Some(Request::RequestPut(p)) if p.ignore_value || p.ignore_lease => {
                    return Err(refused("ignore_value or ignore_lease"))
                }
                Some(Request::RequestPut(p))
                    if p.lease != 0 && !self.leases.contains_key(&p.lease) =>
                {
                    return Err(EtcdError::LeaseNotFound)
                }
                Some(Request::RequestTxn(_)) | None => return Err(refused("nested transactions")),
                _ => {}
            }
        }
        let rev = self.revision + 1;
        let mut changes = Vec::new();
        let mut responses = Vec::new();
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => Response::ResponseRange(self.range(r)),
                Some(Request::RequestPut(p)) => {
                    let prev = self.data.get(&p.key).cloned();
                    changes.push(self.put_at(&p.key, &p.value, p.lease, rev));
                    Response::ResponsePut(pb::PutResponse {
                        header: None,
                        prev_kv: prev.filter(|_| p.prev_kv),
                    })
                }
                Some(Request::RequestDeleteRange(d)) => {
                    let gone = self.delete_range(&d.key, &d.range_end);
                    let deleted = gone.len() as i64;
                    changes.extend(gone.iter().map(|kv| Change::Delete {
                        key: kv.key.clone(),
                        revision: rev,
                    }));
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: None,
                        deleted,
                        prev_kvs: if d.prev_kv { gone } else { Vec::new() },
                    })
                }
                Some(Request::RequestTxn(_)) | None => unreachable!("refused above"),
            };
            responses.push(pb::ResponseOp {
                response: Some(response),
            });
        }
        if !changes.is_empty() {
            self.revision = rev;
            self.commit(changes);
        }
        Ok(TxnOutcome {
            succeeded,
            revision: self.revision,
            responses,
        })
    }

    /// A range read of the store as it is now.
    pub(super) fn range(&self, r: &pb::RangeRequest) -> pb::RangeResponse {
        let all = in_range(&self.data, &r.key, &r.range_end);
        let count = all.len() as i64;
        let limit = if r.limit > 0 {
            r.limit as usize
        } else {
            usize::MAX
        };
        let kvs: Vec<KeyValue> = all
            .into_iter()
            .take(limit)
            .map(|kv| KeyValue {
                value: if r.keys_only {
                    Vec::new()
                } else {
                    kv.value.clone()
                },
                ..kv.clone()
            })
            .collect();
        pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                revision: self.revision,
                ..Default::default()
            }),
            more: (kvs.len() as i64) < count,
            kvs: if r.count_only { Vec::new() } else { kvs },
            count,
        }
    }

    /// Writes `key` at revision `rev` (attached to `lease` unless 0).
    pub(super) fn put_at(&mut self, key: &[u8], value: &[u8], lease: i64, rev: i64) -> Change {
        let prev = self.data.get(key);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
            value: value.to_vec(),
            lease,
        };
        self.data.insert(kv.key.clone(), kv.clone());
        Change::Put(kv)
    }

    /// Deletes the keys of `[key, range_end)`; returns what they held.
    pub(super) fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        let keys: Vec<Vec<u8>> = in_range(&self.data, key, range_end)
            .into_iter()
            .map(|kv| kv.key.clone())
            .collect();
        keys.iter().filter_map(|k| self.data.remove(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::fake::FakeKv;
    use crate::kv::Store;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_missing_key_has_create_revision_zero_and_a_present_one_does_not() {
        let kv = FakeKv::new();
        run(async {
            let out = kv
                .txn(Txn::new().if_absent("a").put("a", b"1".to_vec(), 0))
                .await;
            let out = out.expect("txn");
            assert!(out.succeeded);
            assert_eq!(out.revision, 2);
            let again = kv.txn(
                Txn::new()
                    .if_absent("a")
                    .put("a", b"2".to_vec(), 0)
                    .or_get("a"),
            );
            let again = again.await.expect("txn");
            assert!(!again.succeeded);
            assert_eq!(again.revision, 2, "a refused transaction writes nothing");
            assert_eq!(again.read(0)[0].value, b"1");
        });
    }

    #[test]
    fn a_range_compare_holds_only_if_every_key_in_it_does() {
        let kv = FakeKv::new();
        let r1 = kv.set("/p/a", b"");
        kv.set("/p/b", b"");
        kv.set("/q", b"");
        run(async {
            // "/p/b" changed after r1: the range as a whole did.
            let t = Txn::new()
                .if_range_unchanged("/p/", r1)
                .put("/p/c", vec![], 0);
            assert!(!kv.txn(t).await.expect("txn").succeeded);
            let now = kv.revision();
            let t = Txn::new()
                .if_range_unchanged("/p/", now)
                .put("/p/c", vec![], 0);
            assert!(kv.txn(t).await.expect("txn").succeeded);
            // An empty range compares as one missing key: mod revision 0 < anything.
            let t = Txn::new()
                .if_range_unchanged("/none/", 1)
                .put("/x", vec![], 0);
            assert!(kv.txn(t).await.expect("txn").succeeded);
        });
    }

    #[test]
    fn a_put_naming_a_missing_lease_refuses_the_whole_transaction() {
        let kv = FakeKv::new();
        run(async {
            let t = Txn::new().put("a", vec![], 0).put("b", vec![], 77);
            assert!(matches!(kv.txn(t).await, Err(EtcdError::LeaseNotFound)));
            assert!(kv.get("a").await.expect("get").is_none());
        });
    }
}
