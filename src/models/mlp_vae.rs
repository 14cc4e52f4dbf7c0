//! The VAE with one stochastic layer of Burda, Grosse & Salakhutdinov (2015), the MLP VAE
//! most people meet first: `encoder` = Linear, Tanh, Linear, Tanh; linear heads `fc_mu`,
//! `fc_logvar`; `decoder` = Linear, Tanh, Linear, Tanh, Linear to Bernoulli logits; prior
//! N(0, I). The paper's sizes on MNIST: 784 -> 200 -> 200 -> 50 and back. Weights are
//! initialised by Glorot and Bengio's heuristic, as in the paper.

use rand::Rng;

use crate::loss::Reduction;
use crate::nn::{Activation, ActivationLayer, Flatten, Linear, Sequential, Unflatten};
use crate::vae::{GaussianHeads, KlEstimator, Likelihood, LossConfig, Objective, PosteriorHead, VaeModel};
use crate::{Error, Float, Result};

impl<F: Float> VaeModel<F> {
    /// The one-stochastic-layer MLP VAE for `image` (flattened: `c * h * w` pixels), with
    /// encoder widths `hidden = [h1, h2]` (the decoder mirrors them) and `latent`
    /// dimensions, Bernoulli on logits, and PyTorch `state_dict` names `encoder.0`,
    /// `encoder.2`, `fc_mu`, `fc_logvar`, `decoder.0`, `decoder.2`, `decoder.4`. Its
    /// recipe is the k-sample bound on normalised log-weights (the Monte-Carlo KL),
    /// averaged over the batch.
    pub fn mlp<R: Rng + ?Sized>(image: [usize; 3], hidden: [usize; 2], latent: usize, rng: &mut R) -> Result<Self> {
        let (encoder, head, decoder) = mlp_parts(image, hidden, latent, 0, rng)?;
        let model = VaeModel::new(image, latent, encoder, head, decoder, Likelihood::BernoulliLogits)?;
        Ok(model.with_recipe(mlp_recipe()))
    }

    /// [`VaeModel::mlp`] conditioned on the labels of `classes` classes
    /// ([`VaeModel::conditional`]): the encoder's first layer also takes the label's
    /// one-hot planes (`(c + classes) * h * w` inputs), the decoder's the one-hot label
    /// after the code (`latent + classes`).
    pub fn mlp_conditional<R: Rng + ?Sized>(
        image: [usize; 3],
        hidden: [usize; 2],
        latent: usize,
        classes: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let (encoder, head, decoder) = mlp_parts(image, hidden, latent, classes, rng)?;
        let model = VaeModel::conditional(
            image,
            latent,
            classes,
            encoder,
            head,
            decoder,
            Likelihood::BernoulliLogits,
        )?;
        Ok(model.with_recipe(mlp_recipe()))
    }

    /// Burda et al.'s one-stochastic-layer model for MNIST: 784 -> 200 -> 200 -> 50.
    pub fn mlp_burda<R: Rng + ?Sized>(rng: &mut R) -> Result<Self> {
        Self::mlp([1, 28, 28], [200, 200], 50, rng)
    }
}

/// The MLP VAE's recipe: the one-sample bound with the Monte-Carlo KL, averaged.
fn mlp_recipe() -> LossConfig {
    LossConfig {
        objective: Objective::Elbo { samples: 1, beta: 1.0 },
        kl: KlEstimator::MonteCarlo,
        reduction: Reduction::Mean,
    }
}

/// The MLP VAE's encoder, heads and decoder, with `classes` one-hot label planes into the
/// encoder and label columns into the decoder (none for 0).
fn mlp_parts<F: Float, R: Rng + ?Sized>(
    image: [usize; 3],
    hidden: [usize; 2],
    latent: usize,
    classes: usize,
    rng: &mut R,
) -> Result<(Sequential<F>, PosteriorHead<F>, Sequential<F>)> {
    let d: usize = image.iter().product();
    let [h1, h2] = hidden;
    if d == 0 || h1 == 0 || h2 == 0 || latent == 0 {
        return Err(Error::InvalidArgument(format!(
            "MLP VAE: image {image:?}, hidden {hidden:?} and latent {latent} must be >= 1"
        )));
    }
    let planes = classes * image[1] * image[2];
    let tanh = || ActivationLayer::new(Activation::Tanh);
    let encoder = Sequential::new()
        .push(Flatten::new())
        .push(Linear::glorot("encoder.0", d + planes, h1, rng))
        .push(tanh())
        .push(Linear::glorot("encoder.2", h1, h2, rng))
        .push(tanh());
    let head = PosteriorHead::Linear(GaussianHeads {
        mu: Linear::glorot("fc_mu", h2, latent, rng),
        logvar: Linear::glorot("fc_logvar", h2, latent, rng),
    });
    let decoder = Sequential::new()
        .push(Linear::glorot("decoder.0", latent + classes, h2, rng))
        .push(tanh())
        .push(Linear::glorot("decoder.2", h2, h1, rng))
        .push(tanh())
        .push(Linear::glorot("decoder.4", h1, d, rng))
        .push(Unflatten::new(&image));
    Ok((encoder, head, decoder))
}
