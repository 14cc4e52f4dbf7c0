//! CIS-522's convolutional autoencoder: per-pixel bias, Conv2d + ReLU twice, Flatten,
//! Linear to K; mirrored decoder Linear + ReLU, Unflatten, ConvTranspose2d + ReLU,
//! ConvTranspose2d, per-pixel bias. Trained with MSE (mean over all pixels).

use ndarray::{Array2, Array4, ArrayView4, Ix2, Ix4};
use rand::Rng;

use crate::loss::{mse_grad, mse_loss, Reduction};
use crate::nn::{
    Activation, ActivationLayer, Conv2d, ConvOptions, ConvTranspose2d, Flatten, Layer, Linear, Mode, Module, Param,
    PixelBias, Sequential, Unflatten,
};
use crate::optim::Adam;
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
        self.zero_grad();
        let h = self.encoder.forward(x.to_owned().into_dyn(), Mode::Train)?;
        let h2 = h.view().into_dimensionality::<Ix2>().expect("encoder ends in Linear");
        self.code_spread = Some(
            h2.std_axis(ndarray::Axis(0), F::zero())
                .iter()
                .fold(F::zero(), |m, &v| m.max(v)),
        );
        let y = self.decoder.forward(h, Mode::Train)?;
        let loss = mse_loss(y.view(), x.into_dyn(), Reduction::Mean)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite("ConvAe training loss".into()));
        }
        let dy = mse_grad(y.view(), x.into_dyn(), Reduction::Mean)?;
        let dh = self.decoder.backward(dy, true)?.expect("asked for dx");
        self.encoder.backward(dh, false)?;
        Ok((loss, y.into_dimensionality::<Ix4>().expect("images")))
    }

    /// One training step: [`ConvAe::loss_and_grad`] then `opt.step`.
    pub fn train_step(&mut self, x: ArrayView4<F>, opt: &mut Adam<F>) -> Result<F> {
        let (loss, _) = self.loss_and_grad(x)?;
        opt.step(self)?;
        Ok(loss)
    }
}

impl<F: Float> Module<F> for ConvAe<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.encoder.visit_params(f);
        self.decoder.visit_params(f);
    }
}
