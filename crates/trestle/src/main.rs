//! `trestle`: the bridge CNI plugin binary; the logic is the `trestle` library.
// The C `main` is this file's, not std's: see `cni_plugin::run_from_c_main` for what std's start-up would cost each
// exec. Under `cargo test` std's harness brings its own.
#![cfg_attr(not(test), no_main)]

/// A plugin process lives milliseconds: see `cni_plugin::arena` for why it allocates from a bump region.
#[global_allocator]
static ALLOC: cni_plugin::arena::Arena = cni_plugin::arena::Arena::new();

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // SAFETY: argc and argv are the C runtime's own, passed on unchanged.
    unsafe { cni_plugin::run_from_c_main(argc, argv, &trestle::Bridge::detached()) }
}
