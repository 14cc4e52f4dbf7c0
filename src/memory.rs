//! Keeping freed memory in the process, so that the next step's arrays do not page-fault.
//!
//! A training step allocates its layer outputs and gradients afresh (each a few MB to tens
//! of MB) and frees them at the end. glibc's malloc hands such blocks back to the kernel on
//! free (they sit above its mmap threshold, or at the trimmed top of a heap), so every step
//! faults every page of them in again and the kernel zeroes each one: `perf` showed 10-30%
//! of a step in `clear_page` and `exc_page_fault`. Raising the two thresholds keeps the
//! pages mapped and reused. glibc caps the mmap threshold at 32 MiB, and the DCGAN VAE's
//! widest activations at batch 1024 are 44 MB, so mmap is also switched off altogether
//! (`M_MMAP_MAX = 0`): every block then comes from the heap and stays there. The cost is
//! that the process holds on to its peak memory.
//!
//! The steps run on rayon's workers (`pool::on_worker`), and glibc gives threads other than
//! the main one their own arenas, each a chain of heaps of at most 64 MiB. A block too
//! large for the current heap (the DCGAN VAE's 44 MB activations) gets a heap of its own,
//! and when it is freed glibc deletes a heap left empty unless the heap before it lacks
//! `M_TOP_PAD` of room: each DCGAN step mapped and unmapped such heaps and faulted in
//! 42 MB afresh (10,800 page faults a step, some 4% of its time). A top pad of one whole
//! heap keeps them. (One arena for all threads, `M_ARENA_MAX = 1`, stopped the faults
//! too, but the two threads of a data-parallel step then queued on its lock, some 80
//! times a step.)

/// Largest block glibc allows below its mmap threshold (`HEAP_MAX_SIZE / 2` on 64-bit).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Room kept at the top of a heap: one whole thread heap (`HEAP_MAX_SIZE` on 64-bit), so
/// that glibc never finds a thread's emptied heap worth deleting. Address space only:
/// pages that are not written are not faulted in.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: libc::c_int = 64 << 20;

/// Tells the allocator to keep freed blocks in the process instead of returning them to
/// the kernel: no mmap'd blocks, no trimming of the heap, no deleting of a thread's heaps.
/// Process-wide: a program asks for it through [`crate::runtime::Runtime`] (the
/// `Trainer`, the examples and the benches do); no other library call makes it. Returns whether it applied: it does with glibc on Linux, and is a no-op
/// elsewhere.
pub fn keep_freed_memory() -> bool {
    keep_freed_memory_impl()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory_impl() -> bool {
    // SAFETY: mallopt only changes allocator tuning parameters; it is thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
            && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory_impl() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_with_glibc_and_allocation_still_works() {
        let applied = keep_freed_memory();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Blocks below and above the threshold still allocate, free and reallocate.
        for &n in &[1usize << 10, 16 << 20, 40 << 20] {
            let v = vec![1u8; n];
            assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), n);
            drop(v);
            let w = vec![0u8; n];
            assert!(
                w.iter().all(|&b| b == 0),
                "a reused block must come back zeroed by vec!"
            );
        }
    }

    /// Minor page faults of the calling thread so far.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn thread_page_faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a valid value.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    /// The DCGAN VAE's case: on a thread other than the main one, two 44 MB activations
    /// alive at once do not fit one 64 MiB heap, so the second gets a heap of its own;
    /// freed and asked for again, they must come back without faulting their pages in
    /// afresh. (Without the top pad the later rounds each faulted 11,265 pages in.)
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_worker_threads_large_blocks_are_reused_without_page_faults() {
        assert!(keep_freed_memory());
        std::thread::spawn(|| {
            let mut faults = Vec::new();
            for _ in 0..3 {
                let before = thread_page_faults();
                // vec! of a non-zero value writes every byte, so every page is touched.
                let a = std::hint::black_box(vec![1u8; 44 << 20]);
                let b = std::hint::black_box(vec![1u8; 44 << 20]);
                faults.push(thread_page_faults() - before);
                drop(a);
                drop(b);
            }
            // 2 x 44 MB is 22,528 pages of 4 KiB: the first round faults them in (unless
            // the thread inherits a used arena), the later ones must find them mapped.
            assert!(
                faults[1] < 200 && faults[2] < 200,
                "freed pages were given back: {faults:?}"
            );
        })
        .join()
        .unwrap();
    }
}
