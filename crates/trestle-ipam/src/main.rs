//! The `trestle-ipam` binary; the plugin lives in the library.

fn main() {
    cni_plugin::run(&trestle_ipam::Ipam)
}
