//! Layers, each a forward/backward pair written out by hand.
//!
//! Forward keeps what backward needs (its input, a mask); backward takes `dy`, returns
//! `dx` when asked and *accumulates* (`+=`) into the parameter gradients. Zeroing the
//! gradients is an explicit step ([`Module::zero_grad`]).
//!
//! Entry points, the same for every layer:
//! - [`Layer::forward`] and [`Layer::backward`] take owned arrays of any rank, so that
//!   layers chain in a [`Sequential`];
//! - a layer whose input has a fixed rank `R` (2 for [`Linear`], 4 for the convolutions and
//!   [`BatchNorm2d`]) has the same pair typed by that rank, `forwardR(x: ArrayR, mode)` and
//!   `backwardR(dy: ArrayR, need_dx)`, which `Layer`'s pair calls after checking the rank.
//!   Both take their argument by value: a training forward keeps its input for the
//!   backward, and a backward may turn `dy` into `dx` in place, so a caller that still
//!   needs the array passes a copy and one that does not saves it;
//! - `infer(&self, x: ArrayViewR)` is the evaluation forward: it borrows its input and
//!   neither keeps nor changes anything (BatchNorm reads its running statistics).
//!
//! The free functions beside each layer (`linear_forward`, `conv2d_backward`, ...) take
//! views and write into or return arrays; they are the arithmetic, the layers own state.

mod activation;
mod batch_norm2d;
mod bias;
mod conv;
mod linear;
pub(crate) mod param;
pub(crate) mod reduce;
mod reshape;
mod sequential;
mod spec;

pub use activation::{activation_backward, activation_forward, Activation, ActivationLayer};
pub use batch_norm2d::{
    batch_norm2d_backward, batch_norm2d_backward_inplace, batch_norm2d_forward, BatchNorm2d, BatchNormCache,
};
pub use bias::PixelBias;
pub use conv::{
    conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward, Conv2d, ConvAlgorithm,
    ConvDirection, ConvLayer, ConvOptions, ConvTranspose2d, Direct, KernelCache, Transposed,
};
#[cfg(feature = "cuda")]
pub(crate) use conv::{direct_geom as conv2d_geom, transposed_geom as conv_transpose2d_geom, ConvGeom};
pub use linear::{linear_backward, linear_forward, Linear};
pub use param::Param;
pub use reshape::{Flatten, Unflatten};
pub use sequential::{load_params, Sequential};
pub use spec::LayerSpec;

use ndarray::{Array4, ArrayD, ArrayViewMutD, Ix4};

use crate::tuning;
use crate::{Error, Float, Result};

/// Whether a layer runs in training mode (batch statistics, caches for backward) or
/// evaluation mode. Always an explicit argument, never hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: BatchNorm uses batch statistics and updates its running ones.
    Train,
    /// Evaluation: BatchNorm uses its running statistics; nothing is kept for backward.
    Eval,
    /// A fixed network that gradients still flow through (with respect to its input, say
    /// the latent code in the ELBO ascent on phi): BatchNorm uses its running statistics
    /// as in [`Mode::Eval`], and every layer keeps what backward needs.
    Frozen,
}

impl Mode {
    /// Whether layers keep their inputs for a backward pass.
    pub fn keeps_cache(self) -> bool {
        self != Mode::Eval
    }
}

/// Anything that owns parameters: a layer, a container, a model.
pub trait Module<F: Float> {
    /// Calls `f` on every parameter, in a fixed order (the order of the optimizer state
    /// and of checkpoints).
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>));

    /// Calls `f` on every buffer (state that is not trained by gradients: BatchNorm's
    /// running statistics) with its `state_dict` name, in a fixed order.
    fn visit_buffers(&mut self, _f: &mut dyn FnMut(&str, ArrayViewMutD<F>)) {}

    /// Calls `f` on every integer counter of the `state_dict` (BatchNorm's
    /// `num_batches_tracked`), with its name.
    fn visit_counters(&mut self, _f: &mut dyn FnMut(&str, &mut u64)) {}

    /// Sets every parameter gradient to zero.
    fn zero_grad(&mut self) {
        self.visit_params(&mut |p| p.zero_grad());
    }

    /// Total number of scalar parameters.
    fn num_params(&mut self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| n += p.value.len());
        n
    }
}

/// A boxed copy of a layer, for containers of `dyn Layer` (a model's copy for
/// data-parallel training, [`crate::vae::DataParallel`]). Every `Layer + Clone` has it.
pub trait CloneLayer<F: Float> {
    /// A copy of the layer: parameters, gradients and whatever its forward kept.
    fn clone_layer(&self) -> Box<dyn Layer<F>>;
}

impl<F: Float, T: Layer<F> + Clone + 'static> CloneLayer<F> for T {
    fn clone_layer(&self) -> Box<dyn Layer<F>> {
        Box::new(self.clone())
    }
}

/// A layer on dynamically shaped arrays, so that layers can be chained in a container.
pub trait Layer<F: Float>: Module<F> + CloneLayer<F> + Send {
    /// Computes the output; in [`Mode::Train`] keeps what [`Layer::backward`] needs.
    fn forward(&mut self, x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>>;

    /// Given `dy`, accumulates parameter gradients and returns `dx` if `need_dx`.
    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>>;

    /// What the layer is, for backends that build the same model elsewhere (see
    /// [`LayerSpec`]); a layer that does not override this is [`LayerSpec::Opaque`].
    fn spec(&self) -> LayerSpec {
        LayerSpec::Opaque(std::any::type_name::<Self>())
    }

    /// Whether the training output for one sample depends on the other samples of the
    /// batch ([`LayerSpec::couples_batch`] of [`Layer::spec`]); a layer of one's own that
    /// is opaque but treats samples independently may say `false`, so that batches can
    /// be cut across threads ([`crate::vae::DataParallel`]).
    fn couples_batch(&self) -> bool {
        self.spec().couples_batch()
    }
}

/// A dynamic array as NCHW, or an error naming the layer.
pub(crate) fn to4<F: Float>(x: ArrayD<F>, layer: &str) -> Result<Array4<F>> {
    let shape = x.shape().to_vec();
    x.into_dimensionality::<Ix4>()
        .map_err(|_| Error::shape(format!("layer {layer} input"), "[batch, channels, h, w]", &shape))
}

/// A zeroed `[n, c, h, w]` array, written by the thread pool when it is large: a layer's
/// output (44 MB for the DCGAN VAE's widest at batch 1024) is zeroed in half the time
/// that one thread's memset takes, since the bandwidth here is per core.
pub(crate) fn zeros4<F: Float>(shape: (usize, usize, usize, usize)) -> Array4<F> {
    let len = shape.0 * shape.1 * shape.2 * shape.3;
    if len < tuning::PAR_MIN_ZEROS || rayon::current_num_threads() < 2 {
        return Array4::zeros(shape);
    }
    use rayon::prelude::*;
    let values: Vec<F> = (0..len).into_par_iter().map(|_| F::zero()).collect();
    Array4::from_shape_vec(shape, values).expect("sized")
}
