//! trestlectl's operator side: invoking plugins exactly as a runtime does, pod sandboxes, reading a namespace's
//! network state, probing connectivity, installing the plugins, the IPAM and node listings, and the image. The demo
//! (`trestle-demo`) and the bench (`trestle-bench`) are built on it; `trestlectl` puts them behind one command.

pub mod attach;
pub mod binary;
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
