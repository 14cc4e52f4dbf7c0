//! Flush-to-zero for subnormal floats on every computing thread.
//!
//! With weight decay, weights fed by MNIST's always-zero border pixels shrink
//! geometrically into the subnormal range, where x86 arithmetic is many times slower: this
//! is why PyTorch's conv AE epochs grow from 55 s to 119 s over a run. The FTZ/DAZ control
//! bits live in each thread's MXCSR register, so they are set on the calling thread and on
//! every worker of rayon's pool.

/// Sets flush-to-zero and denormals-are-zero on this thread and on every thread of rayon's
/// global pool. A no-op on architectures other than x86-64. Returns whether it applied.
/// Process-wide: a program asks for it through [`crate::runtime::Runtime`].
pub fn flush_denormals() -> bool {
    let here = set_this_thread();
    rayon::broadcast(|_| set_this_thread());
    here
}

#[cfg(target_arch = "x86_64")]
fn set_this_thread() -> bool {
    const FTZ: u32 = 1 << 15;
    const DAZ: u32 = 1 << 6;
    let mut csr: u32 = 0;
    // SAFETY: reading and writing MXCSR only changes this thread's rounding of subnormals.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= FTZ | DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
    }
    true
}

#[cfg(not(target_arch = "x86_64"))]
fn set_this_thread() -> bool {
    false
}
