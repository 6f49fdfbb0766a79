//! `Node` against the in-memory store: lost answers, repeated deliveries, unknown outcomes,
//! fencing and leases, each made to happen exactly where the test says.
//!
//! The node's lease deadlines run on CLOCK_BOOTTIME, which tokio's paused time does not move,
//! so these tests use real time: lease TTLs long enough (10 s) that a slow machine never sees a
//! lease lapse where a test does not make it, and waits that poll for a condition (bounded by a
//! generous limit) rather than sleep and hope.

mod allocation;
mod harness;
mod lease;
mod writes;
