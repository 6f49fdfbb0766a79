//! Cross-node routes, end to end: nodes are network namespaces on "underlay" bridges of a world namespace that
//! also routes between its two segments; a real etcd runs in the world; every node runs the real `trestled` in
//! etcd mode, and pods are wired by the real `trestle` plugin. Nothing touches the machine's own namespace.
//! Needs root, `etcd` (Debian's etcd-server) and `ip` (iproute2, for the test's own wiring only).

#[path = "../common/mod.rs"]
mod common;

mod blocks;
mod ipv6;
mod mtu;
mod probes;
mod reach;
mod restarts;
mod world;
