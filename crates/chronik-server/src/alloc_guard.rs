//! A global allocator that keeps absurd allocation requests from aborting the broker.
//!
//! `kafka-protocol` 0.18 sizes a `Vec` from the element count a request *claims* before reading the
//! elements, so a 12-byte Metadata request claiming 2^31-1 topics asks for hundreds of GiB. The system
//! allocator refuses, and a refused allocation aborts the process (it cannot be caught). Requests are
//! bounded in bytes (`max_request_bytes`), so such a claim always fails to decode a few elements later; the
//! only danger is the allocation itself.
//!
//! This allocator serves requests of at least [`HUGE_ALLOC_BYTES`] with an anonymous `mmap` that reserves
//! address space without committing memory (`MAP_NORESERVE`): untouched pages cost nothing, the decoder
//! fails on the missing bytes, and the mapping is released. Everything else goes to the system allocator.
//! Nothing in the broker legitimately allocates this much in one piece.
#![expect(unsafe_code, reason = "a global allocator is unsafe by nature")]

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are reserved lazily.
pub const HUGE_ALLOC_BYTES: usize = 1 << 30;

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct HugeAllocGuard;

fn is_huge(layout: Layout) -> bool {
    // mmap returns page-aligned memory, enough for any alignment up to a page.
    layout.size() >= HUGE_ALLOC_BYTES && layout.align() <= 4096
}

// SAFETY: every pointer handed out is either from `System` (and returned to it) or from `mmap` of at least
// `layout.size()` bytes, page aligned (so aligned for `layout.align() <= 4096`), and returned with `munmap`
// of the same size; `is_huge` depends only on the layout, so alloc and dealloc agree on which path owns it.
unsafe impl GlobalAlloc for HugeAllocGuard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_huge(layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !is_huge(layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
            unsafe { System.dealloc(ptr, layout) };
            return;
        }
        // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `alloc`.
        unsafe { libc::munmap(ptr.cast(), layout.size()) };
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_huge(layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: fresh anonymous mappings are zero-filled.
        unsafe { self.alloc(layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservations_cost_nothing_until_touched() {
        let guard = HugeAllocGuard;
        let layout = Layout::from_size_align(256 << 30, 8).expect("layout");
        // SAFETY: a valid non-zero-size layout; the pointer is checked, written within bounds and freed once.
        unsafe {
            let p = guard.alloc(layout);
            assert!(!p.is_null(), "256 GiB reserved without committing memory");
            p.write(7);
            assert_eq!(p.read(), 7);
            guard.dealloc(p, layout);
        }
    }
}
