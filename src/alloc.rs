//! The global allocator: the system allocator, except that very large
//! allocations are served by `mmap(MAP_NORESERVE)`.
//!
//! Why: the kafka-protocol decoder sizes vectors from the array lengths on
//! the wire (`Vec::with_capacity(n)`) before it reads the elements. A hostile
//! request announcing 2^31 elements asks for hundreds of gigabytes at once;
//! the system allocator refuses, and Rust aborts the whole process. Reserving
//! the address space without committing memory lets that allocation succeed
//! untouched; the decoder then fails on the short input, the vector is freed,
//! and the broker closes that one connection. Legitimate allocations of this
//! size do not occur (requests are capped at `max_request_bytes`).

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped, not malloc'ed.
const MAP_THRESHOLD_BYTES: usize = 1 << 30;

pub struct GuardedAlloc;

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MAP_THRESHOLD_BYTES && layout.align() <= 4096 {
            // SAFETY: anonymous private mapping, no file descriptor; the
            // result is page aligned, which satisfies any align <= 4096.
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
                return std::ptr::null_mut();
            }
            return p.cast();
        }
        // SAFETY: forwarding the caller's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= MAP_THRESHOLD_BYTES && layout.align() <= 4096 {
            // SAFETY: ptr came from the mmap above with this size.
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
            return;
        }
        // SAFETY: forwarding the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_mapped = layout.size() >= MAP_THRESHOLD_BYTES && layout.align() <= 4096;
        let new_mapped = new_size >= MAP_THRESHOLD_BYTES && layout.align() <= 4096;
        if !old_mapped && !new_mapped {
            // SAFETY: forwarding the caller's contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: layout is valid for the new size (same alignment).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as alloc/dealloc above.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// glibc's thresholds for the broker: allocations up to this size come from the heap, not
/// from a fresh `mmap` (the default threshold grows only to the largest block freed so far,
/// so request frames of a few hundred KiB were mapped and unmapped per request, each page a
/// fault and a kernel zeroing).
const HEAP_UP_TO_BYTES: i32 = 32 << 20;
/// Free memory at the top of a heap kept for reuse up to this much (the default, twice the
/// mmap threshold, gave pages back between requests only to fault them in again). Bounded:
/// what is kept is at most what a shard used at its peak, per heap.
const KEEP_FREE_BYTES: i32 = 64 << 20;

/// Tune the system allocator for a long-running broker (see the constants). Call once, before
/// the shards start; a no-op where glibc is not the allocator.
pub fn tune_system_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_UP_TO_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservation_succeeds_and_frees() {
        let a = GuardedAlloc;
        let layout = Layout::from_size_align(200 << 30, 8).unwrap();
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            *p = 7;
            assert_eq!(*p, 7);
            a.dealloc(p, layout);
        }
    }
}
