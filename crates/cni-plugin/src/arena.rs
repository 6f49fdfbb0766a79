//! A global allocator for plugin processes, which live a few milliseconds and allocate a few hundred kilobytes.
//!
//! Blocks are cut from one region in `.bss` by bumping an offset; freeing one is a no-op unless it is the newest
//! block, which is given back (so a growing `Vec` or `String` at the top grows in place). Nothing is returned to the
//! system before exit, which frees it all at once. Memory never handed out before is still the zeroed `.bss`, so
//! zeroed blocks there (a socket's 32 KiB receive buffer) are neither written nor faulted in until used. Why: musl's allocator (the binaries link against musl, see
//! `tools/static-link`) hands memory back to the kernel eagerly, and an ADD made ~80 `mmap` and ~70 `munmap` calls;
//! an `munmap` in a process with a second thread also flushes the other CPU's TLB. The region costs nothing until
//! touched: pages are faulted in as the offset passes them.
//!
//! When the region is used up, allocation falls through to the system allocator, so a process that lives on (DEL's
//! reaper) holds at most the region's size in blocks it no longer uses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of a plugin's region: well above an ADD's total allocation, small enough that a reaper's leftovers do not
/// matter.
pub const DEFAULT_SIZE: usize = 4 << 20;

/// The plugin processes' allocator: `#[global_allocator] static A: Arena = Arena::new();` in a binary's `main.rs`.
/// The region is part of the value, so a `static` arena lives in `.bss`.
#[repr(C, align(4096))]
pub struct Arena<const SIZE: usize = DEFAULT_SIZE> {
    /// The region. Only ever reached through raw pointers handed out below, each byte to one owner at a time.
    memory: UnsafeCell<[u8; SIZE]>,
    /// Offset of the first free byte of the region.
    next: AtomicUsize,
    /// Offset below which blocks have been handed out: bytes from here on are still zero.
    high: AtomicUsize,
}

// SAFETY: the arena gives each byte range of `memory` to at most one live block (the offset only moves past a range,
// or back over the newest block when its owner frees it), so threads never share bytes through it; the offsets are
// atomics.
unsafe impl<const SIZE: usize> Sync for Arena<SIZE> {}

impl<const SIZE: usize> Arena<SIZE> {
    /// An empty arena.
    pub const fn new() -> Self {
        Arena {
            memory: UnsafeCell::new([0; SIZE]),
            next: AtomicUsize::new(0),
            high: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.memory.get() as usize
    }

    fn owns(&self, ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= self.base() && p < self.base() + SIZE
    }

    /// Offset range `[start, end)` for `layout` after `next`, if it fits.
    fn fit(&self, next: usize, layout: Layout) -> Option<(usize, usize)> {
        let addr = self.base().checked_add(next)?;
        let aligned = addr.checked_next_multiple_of(layout.align())? - self.base();
        let end = aligned.checked_add(layout.size())?;
        (end <= SIZE).then_some((aligned, end))
    }

    /// Cuts a block from the region, or `None` when it is used up. Also says whether the block's bytes are all
    /// still zero (never handed out before).
    fn bump(&self, layout: Layout) -> Option<(*mut u8, bool)> {
        let mut next = self.next.load(Ordering::Acquire);
        loop {
            let (start, end) = self.fit(next, layout)?;
            match self
                .next
                .compare_exchange_weak(next, end, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // Raised before the block is returned, hence before it can be freed and cut again: whoever
                    // reuses these bytes sees them below `high`.
                    let high = self.high.fetch_max(end, Ordering::AcqRel);
                    return Some(((self.base() + start) as *mut u8, start >= high));
                }
                Err(now) => next = now,
            }
        }
    }

    /// Moves the offset from `from` to `to` if the block ending at `from` is still the newest.
    fn move_top(&self, from: usize, to: usize) -> bool {
        let moved = self
            .next
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved && to > from {
            // Growing the top block hands out bytes past `high` too.
            self.high.fetch_max(to, Ordering::AcqRel);
        }
        moved
    }
}

impl<const SIZE: usize> Default for Arena<SIZE> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks from the region are disjoint (see `Region`), aligned by `fit`, and never handed to `System`;
// blocks from `System` are only ever freed or resized by `System`.
unsafe impl<const SIZE: usize> GlobalAlloc for Arena<SIZE> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some((p, _)) => p,
            // SAFETY: `layout` comes from the caller, who upholds `GlobalAlloc::alloc`'s contract.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some((p, true)) => p,
            // Bytes handed out before (and given back) may hold anything.
            Some((p, false)) => {
                // SAFETY: `p` is a fresh block of `layout.size()` bytes owned by this call.
                unsafe { p.write_bytes(0, layout.size()) };
                p
            }
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.owns(ptr) {
            // SAFETY: not a region block, so `System` allocated it with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let start = ptr as usize - self.base();
        // Only the newest block goes back; any other stays cut until exit.
        self.move_top(start + layout.size(), start);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(ptr) {
            // SAFETY: not a region block, so `System` allocated it; the caller upholds `realloc`'s contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let start = ptr as usize - self.base();
        let end = start + layout.size();
        // The newest block grows or shrinks where it is.
        if start + new_size <= SIZE && self.move_top(end, start + new_size) {
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `new_size` is non-zero and, with `layout.align()`, a valid layout (the caller's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as in `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct, and the old one holds `layout.size()` initialised bytes.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
            // SAFETY: `ptr` was allocated here with `layout` and is not used after this.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: usize = 64 << 10;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_and_disjoint() {
        static A: Arena<SMALL> = Arena::new();
        // SAFETY: valid layouts; blocks are written within their sizes and freed with the same layouts.
        unsafe {
            let p = A.alloc(layout(3, 1));
            let q = A.alloc(layout(64, 64));
            let r = A.alloc(layout(8, 8));
            assert_eq!(q as usize % 64, 0);
            assert_eq!(r as usize % 8, 0);
            assert!(p as usize + 3 <= q as usize && q as usize + 64 <= r as usize);
            p.write_bytes(1, 3);
            q.write_bytes(2, 64);
            r.write_bytes(3, 8);
            assert_eq!(*p.add(2), 1);
            assert_eq!(*q.add(63), 2);
            A.dealloc(r, layout(8, 8));
            A.dealloc(q, layout(64, 64));
            A.dealloc(p, layout(3, 1));
        }
    }

    #[test]
    fn the_newest_block_is_given_back_and_grows_in_place() {
        static A: Arena<SMALL> = Arena::new();
        // SAFETY: as above; `realloc` gets the block's current layout.
        unsafe {
            let p = A.alloc(layout(16, 8));
            p.write_bytes(7, 16);
            let grown = A.realloc(p, layout(16, 8), 4096);
            assert_eq!(grown, p, "the newest block grows where it is");
            assert_eq!(*grown.add(15), 7);
            A.dealloc(grown, layout(4096, 8));
            let again = A.alloc(layout(16, 8));
            assert_eq!(again, p, "the freed newest block is reused");
            let other = A.alloc(layout(16, 8));
            A.dealloc(again, layout(16, 8));
            let moved = A.realloc(other, layout(16, 8), 32);
            assert_eq!(
                moved, other,
                "the top block still grows after an older one was freed"
            );
        }
    }

    #[test]
    fn an_older_block_moves_when_it_grows_and_keeps_its_bytes() {
        static A: Arena<SMALL> = Arena::new();
        // SAFETY: as above.
        unsafe {
            let p = A.alloc(layout(8, 8));
            p.cast::<u64>().write(0x0123_4567_89ab_cdef);
            let _top = A.alloc(layout(8, 8));
            let q = A.realloc(p, layout(8, 8), 64);
            assert_ne!(q, p);
            assert_eq!(q.cast::<u64>().read(), 0x0123_4567_89ab_cdef);
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_reused() {
        static A: Arena<SMALL> = Arena::new();
        // SAFETY: as above.
        unsafe {
            let p = A.alloc(layout(32, 8));
            p.write_bytes(0xff, 32);
            A.dealloc(p, layout(32, 8));
            let z = A.alloc_zeroed(layout(64, 8));
            assert_eq!(z, p, "reuses the bytes just given back");
            assert!((0..64).all(|i| *z.add(i) == 0));
            // Grown in place over used bytes, shrunk back, then handed out zeroed again.
            let g = A.realloc(z, layout(64, 8), 128);
            g.write_bytes(0xee, 128);
            A.dealloc(g, layout(128, 8));
            let z2 = A.alloc_zeroed(layout(128, 8));
            assert!((0..128).all(|i| *z2.add(i) == 0));
        }
    }

    #[test]
    fn falls_back_to_the_system_when_the_region_is_used_up() {
        static A: Arena<SMALL> = Arena::new();
        // SAFETY: as above; blocks from `System` are freed with their layouts, which routes them back to it.
        unsafe {
            let big = A.alloc(layout(SMALL + 1, 8));
            assert!(!big.is_null() && !A.owns(big));
            big.add(SMALL).write(9);
            A.dealloc(big, layout(SMALL + 1, 8));
            let fill = A.alloc(layout(SMALL, 1));
            assert!(A.owns(fill));
            let next = A.alloc_zeroed(layout(16, 8));
            assert!(!next.is_null() && !A.owns(next));
            assert!((0..16).all(|i| *next.add(i) == 0));
            let grown = A.realloc(next, layout(16, 8), 1 << 20);
            assert!(!grown.is_null() && !A.owns(grown));
            A.dealloc(grown, layout(1 << 20, 8));
        }
    }

    #[test]
    fn concurrent_threads_get_disjoint_blocks() {
        static A: Arena<{ 1 << 20 }> = Arena::new();
        let spans: Vec<Vec<(usize, usize)>> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..500)
                        .map(|i| {
                            let l = layout(8 + i % 40, 8);
                            // SAFETY: valid layout; the block is kept (never freed) for the overlap check.
                            let p = unsafe { A.alloc(l) } as usize;
                            assert!(A.owns(p as *mut u8));
                            (p, p + l.size())
                        })
                        .collect()
                })
            })
            .map(|t| t.join().unwrap())
            .collect();
        let mut all: Vec<(usize, usize)> = spans.into_iter().flatten().collect();
        all.sort();
        assert!(all.windows(2).all(|w| w[0].1 <= w[1].0));
    }
}
