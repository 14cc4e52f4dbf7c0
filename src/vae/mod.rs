//! Variational autoencoders: the ELBO and its estimators, each a forward/backward pair.
//!
//! - [`posterior`](DiagGaussian): q(z|x) as a diagonal Gaussian (isotropic, `(mu, logvar)`
//!   or `(mean, log std)`), reparameterised sampling and its backward;
//! - KL to N(0, I): [`kl_diag`], [`kl_isotropic`] (closed form), [`kl_mc_isotropic`] (the CIS-522 Monte-Carlo
//!   estimate), [`log_ratio`] (per sample, for the Monte-Carlo ELBO and IWAE);
//! - likelihoods p(x|z): [`Likelihood`] (Gaussian with learned sigma_x, squared error,
//!   Bernoulli on probabilities or logits), [`log_likelihood`], [`log_p_x_gaussian`];
//! - bounds: [`Objective`] (ELBO with n samples and beta, IWAE with k), [`log_mean_exp`];
//! - posterior collapse: [`active_units`], [`posterior_mean_variance`];
//! - [`Vae`] and [`loss_and_grad`]: one training step for any model, with the backward
//!   pass through every estimator written out; [`DataParallel`]: the same step with the
//!   batch cut into one part per thread;
//! - [`VaeModel`]: a VAE assembled from an encoder, a [`PosteriorHead`], a decoder and a
//!   [`PixelLikelihood`] (the notebooks' models are presets of it, in [`crate::models`]).

mod bound;
mod collapse;
mod data_parallel;
mod kl;
mod layout;
mod likelihood;
mod model;
mod posterior;
mod step;

pub use crate::data_parallel::DataParallel;
pub use bound::{bound_of_log_weights, log_mean_exp, log_mean_exp_backward, Objective};
pub use collapse::{active_units, posterior_mean_variance, ACTIVE_UNIT_THRESHOLD};
pub use kl::{
    kl_diag, kl_diag_backward, kl_isotropic, kl_mc_isotropic, kl_mc_isotropic_backward, log_ratio, log_ratio_backward,
};
pub use layout::{PosteriorForm, VaeLayout};
pub use likelihood::{
    log_likelihood, log_likelihood_backward, log_p_x_gaussian, log_p_x_gaussian_backward, Likelihood, HALF_LN_2PI,
};
pub use model::{GaussianHeads, PixelLikelihood, PosteriorHead, VaeModel};
pub use posterior::DiagGaussian;
pub use step::{
    decode_images, evaluate, iwae_log_likelihood, loss_and_grad, one_sample, posterior_loss_and_grad, sample_noise,
    train_step, KlEstimator, LossConfig, LossParts, Vae,
};
