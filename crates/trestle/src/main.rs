//! `trestle`: the bridge CNI plugin binary; the logic is the `trestle` library.

/// A plugin process lives milliseconds: see `cni_plugin::arena` for why it allocates from a bump region.
#[global_allocator]
static ALLOC: cni_plugin::arena::Arena = cni_plugin::arena::Arena::new();

fn main() {
    cni_plugin::run(&trestle::Bridge::detached())
}
