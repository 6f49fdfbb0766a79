//! The command line of the commands that take more than a few lines to run: each command's options and the code
//! that turns them into a call of the library (`trestlectl::demo`, `trestlectl::bench`, `trestlectl::install`).

pub mod attach;
pub mod bench;
pub mod demo;
pub mod install;
