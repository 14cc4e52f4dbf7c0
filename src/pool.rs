//! Running a whole step on a worker of rayon's pool.
//!
//! A parallel operation started on a thread outside the pool (a program's main thread) is
//! handed to the pool while the caller sleeps until it is done: a hand-off and a wake-up
//! per operation. A ConvVAE training step at batch 1 has some twenty such operations
//! (each layer's products cut across the threads, Adam's passes over the large
//! parameters); started on a worker, they share their work with the other workers
//! directly, and only the step as a whole is handed over. On the Zen 3 host that took
//! the library's step medians from 3.22–3.43 ms to 2.54–2.90 ms on two threads
//! (alternated, see `docs/performance-log.md`; 3.23–4.04 to 2.91–3.10 ms in the probe that
//! tried it first). The steps go through [`on_worker`]:
//! [`crate::vae::loss_and_grad`], [`crate::vae::train_step`], [`crate::vae::evaluate`],
//! [`crate::vae::posterior_loss_and_grad`] (the ELBO ascent), [`crate::vae::decode_images`],
//! the data-parallel steps of the VAEs and the conv AE, [`crate::models::ConvAe`]'s
//! `loss_and_grad` and `train_step`, and [`crate::models::LinearAe`]'s `train_step` and
//! `train_step_rows`. The results are the same either way.

/// Runs `f` on a worker of rayon's pool: at once when called from one (nested calls cost
/// nothing), otherwise handed to the global pool as one job while the caller waits.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
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
}
