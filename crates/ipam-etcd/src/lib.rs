//! Cluster-wide IPAM on etcd for `trestled`: a pool is cut into blocks, each node claims
//! blocks with one revision compare-and-swap and allocates inside them on its own; a node
//! lease proves it alive, a node that cannot prove it stops allocating, and a dead node's
//! blocks are reclaimed without giving away what it may still hold. See docs/cluster-ipam.md.

pub mod admin;
pub mod block;
pub mod client;
pub mod keys;
pub mod kv;
pub mod node;
pub mod watch;

/// etcd's API, generated from `proto/etcd/rpc.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub use block::{Bitmap, Block, Pool, PoolError};
pub use client::{Etcd, EtcdConfig, EtcdError, TlsFiles};
pub use keys::Keys;
pub use node::{AllocationError, Attempt, ClusterError, Node, NodeSettings};
