//! trestlectl: the operator's side of trestle. The command's library parts live in three crates, re-exported here
//! under the paths the command and the end-to-end tests use: the operator side (`trestle-operator`: invoking
//! plugins exactly as a runtime does, pod sandboxes, reading a namespace's network state, probing connectivity,
//! install, ipam, node, image), the demo (`trestle-demo`) and the bench (`trestle-bench`).

pub use trestle_bench as bench;
pub use trestle_demo as demo;
pub use trestle_operator::{
    attach, binary, elevate, image, install, ipam, node, probe, runtime, sandbox, show, table,
};
