//! [`Runtime`]: the process-wide settings that make training faster at some cost to the
//! rest of the process, in one place, switched on only when asked. A plain library call
//! (a layer's forward, `vae::loss_and_grad`, a PCA fit) changes none of them;
//! [`crate::train::Trainer`] applies [`Runtime::training`] at the start of a run unless
//! told otherwise, and the examples and benches apply it first thing.
//!
//! - `spin_workers`: while a step runs on rayon's pool ([`crate::pool::on_worker`]), the
//!   other workers keep looking for its jobs (up to [`crate::tuning::SPIN_LIMIT`] idle)
//!   instead of going to sleep between its parallel operations. A batch-1 step is a
//!   sixth faster; the cost is CPU time burnt while a step waits on one thread.
//! - `keep_freed_memory`: glibc keeps freed blocks mapped ([`crate::memory`]), so a step's
//!   arrays do not page-fault in afresh every step; the process holds its peak memory.
//! - `flush_denormals`: flush-to-zero and denormals-are-zero on the calling thread and on
//!   rayon's workers ([`crate::denormals`]): arithmetic on subnormal weights is many times
//!   slower, and results differ from IEEE only below `f32::MIN_POSITIVE`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether steps keep the other workers looking for their jobs; off until a runtime that
/// asks for it is applied.
static SPIN_WORKERS: AtomicBool = AtomicBool::new(false);

/// The process-wide settings; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// Keep rayon's other workers looking for a running step's jobs.
    pub spin_workers: bool,
    /// Keep freed memory in the process (glibc on Linux; elsewhere nothing).
    pub keep_freed_memory: bool,
    /// Flush subnormal floats to zero on every computing thread (x86-64).
    pub flush_denormals: bool,
}

/// What applying a [`Runtime`] did: each setting asked for, and whether it took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Workers now spin while a step runs.
    pub spin_workers: bool,
    /// glibc now keeps freed memory.
    pub keep_freed_memory: bool,
    /// The threads now flush subnormals.
    pub flush_denormals: bool,
}

impl Runtime {
    /// Everything on: what training programs want.
    pub fn training() -> Self {
        Runtime {
            spin_workers: true,
            keep_freed_memory: true,
            flush_denormals: true,
        }
    }

    /// Nothing changed: the process as it was.
    pub fn untouched() -> Self {
        Runtime {
            spin_workers: false,
            keep_freed_memory: false,
            flush_denormals: false,
        }
    }

    /// Switches on what this runtime asks for (nothing is switched off: another part of
    /// the program may have asked for it); returns what took effect.
    pub fn apply(&self) -> Applied {
        if self.spin_workers {
            SPIN_WORKERS.store(true, Ordering::Relaxed);
        }
        Applied {
            spin_workers: self.spin_workers,
            keep_freed_memory: self.keep_freed_memory && crate::memory::keep_freed_memory(),
            flush_denormals: self.flush_denormals && crate::denormals::flush_denormals(),
        }
    }
}

impl Default for Runtime {
    /// [`Runtime::untouched`].
    fn default() -> Self {
        Runtime::untouched()
    }
}

/// Whether a runtime that spins the workers has been applied.
pub(crate) fn spin_workers() -> bool {
    SPIN_WORKERS.load(Ordering::Relaxed)
}

/// Stops the workers' spinning again (for tests that compare the two).
#[doc(hidden)]
pub fn stop_spinning_workers() {
    SPIN_WORKERS.store(false, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default changes nothing, and applying it leaves a setting asked for earlier on;
    /// the training runtime switches the workers' spinning on and says what took effect.
    #[test]
    fn only_what_is_asked_for_is_switched_on() {
        assert_eq!(Runtime::default(), Runtime::untouched());
        let before = spin_workers();
        let applied = Runtime::untouched().apply();
        assert_eq!(
            applied,
            Applied {
                spin_workers: false,
                keep_freed_memory: false,
                flush_denormals: false
            }
        );
        assert_eq!(spin_workers(), before);
        let applied = Runtime::training().apply();
        assert!(applied.spin_workers && spin_workers());
        assert_eq!(applied.flush_denormals, cfg!(target_arch = "x86_64"));
        Runtime::untouched().apply();
        assert!(spin_workers(), "applying another runtime switches nothing off");
    }
}
