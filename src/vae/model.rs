//! [`VaeModel`]: a VAE assembled from parts. An encoder ([`Sequential`] of any layers),
//! a [`PosteriorHead`] that turns its output into q(z|x), a decoder ([`Sequential`]) and a
//! [`PixelLikelihood`] that scores images against the decoder's output; the prior is
//! N(0, I). The notebooks' models are presets that build one (`VaeModel::strided`,
//! `VaeModel::conv`, `VaeModel::dcgan`, `VanillaVaeParams::build` in [`crate::models`]).
//!
//! What a backend needs to know is read off the layers, never declared by hand:
//! [`VaeModel::couples_batch`] (may a batch be cut across threads?) and
//! [`VaeModel::layout`] (the model as data, for the GPU trainer).

use ndarray::{s, Array0, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMutD, Ix2, Ix4};
use rand::Rng;

use super::{DiagGaussian, KlEstimator, Likelihood, LossConfig, Objective, PosteriorForm, Vae, VaeLayout};
use crate::loss::Reduction;
use crate::nn::{Layer, LayerSpec, Linear, Mode, Module, Param, Sequential};
use crate::{Error, Float, Result};

/// Two Linear layers from the encoder's features to `mu` and `logvar`.
#[derive(Debug, Clone)]
pub struct GaussianHeads<F> {
    /// Features to means.
    pub mu: Linear<F>,
    /// Features to log variances.
    pub logvar: Linear<F>,
}

impl<F: Float> GaussianHeads<F> {
    /// Heads named `mu_name` and `logvar_name` (their `state_dict` prefixes), with
    /// PyTorch's default initialisation.
    pub fn new<R: Rng + ?Sized>(
        (mu_name, logvar_name): (&str, &str),
        features: usize,
        latent: usize,
        rng: &mut R,
    ) -> Self {
        GaussianHeads {
            mu: Linear::new(mu_name, features, latent, true, rng),
            logvar: Linear::new(logvar_name, features, latent, true, rng),
        }
    }

    /// q(z|x) from features `[b, d]`; outside [`Mode::Eval`] the features are kept for
    /// [`GaussianHeads::backward`].
    pub fn forward(&mut self, h: ArrayView2<F>, mode: Mode) -> Result<DiagGaussian<F>> {
        if mode.keeps_cache() {
            DiagGaussian::new(
                self.mu.forward2(h.to_owned(), mode)?,
                self.logvar.forward2(h.to_owned(), mode)?,
            )
        } else {
            DiagGaussian::new(self.mu.infer(h)?, self.logvar.infer(h)?)
        }
    }

    /// The gradient with respect to the features, from those with respect to `mu` and
    /// `logvar`; accumulates into the heads' parameter gradients.
    pub fn backward(&mut self, dmu: Array2<F>, dlogvar: Array2<F>) -> Result<Array2<F>> {
        let mut dh = self.mu.backward2(dmu, true)?.expect("asked for dx");
        dh += &self.logvar.backward2(dlogvar, true)?.expect("asked for dx");
        Ok(dh)
    }
}

impl<F: Float> Module<F> for GaussianHeads<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.mu.visit_params(f);
        self.logvar.visit_params(f);
    }
}

/// How the encoder's output `[b, d]` becomes q(z|x).
// One per model, never in a collection: the size of the unboxed heads costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum PosteriorHead<F> {
    /// Two Linear heads from `d` features to `mu` and `logvar` (the strided VAE, AntixK,
    /// Burda et al.'s MLP VAE).
    Linear(GaussianHeads<F>),
    /// `d = 2K` columns `(mean, log std)` (the Coursera DCGAN VAE).
    MeanLogStd,
    /// `d = K + 1` columns `(mu, log sigma)`, one sigma for every dimension (CIS-522).
    Isotropic,
}

impl<F: Float> PosteriorHead<F> {
    /// Linear heads `features -> latent`, named `mu_name` and `logvar_name`.
    pub fn linear<R: Rng + ?Sized>(names: (&str, &str), features: usize, latent: usize, rng: &mut R) -> Self {
        PosteriorHead::Linear(GaussianHeads::new(names, features, latent, rng))
    }

    /// The encoder output width this head expects for `latent` dimensions.
    fn encoder_width(&self, latent: usize) -> usize {
        match self {
            PosteriorHead::Linear(h) => h.mu.in_features(),
            PosteriorHead::MeanLogStd => 2 * latent,
            PosteriorHead::Isotropic => latent + 1,
        }
    }

    /// The form as data (for the GPU's plan).
    fn form(&self) -> PosteriorForm {
        match self {
            PosteriorHead::Linear(h) => PosteriorForm::LinearHeads {
                features: h.mu.in_features(),
            },
            PosteriorHead::MeanLogStd => PosteriorForm::MeanLogStd,
            PosteriorHead::Isotropic => PosteriorForm::Isotropic,
        }
    }
}

/// How images are scored against the decoder's output: a fixed [`Likelihood`], or a
/// Gaussian whose scalar `log sigma_x` is a parameter of the model (CIS-522's ConvVAE).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum PixelLikelihood<F> {
    /// A likelihood with nothing to learn (a Gaussian with a fixed sigma_x, squared error,
    /// Bernoulli on probabilities or on logits).
    Fixed(Likelihood<F>),
    /// `N(x; mean, sigma_x^2 I)` with `log sigma_x` learned.
    LearnedGaussian {
        /// `log sigma_x`, a scalar parameter.
        log_sig_x: Param<F>,
        /// Include the `-0.5 log 2 pi` term per pixel (a density), or not (the notebook's form).
        normalised: bool,
    },
}

impl<F: Float> PixelLikelihood<F> {
    /// A Gaussian with a learned `log sigma_x` named `name`, starting at `init`.
    pub fn learned_gaussian(name: &str, init: F, normalised: bool) -> Self {
        PixelLikelihood::LearnedGaussian {
            log_sig_x: Param::new(name, Array0::from_elem((), init).into_dyn()),
            normalised,
        }
    }

    /// The likelihood at the current parameter values.
    pub fn current(&self) -> Likelihood<F> {
        match self {
            PixelLikelihood::Fixed(l) => *l,
            PixelLikelihood::LearnedGaussian { log_sig_x, normalised } => Likelihood::Gaussian {
                log_sig_x: *log_sig_x.value.first().expect("scalar"),
                normalised: *normalised,
            },
        }
    }
}

impl<F: Float> From<Likelihood<F>> for PixelLikelihood<F> {
    fn from(l: Likelihood<F>) -> Self {
        PixelLikelihood::Fixed(l)
    }
}

/// A VAE assembled from parts; see the module docs. Parameters are visited in the order
/// `log sigma_x` (if learned), the encoder's, the heads' (if linear), the decoder's: a
/// module's own parameters before its children's, as PyTorch's `state_dict` lists them.
pub struct VaeModel<F> {
    /// Images `[b, c, h, w]` to `[b, d]` (ending in a Flatten or a Linear).
    pub encoder: Sequential<F>,
    /// `[b, d]` to q(z|x).
    pub head: PosteriorHead<F>,
    /// Codes `[m, K]` to the likelihood's parameters, `[m, c, h, w]`.
    pub decoder: Sequential<F>,
    /// How images are scored against the decoder's output.
    pub likelihood: PixelLikelihood<F>,
    image: [usize; 3],
    latent: usize,
    recipe: LossConfig,
    last_encoding: Option<Array2<F>>,
    condition: Option<Condition<F>>,
}

/// A conditional VAE's number of classes, and the one-hot labels `[b, classes]` of the
/// images it is working on ([`Vae::condition_on`]).
#[derive(Debug, Clone)]
struct Condition<F> {
    classes: usize,
    one_hot: Array2<F>,
}

impl<F: Float> Clone for VaeModel<F> {
    fn clone(&self) -> Self {
        VaeModel {
            encoder: self.encoder.clone(),
            head: self.head.clone(),
            decoder: self.decoder.clone(),
            likelihood: self.likelihood.clone(),
            image: self.image,
            latent: self.latent,
            recipe: self.recipe,
            last_encoding: self.last_encoding.clone(),
            condition: self.condition.clone(),
        }
    }
}

impl<F: Float> VaeModel<F> {
    /// A VAE for `image = [c, h, w]` images with `latent` dimensions. The parts are checked
    /// against each other by passing one blank image through them (evaluation mode:
    /// nothing is kept or updated): an encoder whose output does not fit the head, or a
    /// decoder that does not return images of `image`'s shape, is an error naming them.
    /// The loss it trains on by default ([`VaeModel::recipe`]) is the one-sample ELBO with
    /// the closed-form KL, averaged over the batch.
    pub fn new(
        image: [usize; 3],
        latent: usize,
        encoder: Sequential<F>,
        head: PosteriorHead<F>,
        decoder: Sequential<F>,
        likelihood: impl Into<PixelLikelihood<F>>,
    ) -> Result<Self> {
        let mut model = Self::new_unchecked(image, latent, encoder, head, decoder, likelihood.into())?;
        model.check_parts()?;
        Ok(model)
    }

    /// [`VaeModel::new`] before the parts are run against each other.
    fn new_unchecked(
        image: [usize; 3],
        latent: usize,
        encoder: Sequential<F>,
        head: PosteriorHead<F>,
        decoder: Sequential<F>,
        likelihood: PixelLikelihood<F>,
    ) -> Result<Self> {
        if latent == 0 || image.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "VaeModel: image {image:?} and latent ({latent}) must be >= 1"
            )));
        }
        if let PosteriorHead::Linear(h) = &head {
            if h.mu.out_features() != latent || h.logvar.out_features() != latent {
                return Err(Error::InvalidArgument(format!(
                    "VaeModel: the linear heads give {} means and {} log variances, not latent = {latent}",
                    h.mu.out_features(),
                    h.logvar.out_features()
                )));
            }
            if h.logvar.in_features() != h.mu.in_features() {
                return Err(Error::InvalidArgument(
                    "VaeModel: the two linear heads take different feature widths".into(),
                ));
            }
        }
        Ok(VaeModel {
            encoder,
            head,
            decoder,
            likelihood,
            image,
            latent,
            recipe: LossConfig {
                objective: Objective::Elbo { samples: 1, beta: 1.0 },
                kl: KlEstimator::Closed,
                reduction: Reduction::Mean,
            },
            last_encoding: None,
            condition: None,
        })
    }

    /// A conditional VAE (as Pyro's CVAE and AntixK's `cvae`): the one-hot label of each
    /// image joins the encoder's input as `classes` constant planes after the image's
    /// channels (the encoder takes `[b, c + classes, h, w]`), and the decoder's input
    /// after the code (it takes `[m, latent + classes]`). [`Vae::condition_on`] gives the
    /// labels before each forward ([`crate::train::Trainer`] and the evaluation do).
    /// The label is data: no gradient flows to it, and the code's gradient is the first
    /// `latent` columns of the decoder's input gradient.
    pub fn conditional(
        image: [usize; 3],
        latent: usize,
        classes: usize,
        encoder: Sequential<F>,
        head: PosteriorHead<F>,
        decoder: Sequential<F>,
        likelihood: impl Into<PixelLikelihood<F>>,
    ) -> Result<Self> {
        if classes < 2 {
            return Err(Error::InvalidArgument(format!(
                "VaeModel::conditional: {classes} classes; a condition needs at least 2"
            )));
        }
        // Checked with the label's inputs in place.
        let mut model = VaeModel::new_unchecked(image, latent, encoder, head, decoder, likelihood.into())?;
        model.condition = Some(Condition {
            classes,
            one_hot: Array2::zeros((0, classes)),
        });
        model.check_parts()?;
        Ok(model)
    }

    /// The labels' classes, for a conditional model.
    pub fn conditional_classes(&self) -> Option<usize> {
        self.condition.as_ref().map(|c| c.classes)
    }

    /// The images `x` with the one-hot planes of their labels after their channels.
    fn with_label_planes(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let Some(cond) = &self.condition else {
            return Ok(x.to_owned());
        };
        let (b, c, h, w) = x.dim();
        if cond.one_hot.nrows() != b {
            return Err(Error::InvalidArgument(format!(
                "conditional VAE: {} labels given (condition_on) for {b} images",
                cond.one_hot.nrows()
            )));
        }
        let mut out = Array4::zeros((b, c + cond.classes, h, w));
        out.slice_mut(s![.., ..c, .., ..]).assign(&x);
        for (i, row) in cond.one_hot.outer_iter().enumerate() {
            for (k, &v) in row.iter().enumerate() {
                out.slice_mut(s![i, c + k, .., ..]).fill(v);
            }
        }
        Ok(out)
    }

    /// The codes `z` `[m, K]` with the one-hot label of each code's image after it: `m`
    /// is a whole number of codes per labelled image, image-major (as the noise is drawn).
    fn with_label_columns(&self, z: ArrayView2<F>) -> Result<Array2<F>> {
        let Some(cond) = &self.condition else {
            return Ok(z.to_owned());
        };
        let (m, k, b) = (z.nrows(), z.ncols(), cond.one_hot.nrows());
        if b == 0 || m % b != 0 {
            return Err(Error::InvalidArgument(format!(
                "conditional VAE: {m} codes for {b} labels (condition_on); expected a whole number per label"
            )));
        }
        let per = m / b;
        let mut out = Array2::zeros((m, k + cond.classes));
        out.slice_mut(s![.., ..k]).assign(&z);
        for r in 0..m {
            out.slice_mut(s![r, k..]).assign(&cond.one_hot.row(r / per));
        }
        Ok(out)
    }

    /// The same model with `recipe` as its training loss (a preset's notebook loss).
    pub fn with_recipe(mut self, recipe: LossConfig) -> Self {
        self.recipe = recipe;
        self
    }

    /// The same model scored with `likelihood` instead.
    pub fn with_likelihood(mut self, likelihood: impl Into<PixelLikelihood<F>>) -> Self {
        self.likelihood = likelihood.into();
        self
    }

    /// The loss this model is meant to train on: for a preset, its notebook's.
    pub fn recipe(&self) -> LossConfig {
        self.recipe
    }

    /// The encoder's raw output `[b, d]` of the last forward pass (CIS-522's `phi`, the
    /// Coursera `(mean, log std)`, or the linear heads' features).
    pub fn last_encoding(&self) -> Option<&Array2<F>> {
        self.last_encoding.as_ref()
    }

    /// The learned pixel noise `sigma_x`, if the likelihood has one.
    pub fn sigma_x(&self) -> Option<F> {
        match &self.likelihood {
            PixelLikelihood::LearnedGaussian { log_sig_x, .. } => log_sig_x.value.first().map(|v| v.exp()),
            PixelLikelihood::Fixed(_) => None,
        }
    }

    /// Whether the training loss of one image depends on the other images of its batch
    /// (a BatchNorm in training mode, or a layer that does not describe itself): then a
    /// batch may not be cut into parts for several threads.
    pub fn couples_batch(&self) -> bool {
        self.encoder.couples_batch() || self.decoder.couples_batch()
    }

    /// The model as data, for backends that train it elsewhere (the CUDA trainer): an
    /// error names a layer that does not describe itself.
    pub fn layout(&self) -> Result<VaeLayout> {
        if self.condition.is_some() {
            return Err(Error::Device("the GPU path has no conditional VAE".into()));
        }
        let encoder = self.encoder.spec().flattened();
        let decoder = self.decoder.spec().flattened();
        if let Some(LayerSpec::Opaque(name)) = encoder
            .iter()
            .chain(&decoder)
            .find(|l| matches!(l, LayerSpec::Opaque(_)))
        {
            return Err(Error::Device(format!(
                "layer {name} does not describe itself (Layer::spec), so no other backend can run it"
            )));
        }
        Ok(VaeLayout {
            learned_log_sig_x: matches!(self.likelihood, PixelLikelihood::LearnedGaussian { .. }),
            encoder,
            posterior: self.head.form(),
            decoder,
        })
    }

    /// One blank image through encoder, head and decoder, in evaluation mode.
    fn check_parts(&mut self) -> Result<()> {
        let [c, h, w] = self.image;
        // A conditional model's parts also take the label's planes and columns.
        let extra = self.conditional_classes().unwrap_or(0);
        let x = Array4::<F>::zeros((1, c + extra, h, w));
        let enc = self.encoder.forward(x.into_dyn(), Mode::Eval).map_err(|e| {
            Error::InvalidArgument(format!(
                "VaeModel: the encoder cannot take {:?} images{}: {e}",
                self.image,
                if extra > 0 {
                    format!(" with {extra} label planes")
                } else {
                    String::new()
                }
            ))
        })?;
        let want = self.head.encoder_width(self.latent);
        if enc.shape() != [1, want] {
            return Err(Error::InvalidArgument(format!(
                "VaeModel: the encoder gives {:?} per batch of one image; the posterior head needs [1, {want}]",
                enc.shape()
            )));
        }
        let z = Array2::<F>::zeros((1, self.latent + extra));
        let out = self.decoder.forward(z.into_dyn(), Mode::Eval).map_err(|e| {
            Error::InvalidArgument(format!(
                "VaeModel: the decoder cannot take [1, {}] codes (latent {} + {extra} label columns): {e}",
                self.latent + extra,
                self.latent
            ))
        })?;
        if out.shape() != [1, c, h, w] {
            return Err(Error::InvalidArgument(format!(
                "VaeModel: the decoder gives {:?} for one code; the images are [1, {c}, {h}, {w}]",
                out.shape()
            )));
        }
        Ok(())
    }
}

impl<F: Float> Module<F> for VaeModel<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        if let PixelLikelihood::LearnedGaussian { log_sig_x, .. } = &mut self.likelihood {
            f(log_sig_x);
        }
        self.encoder.visit_params(f);
        if let PosteriorHead::Linear(h) = &mut self.head {
            h.visit_params(f);
        }
        self.decoder.visit_params(f);
    }

    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, ArrayViewMutD<F>)) {
        self.encoder.visit_buffers(f);
        self.decoder.visit_buffers(f);
    }

    fn visit_counters(&mut self, f: &mut dyn FnMut(&str, &mut u64)) {
        self.encoder.visit_counters(f);
        self.decoder.visit_counters(f);
    }
}

impl<F: Float> Vae<F> for VaeModel<F> {
    fn image_shape(&self) -> [usize; 3] {
        self.image
    }

    fn latent_dim(&self) -> usize {
        self.latent
    }

    fn encode(&mut self, x: ArrayView4<F>, mode: Mode) -> Result<DiagGaussian<F>> {
        let h = self.encoder.forward(self.with_label_planes(x)?.into_dyn(), mode)?;
        let shape = h.shape().to_vec();
        let h = h
            .into_dimensionality::<Ix2>()
            .map_err(|_| Error::shape("VaeModel encoder output", "[batch, features]", &shape))?;
        let q = match &mut self.head {
            PosteriorHead::Linear(heads) => heads.forward(h.view(), mode)?,
            PosteriorHead::MeanLogStd => DiagGaussian::from_mean_log_std(h.view())?,
            PosteriorHead::Isotropic => DiagGaussian::from_isotropic(h.view())?,
        };
        self.last_encoding = Some(h);
        Ok(q)
    }

    fn encode_backward(&mut self, dmu: Array2<F>, dlogvar: Array2<F>) -> Result<()> {
        let dh = match &mut self.head {
            PosteriorHead::Linear(heads) => heads.backward(dmu, dlogvar)?,
            PosteriorHead::MeanLogStd => DiagGaussian::mean_log_std_grad(dmu.view(), dlogvar.view()),
            PosteriorHead::Isotropic => DiagGaussian::isotropic_grad(dmu.view(), dlogvar.view()),
        };
        self.encoder.backward(dh.into_dyn(), false)?;
        Ok(())
    }

    fn decode(&mut self, z: ArrayView2<F>, mode: Mode) -> Result<Array4<F>> {
        let y = self.decoder.forward(self.with_label_columns(z)?.into_dyn(), mode)?;
        let shape = y.shape().to_vec();
        y.into_dimensionality::<Ix4>()
            .map_err(|_| Error::shape("VaeModel decoder output", "[m, c, h, w]", &shape))
    }

    fn decode_backward(&mut self, dout: Array4<F>) -> Result<Array2<F>> {
        let dz = self.decoder.backward(dout.into_dyn(), true)?.expect("asked for dz");
        let shape = dz.shape().to_vec();
        let dz = dz
            .into_dimensionality::<Ix2>()
            .map_err(|_| Error::shape("VaeModel decoder input gradient", "[m, K]", &shape))?;
        // The label's columns are data: only the code's part of the gradient flows on.
        Ok(match self.condition {
            Some(_) => dz.slice(s![.., ..self.latent]).to_owned(),
            None => dz,
        })
    }

    fn likelihood(&self) -> Likelihood<F> {
        self.likelihood.current()
    }

    fn decoder_is_per_sample(&self) -> bool {
        !self.decoder.couples_batch()
    }

    fn condition_on(&mut self, labels: ArrayView1<u8>) -> Result<()> {
        let Some(cond) = &mut self.condition else {
            return Ok(());
        };
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= cond.classes) {
            return Err(Error::InvalidArgument(format!(
                "conditional VAE of {} classes: label {bad}",
                cond.classes
            )));
        }
        let mut one_hot = Array2::zeros((labels.len(), cond.classes));
        for (i, &l) in labels.iter().enumerate() {
            one_hot[[i, l as usize]] = F::one();
        }
        cond.one_hot = one_hot;
        Ok(())
    }

    fn classes(&self) -> Option<usize> {
        self.conditional_classes()
    }

    fn likelihood_backward(&mut self, dlog_sig_x: F) {
        if let PixelLikelihood::LearnedGaussian { log_sig_x, .. } = &mut self.likelihood {
            if let Some(g) = log_sig_x.grad.first_mut() {
                *g += dlog_sig_x;
            }
        }
    }
}
