//! Conv2d: `y[n, o] = b[o] + sum_c w[o, c] ⋆ x[n, c]` by im2col + GEMM, parallel over the batch.

use ndarray::{Array4, ArrayD, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4, Axis, Ix4};
use rand::Rng;

use super::im2col::{gemm_fold, unfold_gemm, weight_grad, ConvGeom};
use super::{Layer, Mode, Module, Param};
use crate::{Error, Float, Result};

/// Stride, padding, dilation (and, for the transposed convolution, output padding) of a
/// convolution, and whether it has a bias. Defaults as PyTorch: 1, 0, 1, 0, bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    /// `(sh, sw)`.
    pub stride: (usize, usize),
    /// `(ph, pw)`.
    pub padding: (usize, usize),
    /// `(dh, dw)`.
    pub dilation: (usize, usize),
    /// Extra rows/columns on one side of a transposed convolution's output.
    pub output_padding: (usize, usize),
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            output_padding: (0, 0),
            bias: true,
        }
    }
}

impl ConvOptions {
    /// Same stride on both axes.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    /// Same padding on both axes.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
    /// Same dilation on both axes.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }
    /// Same output padding on both axes (transposed convolution only).
    pub fn output_padding(mut self, p: usize) -> Self {
        self.output_padding = (p, p);
        self
    }
    /// With or without bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
}

fn check_x<F>(what: &str, x: &ArrayView4<F>, channels: usize) -> Result<()> {
    if x.shape()[1] != channels {
        return Err(Error::shape(what, format!("[batch, {channels}, h, w]"), x.shape()));
    }
    Ok(())
}

/// Geometry of a Conv2d with weight `[o, c, kh, kw]` on input `x` `[n, c, h, w]`.
fn geom(x: &[usize], w: &[usize], opts: &ConvOptions) -> Result<ConvGeom> {
    ConvGeom::new(
        x[1],
        (x[2], x[3]),
        (w[2], w[3]),
        opts.stride,
        opts.padding,
        opts.dilation,
    )
}

/// Forward: `x` `[n, c, h, w]`, `w` `[o, c, kh, kw]`, `b` `[o]` → `[n, o, oh, ow]`.
pub fn conv2d_forward<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    b: Option<ArrayView1<F>>,
    opts: &ConvOptions,
) -> Result<Array4<F>> {
    check_x("conv2d input", &x, w.shape()[1])?;
    let g = geom(x.shape(), w.shape(), opts)?;
    let (n, o) = (x.shape()[0], w.shape()[0]);
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let xm = x
        .view()
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("contiguous");
    let wm = w.view().into_shape_with_order((o, g.col_rows())).expect("contiguous");
    let mut y = Array4::<F>::zeros((n, o, g.oh, g.ow));
    {
        let yv = y
            .view_mut()
            .into_shape_with_order((n, o, g.col_cols()))
            .expect("contiguous");
        unfold_gemm(xm, &g, wm, yv);
    }
    if let Some(b) = b {
        add_channel_bias(y.view_mut(), b);
    }
    Ok(y)
}

/// `y[n, o, ..] += b[o]`.
pub(crate) fn add_channel_bias<F: Float>(mut y: ArrayViewMut4<F>, b: ArrayView1<F>) {
    for mut yn in y.axis_iter_mut(Axis(0)) {
        for (mut yo, &bo) in yn.axis_iter_mut(Axis(0)).zip(b) {
            yo += bo;
        }
    }
}

/// `db[o] += sum over n, y, x of dy[n, o, y, x]`.
pub(crate) fn channel_bias_grad<F: Float>(dy: ArrayView4<F>, mut db: ArrayViewMut1<F>) {
    for dyn_ in dy.axis_iter(Axis(0)) {
        for (d, dyo) in db.iter_mut().zip(dyn_.axis_iter(Axis(0))) {
            *d += dyo.sum();
        }
    }
}

/// Backward of [`conv2d_forward`] given `dy` `[n, o, oh, ow]`: accumulates `dw += ...` and
/// `db += ...`, returns `dx` if `need_dx`.
pub fn conv2d_backward<F: Float>(
    x: ArrayView4<F>,
    w: ArrayView4<F>,
    dy: ArrayView4<F>,
    opts: &ConvOptions,
    need_dx: bool,
    dw: ArrayViewMut4<F>,
    db: Option<ArrayViewMut1<F>>,
) -> Result<Option<Array4<F>>> {
    check_x("conv2d input", &x, w.shape()[1])?;
    let g = geom(x.shape(), w.shape(), opts)?;
    let (n, o) = (x.shape()[0], w.shape()[0]);
    if dy.shape() != [n, o, g.oh, g.ow] {
        return Err(Error::shape(
            "conv2d dy",
            format!("[{n}, {o}, {}, {}]", g.oh, g.ow),
            dy.shape(),
        ));
    }
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let dy = dy.as_standard_layout();
    let xm = x
        .view()
        .into_shape_with_order((n, g.c * g.h * g.w))
        .expect("contiguous");
    let wm = w.view().into_shape_with_order((o, g.col_rows())).expect("contiguous");
    let dym = dy
        .view()
        .into_shape_with_order((n, o, g.col_cols()))
        .expect("contiguous");
    if let Some(db) = db {
        channel_bias_grad(dy.view(), db);
    }
    let dwm = dw
        .into_shape_with_order((o, g.col_rows()))
        .expect("contiguous weight gradient");
    weight_grad(dym, xm, &g, dwm);
    Ok(need_dx.then(|| {
        let mut dx = Array4::<F>::zeros(x.raw_dim());
        let dxm = dx
            .view_mut()
            .into_shape_with_order((n, g.c * g.h * g.w))
            .expect("contiguous");
        gemm_fold(dym, &g, wm, dxm);
        dx
    }))
}

/// A 2-D convolution layer: weight `[out, in, kh, kw]`, bias `[out]`, PyTorch's default
/// initialisation (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, `fan_in = in*kh*kw`) and
/// `state_dict` names `{prefix}.weight`, `{prefix}.bias`.
#[derive(Debug, Clone)]
pub struct Conv2d<F> {
    /// `[out, in, kh, kw]`.
    pub weight: Param<F>,
    /// `[out]`.
    pub bias: Option<Param<F>>,
    /// Stride, padding, dilation.
    pub opts: ConvOptions,
    input: Option<Array4<F>>,
}

impl<F: Float> Conv2d<F> {
    /// `in_ch -> out_ch` channels with a `kernel = (kh, kw)` kernel.
    pub fn new<R: Rng + ?Sized>(
        prefix: &str,
        in_ch: usize,
        out_ch: usize,
        kernel: (usize, usize),
        opts: ConvOptions,
        rng: &mut R,
    ) -> Self {
        let bound = F::one() / F::lit((in_ch * kernel.0 * kernel.1) as f64).sqrt();
        let weight = Param::uniform(
            format!("{prefix}.weight"),
            &[out_ch, in_ch, kernel.0, kernel.1],
            bound,
            rng,
        );
        let bias = opts
            .bias
            .then(|| Param::uniform(format!("{prefix}.bias"), &[out_ch], bound, rng));
        Conv2d {
            weight,
            bias,
            opts,
            input: None,
        }
    }

    fn w(&self) -> ArrayView4<'_, F> {
        self.weight.value.view().into_dimensionality().expect("4-D weight")
    }

    /// Forward without keeping the input.
    pub fn infer(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let b = self
            .bias
            .as_ref()
            .map(|b| b.value.view().into_dimensionality().expect("vector"));
        conv2d_forward(x, self.w(), b, &self.opts)
    }

    /// Backward from the kept input.
    pub fn backward4(&mut self, dy: ArrayView4<F>, need_dx: bool) -> Result<Option<Array4<F>>> {
        let x = self
            .input
            .take()
            .ok_or_else(|| Error::InvalidArgument(format!("Conv2d {}: backward before forward", self.weight.name)))?;
        let w = self
            .weight
            .value
            .view()
            .into_dimensionality::<Ix4>()
            .expect("4-D weight");
        let dw = self
            .weight
            .grad
            .view_mut()
            .into_dimensionality::<Ix4>()
            .expect("4-D weight");
        let db = self
            .bias
            .as_mut()
            .map(|b| b.grad.view_mut().into_dimensionality().expect("vector"));
        conv2d_backward(x.view(), w, dy, &self.opts, need_dx, dw, db)
    }
}

impl<F: Float> Module<F> for Conv2d<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}

impl<F: Float> Layer<F> for Conv2d<F> {
    fn forward(&mut self, x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>> {
        let x = to4(x, &self.weight.name)?;
        let y = self.infer(x.view())?;
        if mode == Mode::Train {
            self.input = Some(x);
        }
        Ok(y.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let dy = to4(dy, &self.weight.name)?;
        Ok(self.backward4(dy.view(), need_dx)?.map(Array4::into_dyn))
    }
}

/// A dynamic array as NCHW, or an error naming the layer.
pub(crate) fn to4<F: Float>(x: ArrayD<F>, layer: &str) -> Result<Array4<F>> {
    let shape = x.shape().to_vec();
    x.into_dimensionality::<Ix4>()
        .map_err(|_| Error::shape(format!("layer {layer} input"), "[batch, channels, h, w]", &shape))
}
