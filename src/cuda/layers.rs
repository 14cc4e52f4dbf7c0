//! The GPU's layers, built from [`LayerSpec`]s: each a forward/backward pair over
//! [`Tensor`]s, with its parameters at offsets in a [`ParamStore`]. Maps are kept in
//! CNHW order (see kernels/common.cu); [`LayerSpec::Flatten`] and
//! [`LayerSpec::Unflatten`] move between that and the rows of NCHW images.
//!
//! Buffers are shared through `Arc`s: a layer keeps what its backward needs by holding a
//! clone, and a layer that would write in place first copies a buffer someone else holds.

use std::sync::Arc;

use super::gpu::{int, Arg, DeviceBuf, Gpu, Op};
use super::store::{ParamStore, SlotCursor};
use crate::nn::im2col::ConvGeom;
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

enum Kind {
    Conv2d {
        in_ch: usize,
        out_ch: usize,
        kernel: (usize, usize),
        opts: ConvOptions,
        p: WeightBias,
        kept: Option<(DeviceBuf, Geom)>,
    },
    ConvTranspose2d {
        in_ch: usize,
        out_ch: usize,
        kernel: (usize, usize),
        opts: ConvOptions,
        p: WeightBias,
        kept: Option<(Tensor, Geom)>,
    },
    BatchNorm2d {
        channels: usize,
        eps: f32,
        momentum: f32,
        rect: Option<f32>,
        /// Offsets of `weight` (gamma) and `bias` (beta).
        affine: (usize, usize),
        running: usize,
        kept: Option<(Tensor, DeviceBuf, DeviceBuf)>,
    },
    Activation {
        code: (i32, f32),
        kept: Option<Tensor>,
    },
    Linear {
        in_f: usize,
        out_f: usize,
        p: WeightBias,
        kept: Option<Tensor>,
    },
    PixelBias {
        shape: Vec<usize>,
        b: usize,
        kept: Option<Shape>,
    },
    Flatten {
        kept: Option<Shape>,
    },
    Unflatten {
        shape: Vec<usize>,
        kept: Option<Shape>,
    },
}

/// One GPU layer; see the module docs.
pub struct GpuLayer {
    kind: Kind,
    name: String,
}

/// Layers run in order.
pub struct GpuChain {
    layers: Vec<GpuLayer>,
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
            let kind = match spec.clone() {
                LayerSpec::Conv2d {
                    in_ch,
                    out_ch,
                    kernel,
                    opts,
                } => Kind::Conv2d {
                    in_ch,
                    out_ch,
                    kernel,
                    opts,
                    p: wb(vec![out_ch, in_ch, kernel.0, kernel.1], opts.bias.then(|| vec![out_ch]))?,
                    kept: None,
                },
                LayerSpec::ConvTranspose2d {
                    in_ch,
                    out_ch,
                    kernel,
                    opts,
                } => Kind::ConvTranspose2d {
                    in_ch,
                    out_ch,
                    kernel,
                    opts,
                    p: wb(vec![in_ch, out_ch, kernel.0, kernel.1], opts.bias.then(|| vec![out_ch]))?,
                    kept: None,
                },
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
                    Kind::BatchNorm2d {
                        channels,
                        eps: eps as f32,
                        momentum: momentum as f32,
                        rect,
                        affine: (gamma, beta),
                        running,
                        kept: None,
                    }
                }
                LayerSpec::Activation(a) => Kind::Activation {
                    code: activation_code(a),
                    kept: None,
                },
                LayerSpec::Linear {
                    in_features,
                    out_features,
                    bias,
                } => Kind::Linear {
                    in_f: in_features,
                    out_f: out_features,
                    p: wb(vec![out_features, in_features], bias.then(|| vec![out_features]))?,
                    kept: None,
                },
                LayerSpec::PixelBias { shape } => Kind::PixelBias {
                    b: params.take(&shape, &format!("layer {i} pixel bias"))?,
                    shape,
                    kept: None,
                },
                LayerSpec::Flatten => Kind::Flatten { kept: None },
                LayerSpec::Unflatten { shape } => Kind::Unflatten { shape, kept: None },
                LayerSpec::Sequential(inner) => {
                    let mut sub = GpuChain::build(&inner, params, buffers)?;
                    layers.append(&mut sub.layers);
                    continue;
                }
                LayerSpec::Opaque(t) => {
                    return Err(Error::Device(format!("layer {i} ({t}) has no GPU version")));
                }
            };
            layers.push(GpuLayer { kind, name });
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

impl GpuLayer {
    fn forward(&mut self, gpu: &Gpu, store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let name = &self.name;
        let p = &store.params;
        match &mut self.kind {
            Kind::Conv2d {
                in_ch,
                out_ch,
                kernel,
                opts,
                p: wb,
                kept,
            } => {
                let Shape::Maps { c, b, h, w } = x.shape else {
                    return Err(wrong_input(name, "maps", x.shape));
                };
                if c != *in_ch {
                    return Err(wrong_input(name, &format!("{in_ch} channels"), x.shape));
                }
                let g = Geom {
                    conv: conv2d_geom(&[b, c, h, w], &[*out_ch, c, kernel.0, kernel.1], opts)?,
                    b,
                };
                let col = gpu.scratch(g.col_rows() * g.col_cols())?;
                g.im2col(gpu, x.ptr(), col.ptr())?;
                let y = gpu.scratch(*out_ch * g.col_cols())?;
                gpu.gemm(
                    (Op::N, Op::N),
                    (*out_ch, g.col_cols(), g.col_rows()),
                    1.0,
                    p.at(wb.w),
                    col.ptr(),
                    0.0,
                    y.ptr(),
                )?;
                if let Some(bo) = wb.b {
                    add_channel_bias(gpu, y.ptr(), p.at(bo), *out_ch, g.col_cols())?;
                }
                *kept = Some((col, g));
                Ok(Tensor::new(
                    y,
                    Shape::Maps {
                        c: *out_ch,
                        b,
                        h: g.conv.oh,
                        w: g.conv.ow,
                    },
                ))
            }
            Kind::ConvTranspose2d {
                in_ch,
                out_ch,
                kernel,
                opts,
                p: wb,
                kept,
            } => {
                let Shape::Maps { c, b, h, w } = x.shape else {
                    return Err(wrong_input(name, "maps", x.shape));
                };
                if c != *in_ch || h == 0 || w == 0 {
                    return Err(wrong_input(name, &format!("{in_ch} channels"), x.shape));
                }
                // The output is the image side of the im2col, the input its column side.
                let g = Geom {
                    conv: conv_transpose2d_geom(&[b, c, h, w], &[c, *out_ch, kernel.0, kernel.1], opts)?,
                    b,
                };
                let (ho, wo) = (g.conv.h, g.conv.w);
                let col = gpu.scratch(g.col_rows() * g.col_cols())?;
                gpu.gemm(
                    (Op::T, Op::N),
                    (g.col_rows(), g.col_cols(), *in_ch),
                    1.0,
                    p.at(wb.w),
                    x.ptr(),
                    0.0,
                    col.ptr(),
                )?;
                let y = gpu.scratch(g.image_len())?;
                g.col2im(gpu, col.ptr(), y.ptr())?;
                if let Some(bo) = wb.b {
                    add_channel_bias(gpu, y.ptr(), p.at(bo), *out_ch, g.per_channel())?;
                }
                *kept = Some((x, g));
                Ok(Tensor::new(
                    y,
                    Shape::Maps {
                        c: *out_ch,
                        b,
                        h: ho,
                        w: wo,
                    },
                ))
            }
            Kind::BatchNorm2d {
                channels,
                eps,
                momentum,
                rect,
                affine,
                running,
                kept,
            } => {
                let Shape::Maps { c, b, h, w } = x.shape else {
                    return Err(wrong_input(name, "maps", x.shape));
                };
                let n = b * h * w;
                if c != *channels || n < 2 {
                    return Err(wrong_input(
                        name,
                        &format!("{channels} channels of more than one value"),
                        x.shape,
                    ));
                }
                let y = gpu.scratch(x.shape.len())?;
                let mean = gpu.scratch(c)?;
                let inv_std = gpu.scratch(c)?;
                let bufs = &store.buffers;
                let slices = bn_slices(c, n);
                let part = gpu.scratch(c * slices)?;
                let (gamma, beta) = (p.at(affine.0), p.at(affine.1));
                let (cc, nn, ss) = (int(c)?, Arg::L(n as i64), int(slices)?);
                let stats = |centre: u64| {
                    gpu.launch(
                        "bn_partial_stats",
                        (c * slices) as u32,
                        256,
                        &[Arg::P(x.ptr()), Arg::P(part.ptr()), nn, ss, Arg::P(centre)],
                    )
                };
                stats(0)?;
                gpu.launch_n(
                    "bn_finish_mean",
                    c,
                    &[Arg::P(part.ptr()), Arg::P(mean.ptr()), cc, ss, nn],
                )?;
                stats(mean.ptr())?;
                gpu.launch_n(
                    "bn_finish_var",
                    c,
                    &[
                        Arg::P(part.ptr()),
                        Arg::P(mean.ptr()),
                        Arg::P(inv_std.ptr()),
                        Arg::P(bufs.at(*running)),
                        Arg::P(bufs.at(*running + c)),
                        cc,
                        ss,
                        nn,
                        Arg::F(*eps),
                        Arg::F(*momentum),
                        Arg::F((n as f64 / (n - 1) as f64) as f32),
                    ],
                )?;
                gpu.launch_n(
                    "bn_apply",
                    c * n,
                    &[
                        Arg::P(x.ptr()),
                        Arg::P(y.ptr()),
                        Arg::P(gamma),
                        Arg::P(beta),
                        Arg::P(mean.ptr()),
                        Arg::P(inv_std.ptr()),
                        cc,
                        nn,
                        Arg::I(rect.is_some() as i32),
                        Arg::F(rect.unwrap_or(0.0)),
                    ],
                )?;
                let shape = x.shape;
                *kept = Some((x, mean, inv_std));
                Ok(Tensor::new(y, shape))
            }
            Kind::Activation { code, kept } => {
                let x = x.into_unique(gpu)?;
                let n = x.shape.len();
                gpu.launch_n(
                    "activation_forward",
                    n,
                    &[Arg::P(x.ptr()), Arg::L(n as i64), Arg::I(code.0), Arg::F(code.1)],
                )?;
                *kept = Some(x.clone());
                Ok(x)
            }
            Kind::Linear {
                in_f,
                out_f,
                p: wb,
                kept,
            } => {
                let Shape::Rows { b, f } = x.shape else {
                    return Err(wrong_input(name, "rows", x.shape));
                };
                if f != *in_f {
                    return Err(wrong_input(name, &format!("{in_f} columns"), x.shape));
                }
                let y = gpu.scratch(b * *out_f)?;
                gpu.gemm(
                    (Op::N, Op::T),
                    (b, *out_f, *in_f),
                    1.0,
                    x.ptr(),
                    p.at(wb.w),
                    0.0,
                    y.ptr(),
                )?;
                if let Some(bo) = wb.b {
                    gpu.launch_n(
                        "add_col_bias",
                        b * *out_f,
                        &[Arg::P(y.ptr()), Arg::P(p.at(bo)), int(b)?, int(*out_f)?],
                    )?;
                }
                *kept = Some(x);
                Ok(Tensor::new(y, Shape::Rows { b, f: *out_f }))
            }
            Kind::PixelBias { shape, b: bo, kept } => {
                let numel: usize = shape.iter().product();
                let (c, b, hw) = match x.shape {
                    Shape::Maps { c, b, h, w } if c * h * w == numel && shape.first() == Some(&c) => (c, b, h * w),
                    Shape::Rows { b, f } if f == numel => (1, b, f),
                    other => return Err(wrong_input(name, &format!("samples of shape {shape:?}"), other)),
                };
                let x = x.into_unique(gpu)?;
                gpu.launch_n(
                    "add_pixel_bias",
                    x.shape.len(),
                    &[Arg::P(x.ptr()), Arg::P(p.at(*bo)), int(c)?, int(b)?, Arg::L(hw as i64)],
                )?;
                *kept = Some(x.shape);
                Ok(x)
            }
            Kind::Flatten { kept } => {
                *kept = Some(x.shape);
                let out = match x.shape {
                    Shape::Rows { .. } => x,
                    Shape::Maps { c, b, h, w } => {
                        let rows = Shape::Rows { b, f: c * h * w };
                        permute(gpu, x, rows)?
                    }
                };
                Ok(out)
            }
            Kind::Unflatten { shape, kept } => {
                let Shape::Rows { b, f } = x.shape else {
                    return Err(wrong_input(name, "rows", x.shape));
                };
                if shape.iter().product::<usize>() != f {
                    return Err(wrong_input(name, &format!("rows of {shape:?}"), x.shape));
                }
                let out = match shape[..] {
                    [c, h, w] => permute(gpu, x, Shape::Maps { c, b, h, w })?,
                    _ => x,
                };
                *kept = Some(Shape::Rows { b, f });
                Ok(out)
            }
        }
    }

    fn backward(&mut self, gpu: &Gpu, store: &ParamStore, dy: Tensor, need_dx: bool) -> Result<Option<Tensor>> {
        let name = &self.name;
        let missing = || Error::Device(format!("GPU layer {name}: backward before forward"));
        let p = &store.params;
        let g = &store.grads;
        match &mut self.kind {
            Kind::Conv2d {
                in_ch,
                out_ch,
                p: wb,
                kept,
                ..
            } => {
                let (col, geom) = kept.take().ok_or_else(missing)?;
                let ncols = geom.col_cols();
                if let Some(bo) = wb.b {
                    channel_sums(gpu, dy.ptr(), g.at(bo), *out_ch, ncols)?;
                }
                gpu.gemm(
                    (Op::N, Op::T),
                    (*out_ch, geom.col_rows(), ncols),
                    1.0,
                    dy.ptr(),
                    col.ptr(),
                    0.0,
                    g.at(wb.w),
                )?;
                if !need_dx {
                    return Ok(None);
                }
                // dcol = W^T dy, over the kept columns (no longer needed).
                gpu.gemm(
                    (Op::T, Op::N),
                    (geom.col_rows(), ncols, *out_ch),
                    1.0,
                    p.at(wb.w),
                    dy.ptr(),
                    0.0,
                    col.ptr(),
                )?;
                let dx = gpu.scratch(geom.image_len())?;
                geom.col2im(gpu, col.ptr(), dx.ptr())?;
                Ok(Some(Tensor::new(
                    dx,
                    Shape::Maps {
                        c: *in_ch,
                        b: geom.b,
                        h: geom.conv.h,
                        w: geom.conv.w,
                    },
                )))
            }
            Kind::ConvTranspose2d {
                in_ch,
                out_ch,
                p: wb,
                kept,
                ..
            } => {
                let (x, geom) = kept.take().ok_or_else(missing)?;
                let dcol = gpu.scratch(geom.col_rows() * geom.col_cols())?;
                geom.im2col(gpu, dy.ptr(), dcol.ptr())?;
                if let Some(bo) = wb.b {
                    channel_sums(gpu, dy.ptr(), g.at(bo), *out_ch, geom.per_channel())?;
                }
                gpu.gemm(
                    (Op::N, Op::T),
                    (*in_ch, geom.col_rows(), geom.col_cols()),
                    1.0,
                    x.ptr(),
                    dcol.ptr(),
                    0.0,
                    g.at(wb.w),
                )?;
                if !need_dx {
                    return Ok(None);
                }
                let dx = x.reuse_or_alloc(gpu)?;
                gpu.gemm(
                    (Op::N, Op::N),
                    (*in_ch, geom.col_cols(), geom.col_rows()),
                    1.0,
                    p.at(wb.w),
                    dcol.ptr(),
                    0.0,
                    dx.ptr(),
                )?;
                Ok(Some(dx))
            }
            Kind::BatchNorm2d {
                channels,
                rect,
                affine,
                kept,
                ..
            } => {
                let (x, mean, inv_std) = kept.take().ok_or_else(missing)?;
                let Shape::Maps { b, h, w, .. } = x.shape else {
                    return Err(missing());
                };
                let dy = dy.into_unique(gpu)?;
                let (c, n) = (*channels, b * h * w);
                let slices = bn_slices(c, n);
                let (part1, part2, sums) = (gpu.scratch(c * slices)?, gpu.scratch(c * slices)?, gpu.scratch(2 * c)?);
                let (gamma, beta) = (p.at(affine.0), p.at(affine.1));
                let (cc, nn, ss) = (int(c)?, Arg::L(n as i64), int(slices)?);
                let (r, slope) = (Arg::I(rect.is_some() as i32), Arg::F(rect.unwrap_or(0.0)));
                // What both gradient kernels read first: the input, dy and the statistics.
                let inputs = [
                    Arg::P(x.ptr()),
                    Arg::P(dy.ptr()),
                    Arg::P(gamma),
                    Arg::P(beta),
                    Arg::P(mean.ptr()),
                    Arg::P(inv_std.ptr()),
                ];
                gpu.launch(
                    "bn_partial_grads",
                    (c * slices) as u32,
                    256,
                    &[
                        &inputs[..],
                        &[Arg::P(part1.ptr()), Arg::P(part2.ptr()), nn, ss, r, slope],
                    ]
                    .concat(),
                )?;
                gpu.launch_n(
                    "bn_finish_grads",
                    c,
                    &[
                        Arg::P(part1.ptr()),
                        Arg::P(part2.ptr()),
                        Arg::P(inv_std.ptr()),
                        Arg::P(g.at(affine.0)),
                        Arg::P(g.at(affine.1)),
                        Arg::P(sums.ptr()),
                        cc,
                        ss,
                    ],
                )?;
                if need_dx {
                    gpu.launch_n(
                        "bn_apply_grad",
                        c * n,
                        &[&inputs[..], &[Arg::P(sums.ptr()), cc, nn, r, slope]].concat(),
                    )?;
                }
                Ok(need_dx.then_some(dy))
            }
            Kind::Activation { code, kept } => {
                let y = kept.take().ok_or_else(missing)?;
                if !need_dx {
                    return Ok(None);
                }
                let dy = dy.into_unique(gpu)?;
                let n = dy.shape.len();
                gpu.launch_n(
                    "activation_backward",
                    n,
                    &[
                        Arg::P(y.ptr()),
                        Arg::P(dy.ptr()),
                        Arg::L(n as i64),
                        Arg::I(code.0),
                        Arg::F(code.1),
                    ],
                )?;
                Ok(Some(dy))
            }
            Kind::Linear {
                in_f,
                out_f,
                p: wb,
                kept,
            } => {
                let x = kept.take().ok_or_else(missing)?;
                let Shape::Rows { b, .. } = x.shape else {
                    return Err(missing());
                };
                if let Some(bo) = wb.b {
                    gpu.launch_n(
                        "col_sums",
                        *out_f,
                        &[Arg::P(dy.ptr()), Arg::P(g.at(bo)), int(b)?, int(*out_f)?],
                    )?;
                }
                gpu.gemm(
                    (Op::T, Op::N),
                    (*out_f, *in_f, b),
                    1.0,
                    dy.ptr(),
                    x.ptr(),
                    0.0,
                    g.at(wb.w),
                )?;
                if !need_dx {
                    return Ok(None);
                }
                let dx = x.reuse_or_alloc(gpu)?;
                gpu.gemm(
                    (Op::N, Op::N),
                    (b, *in_f, *out_f),
                    1.0,
                    dy.ptr(),
                    p.at(wb.w),
                    0.0,
                    dx.ptr(),
                )?;
                Ok(Some(dx))
            }
            Kind::PixelBias { b: bo, kept, .. } => {
                let shape = kept.take().ok_or_else(missing)?;
                let (c, b, hw) = match shape {
                    Shape::Maps { c, b, h, w } => (c, b, h * w),
                    Shape::Rows { b, f } => (1, b, f),
                };
                gpu.launch_n(
                    "pixel_bias_grad",
                    c * hw,
                    &[Arg::P(dy.ptr()), Arg::P(g.at(*bo)), int(c)?, int(b)?, Arg::L(hw as i64)],
                )?;
                Ok(need_dx.then_some(dy))
            }
            Kind::Flatten { kept } => {
                let input = kept.take().ok_or_else(missing)?;
                if !need_dx {
                    return Ok(None);
                }
                match input {
                    Shape::Rows { .. } => Ok(Some(dy)),
                    maps => Ok(Some(permute(gpu, dy, maps)?)),
                }
            }
            Kind::Unflatten { kept, .. } => {
                let input = kept.take().ok_or_else(missing)?;
                if !need_dx {
                    return Ok(None);
                }
                match dy.shape {
                    Shape::Rows { .. } => Ok(Some(Tensor {
                        buf: dy.buf,
                        shape: input,
                    })),
                    _ => Ok(Some(permute(gpu, dy, input)?)),
                }
            }
        }
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
