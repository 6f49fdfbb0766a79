//! IPAM core of `trestle-ipam`: host-local compatible configuration, a round-robin allocator,
//! a [`Store`] trait with an on-disk implementation that shares host-local's `dataDir` layout
//! (a node can switch between the two plugins without conflicting addresses), an in-memory
//! store for tests, and garbage collection.
//!
//! Beyond host-local, the [`DiskStore`] keeps an attachment index that makes ADD, DEL and
//! CHECK cost O(1) file reads while host-local may still share the directory (see [`index`]),
//! drops reservations left over from before a reboot (see [`boot`]) and [`gc`] frees every
//! reservation of an attachment that is no longer valid.
//!
//! This crate knows nothing about CNI's wire types: the plugin binary maps its input to
//! [`ConfigInput`] and [`Allocation`] to a result, and picks error codes via
//! [`IpamError::kind`].

mod alloc;
pub mod boot;
mod config;
mod disk;
mod dns;
mod error;
pub mod index;
mod ipmath;
mod mem;
pub mod queue;
mod range;
mod store;

pub use alloc::{
    allocate, assign_requested, check, gc, gc_store, release, AllocatedIp, Allocation, GcOutcome,
};
pub use boot::BootIdSource;
pub use config::{
    ConfigInput, DaemonSettings, IpamConfig, RouteConfig, DEFAULT_DATA_DIR, DEFAULT_SOCKET,
};
pub use disk::{parse_owner, DiskStore, Handover, HANDOVER_FILE, LAST_RESERVED_PREFIX};
pub use dns::DnsConfig;
pub use error::{code, ErrorKind, IpamError};
pub use mem::MemStore;
pub use queue::{boottime_ns, unix_ms, DeleteQueue, QueuedRelease, DEFAULT_QUEUE_DIR};
pub use range::{Range, RangeError, RangeSet};
pub use store::{Attachment, Reservation, Store};
