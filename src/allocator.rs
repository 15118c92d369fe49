//! The global allocator: mimalloc, entered the way C's `malloc` is when the alignment allows.
//!
//! Rust's allocator interface passes an alignment with every request, and the `mimalloc`
//! crate always calls `mi_malloc_aligned`. That entry costs more than `mi_malloc` on every
//! call, and when the page has no free block at hand (after a free, or for any block over
//! 1 KiB) it takes an extra slow layer before mimalloc's own slow path.
//! Here a request whose alignment `mi_malloc` already guarantees goes to `mi_malloc`: that is
//! mimalloc's own test (`mi_malloc_is_naturally_aligned` in `alloc-aligned.c`: an alignment of
//! at most 16 bytes, `MI_MAX_ALIGN_SIZE`, and at most the size). Everything else, and
//! reallocation with an alignment over 8, goes to the aligned entries as before.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What `mi_malloc` returns is aligned to this, for any size at least this large
/// (`MI_MAX_ALIGN_SIZE`).
const MALLOC_ALIGN: usize = 16;

pub struct MiMalloc;

/// Whether `mi_malloc(size)` is aligned enough for `layout` (mimalloc's own rule).
fn plain(layout: &Layout) -> bool {
    layout.align() <= MALLOC_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every block comes from mimalloc with at least the layout's alignment (see `plain`),
// and is given back to mimalloc, which frees aligned and unaligned blocks alike with `mi_free`.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; mimalloc returns null on failure, as `GlobalAlloc` expects.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the new block keeps the layout's alignment
        // by the same rule as `alloc`.
        unsafe {
            if layout.align() <= MALLOC_ALIGN && layout.align() <= new_size {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and alignments on both sides of each split: every block is aligned to its
    /// layout, a zeroed one is zero, and a reallocated one (grown or shrunk) keeps its bytes.
    #[test]
    fn blocks_keep_their_alignment_and_contents() {
        let sizes = [
            1, 7, 8, 15, 16, 17, 24, 40, 100, 1000, 1024, 1025, 2500, 70_000,
        ];
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is written within its size and freed
                // once, with the layout it has then.
                unsafe {
                    let zeroed = MiMalloc.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size} bytes at {align}");
                    assert!(std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0));
                    MiMalloc.dealloc(zeroed, layout);

                    for new_size in [size / 2 + 1, size * 3] {
                        let p = MiMalloc.alloc(layout);
                        assert_eq!(p as usize % align, 0, "{size} bytes at {align}");
                        for i in 0..size {
                            p.add(i).write(i as u8);
                        }
                        let q = MiMalloc.realloc(p, layout, new_size);
                        assert_eq!(q as usize % align, 0, "{size} -> {new_size} at {align}");
                        let kept = size.min(new_size);
                        assert!(
                            (0..kept).all(|i| *q.add(i) == i as u8),
                            "{size} -> {new_size}"
                        );
                        MiMalloc.dealloc(q, Layout::from_size_align(new_size, align).unwrap());
                    }
                }
            }
        }
    }
}
