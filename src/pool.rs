//! Running a whole step on a worker of rayon's pool, with the other workers kept awake.
//!
//! A parallel operation started on a thread outside the pool (a program's main thread) is
//! handed to the pool while the caller sleeps until it is done: a hand-off and a wake-up
//! per operation. A ConvVAE training step at batch 1 has some twenty such operations
//! (each layer's products cut across the threads, Adam's passes over the large
//! parameters); started on a worker, they share their work with the other workers
//! directly, and only the step as a whole is handed over: on two threads a fifth of a
//! batch-1 step's time (the measurements are in `docs/performance-log.md`).
//!
//! Between two of those operations the other workers find nothing to do, and after some
//! thirty rounds of `sched_yield` rayon puts them to sleep; the next operation's jobs then
//! wait for a wake-up through the kernel (tens of microseconds in a VM), twenty times a
//! step. So while a step runs, when the program has asked for it
//! ([`crate::runtime::Runtime::spin_workers`]: the `Trainer` and the examples do, a plain
//! library call does not), [`on_worker`] keeps every other worker looking for its
//! jobs ([`rayon::yield_now`] and a short pause, no system calls), until the step ends
//! or a worker has found nothing for [`SPIN_LIMIT`]; not when the pool has more workers
//! than the process has CPUs. That saves another sixth of a batch-1 ConvVAE step and
//! leaves the steps of larger batches, which keep both threads busy, where they were.
//!
//! Steps started from several threads at once share the workers: the helpers run any
//! step's jobs, and a call returns once every worker has let go of it, which can be after
//! a job of another step that a helper had taken up.
//!
//! The steps go through [`on_worker`]: [`crate::vae::loss_and_grad`],
//! [`crate::vae::train_step`], [`crate::vae::evaluate`],
//! [`crate::vae::posterior_loss_and_grad`] (the ELBO ascent), [`crate::vae::decode_images`],
//! the data-parallel steps of the VAEs and the conv AE, [`crate::models::ConvAe`]'s
//! `loss_and_grad` and `train_step`, and [`crate::models::LinearAe`]'s `train_step` and
//! `train_step_rows`. The results are the same either way.

use crate::tuning;
pub use crate::tuning::SPIN_LIMIT;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Runs `f` on a worker of rayon's pool: at once when called from one (nested calls cost
/// nothing), otherwise on the global pool's first worker while the others look for its
/// jobs without sleeping (see the module's doc), and the caller waits. A panic in `f`
/// reaches the caller.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    if !crate::runtime::spin_workers() || !workers_fit_the_cpus() {
        // Not asked for ([`crate::runtime::Runtime`]), or more workers than CPUs (a
        // looking worker would take a CPU from a working one): a plain hand-off.
        return rayon::scope(|_| f());
    }
    let done = AtomicBool::new(false);
    let f = Mutex::new(Some(f));
    let mut results = rayon::broadcast(|ctx| {
        if ctx.index() != 0 {
            help_until(&done);
            return None;
        }
        // Set on the way out, panic or not, so that the helpers stop.
        let _done = SetOnDrop(&done);
        let f = f.lock().unwrap_or_else(|e| e.into_inner()).take();
        Some(f.expect("the step runs once, on worker 0")())
    });
    results.swap_remove(0).expect("worker 0 ran the step")
}

/// Whether the global pool has no more workers than the CPUs this process may run on
/// (with `RAYON_NUM_THREADS=4` on two CPUs, three workers looking made the batch-1
/// ConvVAE step's median 5.2–5.4 ms against 2.7–3.0 ms without; with this check it is
/// 2.6–3.2 ms). Asked once: reading the affinity mask and cgroup quota costs system calls.
fn workers_fit_the_cpus() -> bool {
    static FIT: OnceLock<bool> = OnceLock::new();
    *FIT.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::current_num_threads() <= cpus
    })
}

/// Runs the pool's jobs on this worker until `done` is set or none has come for
/// [`tuning::SPIN_LIMIT`]. The pause between looks keeps the worker off the deques' cache lines
/// (and off the core's shared units, where the two vCPUs are one core's two threads).
fn help_until(done: &AtomicBool) {
    let mut idle_since: Option<Instant> = None;
    let mut looks = 0u32;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = None;
            continue;
        }
        looks = looks.wrapping_add(1);
        // The clock only every 64 looks: reading it costs more than a look.
        if looks % 64 == 0 && idle_since.get_or_insert_with(Instant::now).elapsed() > tuning::SPIN_LIMIT {
            return;
        }
        for _ in 0..16 {
            std::hint::spin_loop();
        }
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From outside the pool the closure runs on a worker; from a worker, on that worker.
    #[test]
    fn runs_on_a_worker_of_the_pool() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let outside = std::thread::spawn(|| on_worker(rayon::current_thread_index))
            .join()
            .unwrap();
        assert!(outside.is_some(), "outside the pool: ran on {outside:?}");
        pool.install(|| {
            let here = rayon::current_thread_index();
            assert_eq!(on_worker(rayon::current_thread_index), here);
        });
    }

    /// The jobs a step forks are run (by the helpers or by the step's own worker) and
    /// joined, step after step, and each step returns once they are done.
    #[test]
    fn the_jobs_a_step_forks_all_run() {
        use rayon::prelude::*;
        for round in 0..200u64 {
            let sum: u64 = on_worker(|| {
                (0..1000u32)
                    .into_par_iter()
                    .with_min_len(10)
                    .map(|i| u64::from(i) * round)
                    .sum()
            });
            assert_eq!(sum, 499_500 * round);
        }
    }

    /// A panic in the step reaches the caller, and the pool runs the next step.
    #[test]
    fn a_panic_in_the_step_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| on_worker(|| panic!("the step failed")));
        let message = caught.expect_err("the panic came back");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"the step failed"));
        assert_eq!(on_worker(|| 7), 7);
    }
}
