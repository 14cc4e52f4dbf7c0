//! What user code sees and may change from a [`super::Trainer`]'s hooks: before each step
//! a [`StepControl`], after each epoch an [`EpochControl`].
//!
//! A hook that changes the loss or the learning rate should set them from the step
//! number, as a schedule does (`beta = 4 * min(1, step / steps_per_epoch)`), rather than
//! nudge them from their last value: a run resumed from a checkpoint calls the hooks again
//! from the checkpoint's step, so it is then the same run.

use crate::optim::AdamConfig;
use crate::vae::{LossConfig, Objective};
use crate::Float;

use super::history::EpochRecord;
use super::StepStats;

/// Called before every step; changes to `loss` and `adam` apply from this step on.
pub struct StepControl<'a, F> {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based step within the epoch.
    pub step_in_epoch: usize,
    /// Steps in each epoch.
    pub steps_per_epoch: usize,
    /// 0-based step counted over the whole run (a resumed run counts the epochs before).
    pub step: usize,
    /// The VAE loss (the autoencoders train on their MSE and ignore it).
    pub loss: &'a mut LossConfig,
    /// Adam's hyper-parameters.
    pub adam: &'a mut AdamConfig<F>,
    /// The previous step's numbers (`None` at the run's first step).
    pub last: Option<StepStats>,
    pub(super) stop: bool,
}

impl<F: Float> StepControl<'_, F> {
    /// Sets the ELBO's beta (a KL warm-up); no effect on the IWAE objective.
    pub fn set_beta(&mut self, beta: f64) {
        if let Objective::Elbo { samples, .. } = self.loss.objective {
            self.loss.objective = Objective::Elbo { samples, beta };
        }
    }

    /// Ends training before this step (the model stays as the last step left it).
    pub fn stop(&mut self) {
        self.stop = true;
    }
}

/// Called after every epoch (after its checkpoint, if one is due).
pub struct EpochControl<'a, F> {
    /// The epoch just trained.
    pub record: &'a EpochRecord,
    /// The VAE loss, as for [`StepControl::loss`].
    pub loss: &'a mut LossConfig,
    /// Adam's hyper-parameters.
    pub adam: &'a mut AdamConfig<F>,
    pub(super) stop: bool,
}

impl<F: Float> EpochControl<'_, F> {
    /// Ends training after this epoch (early stopping); a checkpoint is written if the
    /// run keeps them.
    pub fn stop(&mut self) {
        self.stop = true;
    }
}
