//! What a training run records: one [`EpochRecord`] per epoch and the loss of every
//! step, returned as a value and writable as CSV.

use std::fmt::Write as _;
use std::path::Path;

use crate::checkpoint::write_atomic;
use crate::Result;

/// One epoch's means per image (the VAE's terms where the model has them).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss per image: `-bound` for a VAE, the MSE per pixel for an
    /// autoencoder.
    pub loss: f64,
    /// Mean reconstruction term `-E_q log p(x|z)` (VAEs).
    pub recon: Option<f64>,
    /// Mean KL term (VAEs).
    pub kl: Option<f64>,
    /// Wall-clock seconds of the epoch's steps.
    pub seconds: f64,
    /// Adam's learning rate at the epoch's last step.
    pub lr: f64,
    /// The ELBO's beta at the epoch's last step (VAEs trained on the ELBO).
    pub beta: Option<f64>,
    /// Batches skipped for a non-finite loss ([`super::NonFinitePolicy::SkipBatch`]).
    pub skipped: usize,
}

/// The records of a run (from the first epoch it trained: a resumed run's start after
/// the checkpoint's epoch).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// One record per epoch trained.
    pub epochs: Vec<EpochRecord>,
    /// `(epoch + fraction of it done, loss)` after every step, for a loss curve.
    pub steps: Vec<(f64, f64)>,
}

impl History {
    /// The median of the epochs' seconds (0 with no epoch).
    pub fn median_epoch_seconds(&self) -> f64 {
        let mut t = self.epoch_seconds();
        t.sort_by(f64::total_cmp);
        match t.len() {
            0 => 0.0,
            n if n % 2 == 1 => t[n / 2],
            n => 0.5 * (t[n / 2 - 1] + t[n / 2]),
        }
    }

    /// The seconds of each epoch.
    pub fn epoch_seconds(&self) -> Vec<f64> {
        self.epochs.iter().map(|e| e.seconds).collect()
    }

    /// `(epoch, mean loss)` per epoch, for a loss curve.
    pub fn epoch_means(&self) -> Vec<(f64, f64)> {
        self.epochs.iter().map(|e| (e.epoch as f64, e.loss)).collect()
    }

    /// The epochs as CSV text: a header line, then one line per epoch (empty fields where
    /// a model has no such term).
    pub fn to_csv(&self) -> String {
        let mut s = String::from("epoch,loss,recon,kl,seconds,lr,beta,skipped\n");
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for e in &self.epochs {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{}",
                e.epoch,
                e.loss,
                opt(e.recon),
                opt(e.kl),
                e.seconds,
                e.lr,
                opt(e.beta),
                e.skipped
            );
        }
        s
    }

    /// Writes [`History::to_csv`] to `path` (atomically: a failure leaves any previous file).
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_csv().as_bytes())
    }
}
