//! CIS-522's convolutional autoencoder: per-pixel bias, Conv2d + ReLU twice, Flatten,
//! Linear to K; mirrored decoder Linear + ReLU, Unflatten, ConvTranspose2d + ReLU,
//! ConvTranspose2d, per-pixel bias. Trained with MSE (mean over all pixels).

use std::ops::Range;

use ndarray::{s, Array2, Array4, ArrayView2, ArrayView4, Axis, Ix2, Ix4, Zip};
use rand::Rng;

use crate::data_parallel::{concat_parts, DataParallel};
use crate::loss::{mse_loss, Reduction};
use crate::nn::{
    Activation, ActivationLayer, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Layer, Linear, Mode, Module, Param,
    PixelBias, Sequential, Unflatten,
};
use crate::optim::Adam;
use crate::pool::on_worker;
use crate::{Error, Float, Result};

/// The notebook's `ConvAutoEncoder`, with its `state_dict` names (`enc_bias.bias`,
/// `enc_conv_1.weight`, ..., `dec_bias.bias`).
pub struct ConvAe<F> {
    /// Image to code.
    pub encoder: Sequential<F>,
    /// Code to image.
    pub decoder: Sequential<F>,
    image: [usize; 3],
    k: usize,
    code_spread: Option<F>,
}

impl<F: Float> ConvAe<F> {
    /// An autoencoder for `image = [c, h, w]` images and `k` latent dimensions, with
    /// `filters` channels and `kernel x kernel` filters (the notebook: 32 and 5).
    pub fn new<R: Rng + ?Sized>(
        image: [usize; 3],
        k: usize,
        filters: usize,
        kernel: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let [c, h, w] = image;
        if k == 0 || filters == 0 || kernel == 0 || h < 2 * kernel - 1 || w < 2 * kernel - 1 {
            return Err(Error::InvalidArgument(format!(
                "ConvAe: image {image:?}, K = {k}, {filters} filters of {kernel}x{kernel} do not fit"
            )));
        }
        let (h2, w2) = (h - 2 * (kernel - 1), w - 2 * (kernel - 1));
        let flat = filters * h2 * w2;
        let opts = ConvOptions::default();
        let relu = || ActivationLayer::new(Activation::Relu);
        let encoder = Sequential::new()
            .push(PixelBias::new("enc_bias", &image))
            .push(Conv2d::new("enc_conv_1", c, filters, (kernel, kernel), opts, rng))
            .push(relu())
            .push(Conv2d::new("enc_conv_2", filters, filters, (kernel, kernel), opts, rng))
            .push(relu())
            .push(Flatten::new())
            .push(Linear::new("enc_lin", flat, k, true, rng));
        let decoder = Sequential::new()
            .push(Linear::new("dec_lin", k, flat, true, rng))
            .push(relu())
            .push(Unflatten::new(&[filters, h2, w2]))
            .push(ConvTranspose2d::new(
                "dec_deconv_1",
                filters,
                filters,
                (kernel, kernel),
                opts,
                rng,
            ))
            .push(relu())
            .push(ConvTranspose2d::new(
                "dec_deconv_2",
                filters,
                c,
                (kernel, kernel),
                opts,
                rng,
            ))
            .push(PixelBias::new("dec_bias", &image));
        Ok(ConvAe {
            encoder,
            decoder,
            image,
            k,
            code_spread: None,
        })
    }

    /// The notebook's configuration for MNIST: 1x28x28 images, 32 filters of 5x5.
    pub fn cis522<R: Rng + ?Sized>(k: usize, rng: &mut R) -> Result<Self> {
        Self::new([1, 28, 28], k, 32, 5, rng)
    }

    /// One image's shape `[c, h, w]`.
    pub fn image_shape(&self) -> [usize; 3] {
        self.image
    }

    /// Latent dimensions.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The largest standard deviation, over the last training batch, of any code
    /// dimension. Zero (to rounding) means the encoder has collapsed: every ReLU feeding
    /// the code is dead, the code is constant and the decoder can only learn the mean image.
    pub fn code_spread(&self) -> Option<F> {
        self.code_spread
    }

    fn check(&self, x: &ArrayView4<F>) -> Result<()> {
        if x.shape()[1..] != self.image {
            return Err(Error::shape(
                "ConvAe input",
                format!("[batch, {:?}]", self.image),
                x.shape(),
            ));
        }
        Ok(())
    }

    /// Codes `[n, K]` of images `[n, c, h, w]`.
    pub fn encode(&mut self, x: ArrayView4<F>) -> Result<Array2<F>> {
        self.check(&x)?;
        let h = self.encoder.forward(x.to_owned().into_dyn(), Mode::Eval)?;
        Ok(h.into_dimensionality::<Ix2>().expect("encoder ends in Linear"))
    }

    /// Images from codes `[n, K]`.
    pub fn decode(&mut self, h: Array2<F>) -> Result<Array4<F>> {
        if h.ncols() != self.k {
            return Err(Error::shape("ConvAe code", format!("[batch, {}]", self.k), h.shape()));
        }
        let y = self.decoder.forward(h.into_dyn(), Mode::Eval)?;
        Ok(y.into_dimensionality::<Ix4>().expect("decoder ends in images"))
    }

    /// Reconstructions of `x`.
    pub fn reconstruct(&mut self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let h = self.encode(x)?;
        self.decode(h)
    }

    /// Forward in training mode, MSE (mean over all pixels) against `x`, backward; returns
    /// the loss and the reconstruction. Gradients are zeroed first.
    pub fn loss_and_grad(&mut self, x: ArrayView4<F>) -> Result<(F, Array4<F>)> {
        self.check(&x)?;
        let step = on_worker(|| self.part_loss_and_grad(x, x.len()))?;
        self.code_spread = Some(code_spread(step.codes.view()));
        Ok((step.squared_error * Reduction::Mean.scale::<F>(x.len()), step.output))
    }

    /// One training step: [`ConvAe::loss_and_grad`] then `opt.step`.
    pub fn train_step(&mut self, x: ArrayView4<F>, opt: &mut Adam<F>) -> Result<F> {
        on_worker(|| {
            let (loss, _) = self.loss_and_grad(x)?;
            opt.step(self)?;
            Ok(loss)
        })
    }

    /// Forward and backward on `x`, part of a batch of `pixels` pixels in all: the
    /// gradients (zeroed first) are those of the squared error summed over `x` divided by
    /// `pixels`, so that the parts of a batch add up to the batch's mean.
    fn part_loss_and_grad(&mut self, x: ArrayView4<F>, pixels: usize) -> Result<PartStep<F>> {
        self.zero_grad();
        let codes = self.encoder.forward(x.to_owned().into_dyn(), Mode::Train)?;
        let kept = codes
            .view()
            .into_dimensionality::<Ix2>()
            .expect("encoder ends in Linear")
            .to_owned();
        let y = self.decoder.forward(codes, Mode::Train)?;
        let squared_error = mse_loss(y.view(), x.into_dyn(), Reduction::Sum)?;
        if !squared_error.is_finite() {
            return Err(Error::NonFinite("ConvAe training loss".into()));
        }
        // mse_grad's mean form, over the whole batch's pixels.
        let c = F::lit(2.0) * Reduction::Mean.scale::<F>(pixels);
        let dy = Zip::from(&y).and(x.into_dyn()).map_collect(|&p, &t| c * (p - t));
        let dh = self.decoder.backward(dy, true)?.expect("asked for dx");
        self.encoder.backward(dh, false)?;
        Ok(PartStep {
            squared_error,
            codes: kept,
            output: y.into_dimensionality::<Ix4>().expect("images"),
        })
    }
}

/// What one part of a batch's training step gives back.
struct PartStep<F> {
    /// The squared error summed over the part's pixels.
    squared_error: F,
    /// The part's codes `[n, K]`.
    codes: Array2<F>,
    /// The part's reconstructions.
    output: Array4<F>,
}

/// The largest standard deviation over a batch of codes `[n, K]` of any code dimension.
fn code_spread<F: Float>(codes: ArrayView2<F>) -> F {
    codes
        .std_axis(Axis(0), F::zero())
        .iter()
        .fold(F::zero(), |m, &v| m.max(v))
}

impl<F: Float> Clone for ConvAe<F> {
    fn clone(&self) -> Self {
        ConvAe {
            encoder: self.encoder.clone(),
            decoder: self.decoder.clone(),
            image: self.image,
            k: self.k,
            code_spread: self.code_spread,
        }
    }
}

impl<F: Float> DataParallel<ConvAe<F>> {
    /// As many parts per batch as rayon's pool has threads (the conv AE has no
    /// batch-coupled layer: every image's error depends on that image alone).
    pub fn conv_ae(model: &ConvAe<F>) -> Self {
        Self::conv_ae_in_parts(model, rayon::current_num_threads())
    }

    /// Up to `parts` parts per batch.
    pub fn conv_ae_in_parts(model: &ConvAe<F>, parts: usize) -> Self {
        Self::from_replicas((1..parts.max(1)).map(|_| Box::new(model.clone())).collect())
    }

    /// [`ConvAe::loss_and_grad`] with the batch's parts on `model` and its copies in
    /// parallel: the same loss, reconstructions and gradients (up to the order of the sums
    /// over images), and `model`'s code spread is the whole batch's.
    pub fn loss_and_grad(&mut self, model: &mut ConvAe<F>, x: ArrayView4<F>) -> Result<(F, Array4<F>)> {
        model.check(&x)?;
        let parts = self.split(x.shape()[0]);
        let step = |m: &mut ConvAe<F>, r: Range<usize>| m.part_loss_and_grad(x.slice(s![r, .., .., ..]), x.len());
        let steps = on_worker(|| self.run(model, &parts, step, step))?;
        let codes = concat_parts(&steps, |p| p.codes.view());
        model.code_spread = Some(code_spread(codes.view()));
        let squared_error = steps.iter().fold(F::zero(), |acc, p| acc + p.squared_error);
        Ok((
            squared_error * Reduction::Mean.scale::<F>(x.len()),
            concat_parts(&steps, |p| p.output.view()),
        ))
    }

    /// [`DataParallel::<ConvAe<F>>::loss_and_grad`], then one Adam step on `model`.
    pub fn train_step(&mut self, model: &mut ConvAe<F>, x: ArrayView4<F>, opt: &mut Adam<F>) -> Result<F> {
        on_worker(|| {
            let (loss, _) = self.loss_and_grad(model, x)?;
            opt.step(model)?;
            Ok(loss)
        })
    }
}

impl<F: Float> Module<F> for ConvAe<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.encoder.visit_params(f);
        self.decoder.visit_params(f);
    }
}
