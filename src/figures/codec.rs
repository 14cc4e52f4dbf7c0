//! [`Codec`]: what the comparison figures need of a model, images to codes and back, on
//! rows of pixels. PCA, both autoencoders and any VAE (its posterior mean, and the
//! likelihood's mean image) have it.

use ndarray::{Array2, ArrayView2};

use crate::models::{ConvAe, LinearAe};
use crate::nn::Mode;
use crate::pca::Pca;
use crate::vae::{decode_images, Vae, VaeModel};
use crate::{Error, Result};

/// Images to codes and codes to images, as rows: `[n, pixels]` and `[n, K]`.
pub trait Codec {
    /// The codes of images `x`, `[n, pixels]` -> `[n, K]`.
    fn encode_rows(&mut self, x: ArrayView2<f32>) -> Result<Array2<f32>>;
    /// The images of codes `z`, `[n, K]` -> `[n, pixels]`.
    fn decode_rows(&mut self, z: ArrayView2<f32>) -> Result<Array2<f32>>;
}

/// `[n, c, h, w]` from rows, or an error naming the model.
fn to_images<'a>(x: ArrayView2<'a, f32>, shape: [usize; 3], what: &str) -> Result<ndarray::ArrayView4<'a, f32>> {
    let n = x.nrows();
    x.into_shape_with_order((n, shape[0], shape[1], shape[2]))
        .map_err(|_| Error::shape(format!("{what} images"), format!("rows of {shape:?}"), &[n, x.ncols()]))
}

/// Rows from `[n, c, h, w]` images.
fn to_rows(x: ndarray::Array4<f32>) -> Array2<f32> {
    let n = x.shape()[0];
    let d = x.len() / n.max(1);
    x.into_shape_with_order((n, d)).expect("contiguous images")
}

impl Codec for Pca {
    /// The whitened codes (the notebook's encoder).
    fn encode_rows(&mut self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.encode(x)
    }
    fn decode_rows(&mut self, z: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.decode(z)
    }
}

impl Codec for LinearAe<f32> {
    fn encode_rows(&mut self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.encode(x)
    }
    fn decode_rows(&mut self, z: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.decode(z)
    }
}

impl Codec for ConvAe<f32> {
    fn encode_rows(&mut self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let shape = self.image_shape();
        self.encode(to_images(x, shape, "conv AE")?)
    }
    fn decode_rows(&mut self, z: ArrayView2<f32>) -> Result<Array2<f32>> {
        Ok(to_rows(self.decode(z.to_owned())?))
    }
}

/// A VAE as a codec: the posterior mean, and the likelihood's mean image of a code.
impl Codec for VaeModel<f32> {
    fn encode_rows(&mut self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let shape = self.image_shape();
        Ok(self.encode(to_images(x, shape, "VAE")?, Mode::Eval)?.mu)
    }
    fn decode_rows(&mut self, z: ArrayView2<f32>) -> Result<Array2<f32>> {
        Ok(to_rows(decode_images(self, z)?))
    }
}
