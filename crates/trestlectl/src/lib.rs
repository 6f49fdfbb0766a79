//! trestlectl: the operator's side of trestle. The library holds what the subcommands and the end-to-end tests
//! share: invoking plugins exactly as a runtime does, pod sandboxes, reading a namespace's network state, and
//! probing connectivity.

pub mod attach;
pub mod bench;
pub mod demo;
pub mod elevate;
pub mod image;
pub mod install;
pub mod ipam;
pub mod node;
pub mod probe;
pub mod runtime;
pub mod sandbox;
pub mod show;
pub mod table;
