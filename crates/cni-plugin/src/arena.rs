//! A global allocator for plugin processes, which live a few milliseconds and allocate a few hundred kilobytes.
//!
//! Blocks are cut from one region in `.bss` by bumping an offset; freeing one is a no-op unless it is the newest
//! block, which is given back (so a growing `Vec` or `String` at the top grows in place). Nothing is returned to the
//! system before exit, which frees it all at once. Why: musl's allocator (the binaries link against musl, see
//! `tools/static-link`) hands memory back to the kernel eagerly, and an ADD made ~80 `mmap` and ~70 `munmap` calls;
//! an `munmap` in a process with a second thread also flushes the other CPU's TLB. The region costs nothing until
//! touched: pages are faulted in as the offset passes them.
//!
//! When the region is used up, allocation falls through to the system allocator, so a process that lives on (DEL's
//! reaper) holds at most the region's size in blocks it no longer uses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of the region: well above an ADD's total allocation, small enough that a reaper's leftovers do not matter.
const REGION: usize = 4 << 20;

/// The region's memory. Only ever reached through raw pointers handed out by [`Arena`], each byte to one owner.
#[repr(C, align(4096))]
struct Region(UnsafeCell<[u8; REGION]>);

// SAFETY: `Arena` gives each byte range to at most one live block (the offset only moves past a range, or back over
// the newest block when its owner frees it), so threads never share bytes through the region.
unsafe impl Sync for Region {}

static MEMORY: Region = Region(UnsafeCell::new([0; REGION]));

/// The plugin processes' allocator: `#[global_allocator] static A: Arena = Arena::new();` in a binary's `main.rs`.
pub struct Arena {
    /// Offset of the first free byte of the region.
    next: AtomicUsize,
}

impl Arena {
    /// An arena over the (single, process-wide) region; a binary declares one.
    pub const fn new() -> Arena {
        Arena {
            next: AtomicUsize::new(0),
        }
    }

    fn base() -> usize {
        MEMORY.0.get() as usize
    }

    fn owns(ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= Self::base() && p < Self::base() + REGION
    }

    /// Offset range `[start, end)` for `layout` after `next`, if it fits.
    fn fit(next: usize, layout: Layout) -> Option<(usize, usize)> {
        let addr = Self::base().checked_add(next)?;
        let aligned = addr.checked_next_multiple_of(layout.align())? - Self::base();
        let end = aligned.checked_add(layout.size())?;
        (end <= REGION).then_some((aligned, end))
    }

    /// Cuts a block from the region, or `None` when it is used up.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let (start, end) = Self::fit(next, layout)?;
            match self
                .next
                .compare_exchange_weak(next, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some((Self::base() + start) as *mut u8),
                Err(now) => next = now,
            }
        }
    }

    /// Moves the offset from `from` to `to` if the block ending at `from` is still the newest.
    fn move_top(&self, from: usize, to: usize) -> bool {
        self.next
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks from the region are disjoint (see `Region`), aligned by `fit`, and never handed to `System`;
// blocks from `System` are only ever freed or resized by `System`.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(p) => p,
            // SAFETY: `layout` comes from the caller, who upholds `GlobalAlloc::alloc`'s contract.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A region block may be one given back and reused: always zero it.
        let p = self.bump(layout);
        match p {
            Some(p) => {
                // SAFETY: `p` is a fresh block of `layout.size()` bytes owned by this call.
                unsafe { p.write_bytes(0, layout.size()) };
                p
            }
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !Self::owns(ptr) {
            // SAFETY: not a region block, so `System` allocated it with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let start = ptr as usize - Self::base();
        // Only the newest block goes back; any other stays cut until exit.
        self.move_top(start + layout.size(), start);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::owns(ptr) {
            // SAFETY: not a region block, so `System` allocated it; the caller upholds `realloc`'s contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let start = ptr as usize - Self::base();
        let end = start + layout.size();
        // The newest block grows or shrinks where it is.
        if start + new_size <= REGION && self.move_top(end, start + new_size) {
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

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    // The region is process-wide and the test harness's own allocations go to `System`, so each test uses its own
    // `Arena` value over the shared region; they run one at a time here to keep offsets predictable.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn blocks_are_aligned_and_disjoint() {
        let _g = SERIAL.lock().unwrap();
        let a = Arena::new();
        // SAFETY: valid layouts; blocks are written within their sizes and freed with the same layouts.
        unsafe {
            let p = a.alloc(layout(3, 1));
            let q = a.alloc(layout(64, 64));
            let r = a.alloc(layout(8, 8));
            assert_eq!(q as usize % 64, 0);
            assert_eq!(r as usize % 8, 0);
            assert!(p as usize + 3 <= q as usize && q as usize + 64 <= r as usize);
            p.write_bytes(1, 3);
            q.write_bytes(2, 64);
            r.write_bytes(3, 8);
            assert_eq!(*p.add(2), 1);
            assert_eq!(*q.add(63), 2);
            a.dealloc(r, layout(8, 8));
            a.dealloc(q, layout(64, 64));
            a.dealloc(p, layout(3, 1));
        }
    }

    #[test]
    fn the_newest_block_is_given_back_and_grows_in_place() {
        let _g = SERIAL.lock().unwrap();
        let a = Arena::new();
        // SAFETY: as above; `realloc` gets the block's current layout.
        unsafe {
            let p = a.alloc(layout(16, 8));
            p.write_bytes(7, 16);
            let grown = a.realloc(p, layout(16, 8), 4096);
            assert_eq!(grown, p, "the newest block grows where it is");
            assert_eq!(*grown.add(15), 7);
            a.dealloc(grown, layout(4096, 8));
            let again = a.alloc(layout(16, 8));
            assert_eq!(again, p, "the freed newest block is reused");
            let other = a.alloc(layout(16, 8));
            a.dealloc(again, layout(16, 8));
            let moved = a.realloc(other, layout(16, 8), 32);
            assert_eq!(
                moved, other,
                "the top block still grows after an older one was freed"
            );
        }
    }

    #[test]
    fn an_older_block_moves_when_it_grows_and_keeps_its_bytes() {
        let _g = SERIAL.lock().unwrap();
        let a = Arena::new();
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(layout(8, 8));
            p.cast::<u64>().write(0x0123_4567_89ab_cdef);
            let _top = a.alloc(layout(8, 8));
            let q = a.realloc(p, layout(8, 8), 64);
            assert_ne!(q, p);
            assert_eq!(q.cast::<u64>().read(), 0x0123_4567_89ab_cdef);
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_reused() {
        let _g = SERIAL.lock().unwrap();
        let a = Arena::new();
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(layout(32, 8));
            p.write_bytes(0xff, 32);
            a.dealloc(p, layout(32, 8));
            let z = a.alloc_zeroed(layout(32, 8));
            assert_eq!(z, p);
            assert!((0..32).all(|i| *z.add(i) == 0));
        }
    }

    #[test]
    fn falls_back_to_the_system_when_the_region_is_used_up() {
        let _g = SERIAL.lock().unwrap();
        let a = Arena::new();
        // SAFETY: as above; the big block is freed with its layout, which routes it back to `System`.
        unsafe {
            let big = a.alloc(layout(REGION + 1, 8));
            assert!(!big.is_null());
            assert!(!Arena::owns(big));
            big.add(REGION).write(9);
            a.dealloc(big, layout(REGION + 1, 8));
            let fill = a.alloc(layout(REGION, 1));
            assert!(Arena::owns(fill));
            let next = a.alloc(layout(16, 8));
            assert!(!next.is_null() && !Arena::owns(next));
            a.dealloc(next, layout(16, 8));
        }
    }

    #[test]
    fn concurrent_threads_get_disjoint_blocks() {
        let _g = SERIAL.lock().unwrap();
        static A: Arena = Arena::new();
        let spans: Vec<Vec<(usize, usize)>> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..500)
                        .map(|i| {
                            let l = layout(8 + i % 40, 8);
                            // SAFETY: valid layout; the block is kept (never freed) for the overlap check.
                            let p = unsafe { A.alloc(l) } as usize;
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
