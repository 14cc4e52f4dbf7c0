//! The GPU's layers, built from [`LayerSpec`]s: each a forward/backward pair over
//! [`Tensor`]s, with its parameters at offsets in a [`ParamStore`]. Maps are kept in
//! CNHW order (see kernels/common.cu); [`LayerSpec::Flatten`] and
//! [`LayerSpec::Unflatten`] move between that and the rows of NCHW images.
//!
//! One file per layer family, each layer one [`GpuOp`]: `conv.rs` (Conv2d,
//! ConvTranspose2d), `batch_norm.rs`, `linear.rs`, `pointwise.rs` (activations, pixel
//! bias) and `reshape.rs` (Flatten, Unflatten).
//!
//! Buffers are shared through `Arc`s: a layer keeps what its backward needs by holding a
//! clone, and a layer that would write in place first copies a buffer someone else holds.

mod batch_norm;
mod conv;
mod linear;
mod pointwise;
mod reshape;

use std::sync::Arc;

use batch_norm::GpuBatchNorm2d;
use conv::{GpuConv2d, GpuConvTranspose2d};
use linear::GpuLinear;
use pointwise::{GpuActivation, GpuPixelBias};
use reshape::{GpuFlatten, GpuUnflatten};

use super::gpu::{int, Arg, DeviceBuf, Gpu, Op};
use super::store::{ParamStore, SlotCursor};
use crate::nn::ConvGeom;
use crate::nn::{conv2d_geom, conv_transpose2d_geom, Activation, ConvOptions, LayerSpec};
use crate::{Error, Result};

/// A tensor's shape on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `[b, f]`, row-major (an NCHW image batch with `f = c h w` is also this).
    Rows {
        /// Rows.
        b: usize,
        /// Columns.
        f: usize,
    },
    /// `[c, b, h, w]` (CNHW).
    Maps {
        /// Channels.
        c: usize,
        /// Images.
        b: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
}

impl Shape {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match *self {
            Shape::Rows { b, f } => b * f,
            Shape::Maps { c, b, h, w } => c * b * h * w,
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor on the GPU.
#[derive(Clone)]
pub struct Tensor {
    /// Its values.
    pub buf: Arc<DeviceBuf>,
    /// Its shape.
    pub shape: Shape,
}

impl Tensor {
    pub(crate) fn new(buf: DeviceBuf, shape: Shape) -> Self {
        Tensor {
            buf: Arc::new(buf),
            shape,
        }
    }

    /// The values, copied first if another holder shares them (so they can be written).
    pub(crate) fn into_unique(self, gpu: &Gpu) -> Result<Tensor> {
        if Arc::strong_count(&self.buf) == 1 {
            return Ok(self);
        }
        let n = self.shape.len();
        let mut copy = gpu.scratch(n)?;
        gpu.copy(&self.buf, &mut copy, n)?;
        Ok(Tensor::new(copy, self.shape))
    }

    /// A tensor of this shape to write over: this one's buffer when no one else holds
    /// it (a backward writes dx over its kept input), else a fresh one. Its contents are
    /// to be overwritten, not read.
    fn reuse_or_alloc(self, gpu: &Gpu) -> Result<Tensor> {
        if Arc::strong_count(&self.buf) == 1 {
            return Ok(self);
        }
        Ok(Tensor::new(gpu.scratch(self.shape.len())?, self.shape))
    }

    fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
}

/// The two sides of an im2col over a batch of `b` images: images `[c, b, h, w]`, columns
/// `[c kh kw, b oh ow]`, with one image's sizes from the CPU's own geometry
/// ([`ConvGeom`], which also checks them).
#[derive(Debug, Clone, Copy)]
struct Geom {
    conv: ConvGeom,
    b: usize,
}

impl Geom {
    fn col_rows(&self) -> usize {
        self.conv.col_rows()
    }
    fn col_cols(&self) -> usize {
        self.b * self.conv.col_cols()
    }
    /// Values per channel on the image side.
    fn per_channel(&self) -> usize {
        self.b * self.conv.h * self.conv.w
    }
    fn image_len(&self) -> usize {
        self.conv.c * self.per_channel()
    }
    fn args(&self, from: u64, to: u64) -> Result<Vec<Arg>> {
        let g = &self.conv;
        let mut a = vec![Arg::P(from), Arg::P(to)];
        for v in [
            g.c,
            self.b,
            g.h,
            g.w,
            g.kernel.0,
            g.kernel.1,
            g.oh,
            g.ow,
            g.stride.0,
            g.stride.1,
            g.padding.0,
            g.padding.1,
            g.dilation.0,
            g.dilation.1,
        ] {
            a.push(int(v)?);
        }
        Ok(a)
    }
    /// Blocks along one row of a 2-D launch over `n` values.
    fn blocks(n: usize) -> u32 {
        n.div_ceil(256).clamp(1, 1024) as u32
    }
    fn im2col(&self, gpu: &Gpu, x: u64, col: u64) -> Result<()> {
        let grid = (Self::blocks(self.col_cols()), self.col_rows() as u32);
        gpu.launch_2d("im2col", grid, 256, &self.args(x, col)?)
    }
    fn col2im(&self, gpu: &Gpu, col: u64, x: u64) -> Result<()> {
        let grid = (Self::blocks(self.per_channel()), self.conv.c as u32);
        gpu.launch_2d("col2im", grid, 256, &self.args(col, x)?)
    }
}

/// `y[c, i] += bias[c]` over `channels` rows of `per` values: a convolution's bias in CNHW.
fn add_channel_bias(gpu: &Gpu, y: u64, bias: u64, channels: usize, per: usize) -> Result<()> {
    gpu.launch_n(
        "add_row_bias",
        channels * per,
        &[Arg::P(y), Arg::P(bias), int(channels)?, Arg::L(per as i64)],
    )
}

/// `out[c] = sum_i dy[c, i]` over `channels` rows of `per` values: that bias's gradient.
fn channel_sums(gpu: &Gpu, dy: u64, out: u64, channels: usize, per: usize) -> Result<()> {
    gpu.launch(
        "row_sums",
        channels as u32,
        256,
        &[Arg::P(dy), Arg::P(out), Arg::L(per as i64)],
    )
}

/// Blocks per channel for BatchNorm's sums: enough for the whole batch norm to cover the
/// GPU several times over (a DCGAN encoder layer has 16 channels), each block at least
/// 4096 values.
fn bn_slices(channels: usize, n: usize) -> usize {
    (1024usize.div_ceil(channels.max(1))).clamp(1, (n / 4096).max(1))
}

/// Activation kind and slope as kernels/elementwise.cu numbers them.
fn activation_code(a: Activation) -> (i32, f32) {
    match a {
        Activation::Relu => (0, 0.0),
        Activation::LeakyRelu(s) => (0, s as f32),
        Activation::Sigmoid => (1, 0.0),
        Activation::Tanh => (2, 0.0),
    }
}

/// The parameter offsets of a layer with a weight and an optional bias.
#[derive(Debug, Clone, Copy)]
struct WeightBias {
    w: usize,
    b: Option<usize>,
}

/// One GPU layer's forward and backward over [`Tensor`]s, one implementation per layer
/// kind (in this folder, beside the CPU layer of the same name in [`crate::nn`]).
///
/// The contract is the CPU one (`nn`'s module doc) with one difference: backward
/// *writes* each parameter gradient (cuBLAS with beta 0, kernels that store) instead of
/// accumulating into it. A GPU step runs one backward per layer and then Adam, so there
/// is nothing to add to, and no pass zeroing the gradients is needed; a caller that wants
/// gradients summed over several backwards must add them itself.
trait GpuOp: Send {
    /// Train-mode forward; keeps what [`GpuOp::backward`] needs. `name` is for errors.
    fn forward(&mut self, name: &str, gpu: &Gpu, store: &ParamStore, x: Tensor) -> Result<Tensor>;

    /// Writes the parameter gradients into `store.grads`; returns `dx` if `need_dx`.
    fn backward(
        &mut self,
        name: &str,
        gpu: &Gpu,
        store: &ParamStore,
        dy: Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>>;
}

/// One GPU layer; see the module docs.
pub struct GpuLayer {
    op: Box<dyn GpuOp>,
    name: String,
}

impl GpuLayer {
    fn forward(&mut self, gpu: &Gpu, store: &ParamStore, x: Tensor) -> Result<Tensor> {
        self.op.forward(&self.name, gpu, store, x)
    }

    fn backward(&mut self, gpu: &Gpu, store: &ParamStore, dy: Tensor, need_dx: bool) -> Result<Option<Tensor>> {
        self.op.backward(&self.name, gpu, store, dy, need_dx)
    }
}

/// Layers run in order.
pub struct GpuChain {
    layers: Vec<GpuLayer>,
}

fn backward_before_forward(layer: &str) -> Error {
    Error::Device(format!("GPU layer {layer}: backward before forward"))
}

fn wrong_input(layer: &str, expected: &str, found: Shape) -> Error {
    Error::Device(format!("GPU layer {layer}: expected {expected}, got {found:?}"))
}

impl GpuChain {
    /// Layers for `specs`, taking their parameters (and buffers) from `params`
    /// (`buffers`) in order.
    pub(crate) fn build(specs: &[LayerSpec], params: &mut SlotCursor, buffers: &mut SlotCursor) -> Result<Self> {
        let mut layers = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let name = format!("{i} ({spec:?})");
            let mut wb = |w: Vec<usize>, b: Option<Vec<usize>>| -> Result<WeightBias> {
                let w = params.take(&w, &format!("layer {i} weight"))?;
                let b = match b {
                    Some(s) => Some(params.take(&s, &format!("layer {i} bias"))?),
                    None => None,
                };
                Ok(WeightBias { w, b })
            };
            let op: Box<dyn GpuOp> = match spec.clone() {
                LayerSpec::Conv2d {
                    in_ch,
                    out_ch,
                    kernel,
                    opts,
                } => Box::new(GpuConv2d {
                    in_ch,
                    out_ch,
                    kernel,
                    opts,
                    p: wb(vec![out_ch, in_ch, kernel.0, kernel.1], opts.bias.then(|| vec![out_ch]))?,
                    kept: None,
                }),
                LayerSpec::ConvTranspose2d {
                    in_ch,
                    out_ch,
                    kernel,
                    opts,
                } => Box::new(GpuConvTranspose2d {
                    in_ch,
                    out_ch,
                    kernel,
                    opts,
                    p: wb(vec![in_ch, out_ch, kernel.0, kernel.1], opts.bias.then(|| vec![out_ch]))?,
                    kept: None,
                }),
                LayerSpec::BatchNorm2d {
                    channels,
                    eps,
                    momentum,
                    rectifier,
                } => {
                    let gamma = params.take(&[channels], &format!("layer {i} weight"))?;
                    let beta = params.take(&[channels], &format!("layer {i} bias"))?;
                    let running = buffers.take(&[channels], &format!("layer {i} running mean"))?;
                    let rv = buffers.take(&[channels], &format!("layer {i} running var"))?;
                    if rv != running + channels {
                        return Err(Error::Device(format!("layer {i}: running statistics not adjacent")));
                    }
                    let rect = match rectifier {
                        None => None,
                        Some(a @ (Activation::Relu | Activation::LeakyRelu(_))) => Some(activation_code(a).1),
                        Some(other) => {
                            return Err(Error::Device(format!("layer {i}: BatchNorm with {other:?}")));
                        }
                    };
                    Box::new(GpuBatchNorm2d {
                        channels,
                        eps: eps as f32,
                        momentum: momentum as f32,
                        rect,
                        affine: (gamma, beta),
                        running,
                        kept: None,
                    })
                }
                LayerSpec::Activation(a) => Box::new(GpuActivation {
                    code: activation_code(a),
                    kept: None,
                }),
                LayerSpec::Linear {
                    in_features,
                    out_features,
                    bias,
                } => Box::new(GpuLinear {
                    in_f: in_features,
                    out_f: out_features,
                    p: wb(vec![out_features, in_features], bias.then(|| vec![out_features]))?,
                    kept: None,
                }),
                LayerSpec::PixelBias { shape } => Box::new(GpuPixelBias {
                    b: params.take(&shape, &format!("layer {i} pixel bias"))?,
                    shape,
                    kept: None,
                }),
                LayerSpec::Flatten => Box::new(GpuFlatten { kept: None }),
                LayerSpec::Unflatten { shape } => Box::new(GpuUnflatten { shape, kept: None }),
                LayerSpec::Sequential(inner) => {
                    let mut sub = GpuChain::build(&inner, params, buffers)?;
                    layers.append(&mut sub.layers);
                    continue;
                }
                LayerSpec::Opaque(t) => {
                    return Err(Error::Device(format!("layer {i} ({t}) has no GPU version")));
                }
            };
            layers.push(GpuLayer { op, name });
        }
        Ok(GpuChain { layers })
    }

    /// Forward in train mode through every layer, keeping what backward needs.
    pub(crate) fn forward(&mut self, gpu: &Gpu, store: &ParamStore, mut x: Tensor) -> Result<Tensor> {
        for l in &mut self.layers {
            x = l.forward(gpu, store, x)?;
        }
        Ok(x)
    }

    /// Backward through every layer, writing each parameter's gradient; the input's
    /// gradient if `need_dx`.
    pub(crate) fn backward(
        &mut self,
        gpu: &Gpu,
        store: &ParamStore,
        mut dy: Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            match l.backward(gpu, store, dy, i > 0 || need_dx)? {
                Some(d) => dy = d,
                None => return Ok(None),
            }
        }
        Ok(Some(dy))
    }
}

/// `x` in `to`'s layout: maps `[c, b, h, w]` to rows `[b, c h w]`, or back.
/// With one channel the two orders agree and the buffer is passed on as it is.
pub(crate) fn permute(gpu: &Gpu, x: Tensor, to: Shape) -> Result<Tensor> {
    let to_rows = matches!(to, Shape::Rows { .. });
    let (c, b, hw) = match (x.shape, to) {
        (Shape::Maps { c, b, h, w }, Shape::Rows { .. }) | (Shape::Rows { .. }, Shape::Maps { c, b, h, w }) => {
            (c, b, h * w)
        }
        _ => return Err(Error::Device(format!("permute {:?} to {to:?}", x.shape))),
    };
    if c == 1 || b == 1 {
        return Ok(Tensor { buf: x.buf, shape: to });
    }
    let y = gpu.scratch(x.shape.len())?;
    gpu.launch_n(
        "permute_batch_channel",
        x.shape.len(),
        &[
            Arg::P(x.ptr()),
            Arg::P(y.ptr()),
            int(b)?,
            int(c)?,
            Arg::L(hw as i64),
            Arg::I(to_rows as i32),
        ],
    )?;
    Ok(Tensor::new(y, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPU's im2col sizes come from the CPU's geometry; held here (no device needed)
    /// to PyTorch's output formulas, `(n + 2p - d (k - 1) - 1) / s + 1` and
    /// `(n - 1) s - 2p + d (k - 1) + output_padding + 1`, over strides, paddings,
    /// dilations and output paddings.
    #[test]
    fn convolution_sizes_follow_pytorch() {
        for (n, k, s, p, d, op) in [
            (28, 5, 1, 0, 1, 0),
            (28, 4, 2, 1, 1, 0),
            (13, 4, 2, 0, 1, 0),
            (7, 3, 2, 1, 1, 1),
            (9, 3, 1, 2, 2, 1),
            (1, 3, 2, 1, 1, 0),
        ] {
            let opts = ConvOptions {
                stride: (s, s),
                padding: (p, p),
                dilation: (d, d),
                output_padding: (op, op),
                ..ConvOptions::default()
            };
            let direct = Geom {
                conv: conv2d_geom(&[3, 2, n, n + 1], &[4, 2, k, k], &opts).unwrap(),
                b: 3,
            };
            let out = |n: usize| (n + 2 * p - d * (k - 1) - 1) / s + 1;
            assert_eq!((direct.conv.oh, direct.conv.ow), (out(n), out(n + 1)));
            assert_eq!(
                (direct.col_rows(), direct.col_cols()),
                (2 * k * k, 3 * out(n) * out(n + 1))
            );
            let transposed = Geom {
                conv: conv_transpose2d_geom(&[3, 2, n, n + 1], &[2, 4, k, k], &opts).unwrap(),
                b: 3,
            };
            let out_t = |n: usize| (n - 1) * s + d * (k - 1) + op + 1 - 2 * p;
            let g = transposed.conv;
            assert_eq!((g.c, g.h, g.w, g.oh, g.ow), (4, out_t(n), out_t(n + 1), n, n + 1));
            assert_eq!(transposed.image_len(), 4 * 3 * out_t(n) * out_t(n + 1));
        }
    }
}
