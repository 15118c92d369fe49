//! The global allocator: mimalloc, entered the way C's `malloc` is when the alignment allows,
//! with a few freed blocks over 1 KiB kept per thread for the next request.
//!
//! Rust's allocator interface passes an alignment with every request, and the `mimalloc`
//! crate always calls `mi_malloc_aligned`. That entry costs more than `mi_malloc` on every
//! call, and when the page has no free block at hand (after a free, or for any block over
//! 1 KiB) it takes an extra slow layer before mimalloc's own slow path.
//! Here a request whose alignment `mi_malloc` already guarantees goes to `mi_malloc`: that is
//! mimalloc's own test (`mi_malloc_is_naturally_aligned` in `alloc-aligned.c`: an alignment of
//! at most 16 bytes, `MI_MAX_ALIGN_SIZE`, and at most the size; for a reallocation, the new
//! size). Everything else goes to the aligned entries as before.
//!
//! mimalloc serves a block over 1 KiB (`MI_SMALL_SIZE_MAX`) through its generic path every
//! time, about 130 instructions. A proxied request makes several, of the same sizes every
//! time: the upstream request's header map, the request's future, the connections' read
//! buffers. So a thread keeps up to [`SLOTS`] freed blocks between 1 and 16 KiB and hands one
//! back for the next allocation of exactly its size (547 fewer instructions per request). A
//! block coming in when every slot is taken evicts the one kept longest; the kept ones are
//! freed when the thread ends. Only on glibc Linux, where registering that thread-exit
//! destructor does not itself allocate through this allocator (std uses glibc's
//! `__cxa_thread_atexit_impl` there); elsewhere every block goes to mimalloc.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::ptr::null_mut;

use libmimalloc_sys as mi;

/// What `mi_malloc` returns is aligned to this, for any size at least this large
/// (`MI_MAX_ALIGN_SIZE`).
const MALLOC_ALIGN: usize = 16;

pub struct MiMalloc;

/// Whether `mi_malloc(size)` is aligned enough for `align` (mimalloc's own rule).
fn plain(size: usize, align: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

/// Freed blocks a thread keeps, at most.
pub const SLOTS: usize = 8;

/// The sizes a thread keeps freed blocks of: over mimalloc's `MI_SMALL_SIZE_MAX`, up to 16 KiB.
const KEPT: std::ops::RangeInclusive<usize> = 1025..=16 * 1024;

/// A thread's kept blocks: (size, block), size 0 for an empty slot; `next` is the slot the
/// next block goes to when all are taken (its block is freed).
struct Stash {
    slots: [Cell<(usize, *mut u8)>; SLOTS],
    next: Cell<usize>,
}

impl Drop for Stash {
    fn drop(&mut self) {
        for slot in &self.slots {
            let (size, block) = slot.replace((0, null_mut()));
            if size != 0 {
                // SAFETY: a kept block came from mimalloc and belongs to nobody else.
                unsafe { mi::mi_free(block.cast()) }
            }
        }
    }
}

thread_local! {
    static STASH: Stash = const {
        Stash {
            slots: [const { Cell::new((0, null_mut())) }; SLOTS],
            next: Cell::new(0),
        }
    };
}

/// Whether this target keeps blocks (see the module's notes).
const KEEPS: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// A kept block of exactly `size` bytes, if this thread has one.
fn take(size: usize) -> Option<*mut u8> {
    if !KEEPS {
        return None;
    }
    STASH
        .try_with(|stash| {
            let slot = stash.slots.iter().find(|slot| slot.get().0 == size)?;
            Some(slot.replace((0, null_mut())).1)
        })
        .ok()
        .flatten()
}

/// Keeps `block` of `size` bytes in an empty slot, or in place of the block kept longest
/// ago, which is returned to be freed. `Err` where blocks are not kept, or while the thread
/// ends.
fn keep(size: usize, block: *mut u8) -> Result<Option<*mut u8>, ()> {
    if !KEEPS {
        return Err(());
    }
    STASH
        .try_with(|stash| {
            if let Some(slot) = stash.slots.iter().find(|slot| slot.get().0 == 0) {
                slot.set((size, block));
                return None;
            }
            let i = stash.next.get();
            stash.next.set((i + 1) % SLOTS);
            Some(stash.slots[i].replace((size, block)).1)
        })
        .map_err(|_| ())
}

// SAFETY: every block comes from mimalloc with at least the layout's alignment (see `plain`),
// and is given back to mimalloc, which frees aligned and unaligned blocks alike with `mi_free`.
// A kept block was freed with the very layout it is handed out for again (a plain one, so it
// came from `mi_malloc`, `mi_zalloc` or `mi_realloc` with at least that size and 16-byte
// alignment), and is owned by its thread's slot until handed out again or freed.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            if KEPT.contains(&layout.size()) {
                if let Some(block) = take(layout.size()) {
                    return block;
                }
            }
            // SAFETY: a plain FFI call; mimalloc returns null on failure, as expected.
            unsafe { mi::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: as above.
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // A plain block of a kept size came from mimalloc's unaligned entries with at least
        // that size (or from a slot, which had it from there), so it can serve the next
        // allocation of that size.
        let free = if plain(layout.size(), layout.align()) && KEPT.contains(&layout.size()) {
            match keep(layout.size(), ptr) {
                Ok(None) => return,
                Ok(Some(evicted)) => evicted,
                Err(()) => ptr,
            }
        } else {
            ptr
        };
        // SAFETY: `free` came from this allocator (or a slot), so from mimalloc.
        unsafe { mi::mi_free(free.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the new block keeps the layout's alignment
        // by the same rule as `alloc`.
        unsafe {
            if plain(new_size, layout.align()) {
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

    /// A freed block between 1 and 16 KiB serves the next allocation of exactly its size, once;
    /// other sizes and larger alignments are not served from it.
    #[test]
    fn a_kept_block_serves_its_own_size_once() {
        if !KEEPS {
            return;
        }
        // Sizes nothing else here allocates, so that the slots hold only this test's blocks.
        let layout = Layout::from_size_align(3_333, 8).unwrap();
        let other = Layout::from_size_align(3_334, 8).unwrap();
        let wide = Layout::from_size_align(3_333, 64).unwrap();
        // SAFETY: each block is freed once, with the layout it was allocated with.
        unsafe {
            let a = MiMalloc.alloc(layout);
            a.write_bytes(7, layout.size());
            MiMalloc.dealloc(a, layout);
            let b = MiMalloc.alloc(layout);
            assert_eq!(b, a, "the kept block comes back");
            assert_eq!(b as usize % MALLOC_ALIGN, 0);
            let c = MiMalloc.alloc(layout);
            assert_ne!(c, b, "and only once");
            MiMalloc.dealloc(c, layout);
            let d = MiMalloc.alloc(other);
            assert_ne!(d, c, "not for another size");
            let e = MiMalloc.alloc(wide);
            assert_ne!(e, c, "nor for a larger alignment");
            assert_eq!(e as usize % 64, 0);
            for (p, l) in [(b, layout), (d, other), (e, wide)] {
                MiMalloc.dealloc(p, l);
            }
        }
    }

    /// More freed blocks than slots: the oldest are given back to mimalloc, every block handed
    /// out is distinct and whole, and a thread may end holding kept blocks (its destructor
    /// frees them).
    #[test]
    fn slots_evict_the_oldest_and_a_thread_may_end_holding_some() {
        let run = || {
            let layouts: Vec<Layout> = (0..3 * SLOTS)
                .map(|i| Layout::from_size_align(1_100 + 500 * i, 16).unwrap())
                .collect();
            // SAFETY: each block is written within its size and freed once, with its layout.
            unsafe {
                for round in 0..4u8 {
                    let blocks: Vec<*mut u8> = layouts.iter().map(|&l| MiMalloc.alloc(l)).collect();
                    for (&p, l) in blocks.iter().zip(&layouts) {
                        assert_eq!(p as usize % 16, 0);
                        p.write_bytes(round, l.size());
                    }
                    for (&p, l) in blocks.iter().zip(&layouts) {
                        assert!(std::slice::from_raw_parts(p, l.size())
                            .iter()
                            .all(|&b| b == round));
                    }
                    let mut sorted = blocks.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    assert_eq!(sorted.len(), blocks.len(), "a block handed out twice");
                    for (&p, &l) in blocks.iter().zip(&layouts) {
                        MiMalloc.dealloc(p, l);
                    }
                }
            }
        };
        run();
        std::thread::spawn(run).join().unwrap();
    }
}
