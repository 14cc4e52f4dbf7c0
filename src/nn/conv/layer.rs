//! The convolution layer in both directions, with what describes one: its options
//! ([`ConvOptions`]), its geometry ([`ConvGeom`], seen from the side that is unfolded) and
//! the layer itself ([`ConvLayer`], with [`Conv2d`] and [`ConvTranspose2d`] its two
//! directions). The arithmetic is in [`super::functions`].

use std::fmt::Debug;
use std::marker::PhantomData;

use ndarray::{Array4, ArrayD, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4, Ix4};
use rand::Rng;

use super::algorithm::ConvAlgorithm;
use super::fourier::KernelCache;
use super::functions::{
    conv2d_backward_over_input, conv2d_backward_params, conv2d_forward_keeping, conv_transpose2d_backward_over_input,
    conv_transpose2d_backward_params, conv_transpose2d_forward_keeping,
};
use crate::nn::{to4, Layer, LayerSpec, Mode, Module, Param};
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
    /// How the products are computed (im2col or per frequency); the same result either way.
    pub algorithm: ConvAlgorithm,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            output_padding: (0, 0),
            bias: true,
            algorithm: ConvAlgorithm::Auto,
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
    /// The algorithm computing the products (default [`ConvAlgorithm::Auto`]).
    pub fn algorithm(mut self, algorithm: ConvAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }
}

/// Sizes of one convolution, seen from the side of the image that is unfolded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Channels of the unfolded image.
    pub c: usize,
    /// Its height.
    pub h: usize,
    /// Its width.
    pub w: usize,
    /// Kernel `(kh, kw)`.
    pub kernel: (usize, usize),
    /// Stride `(sh, sw)`.
    pub stride: (usize, usize),
    /// Zero padding `(ph, pw)`.
    pub padding: (usize, usize),
    /// Dilation `(dh, dw)`.
    pub dilation: (usize, usize),
    /// Output height (positions of the kernel).
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl ConvGeom {
    /// The geometry of a convolution over a `c x h x w` image, computing the output size
    /// as PyTorch does: `(h + 2p - d (k - 1) - 1) / s + 1`.
    pub fn new(
        c: usize,
        (h, w): (usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
    ) -> Result<Self> {
        let out = |n: usize, k: usize, s: usize, p: usize, d: usize| -> Result<usize> {
            let span = d * (k - 1) + 1;
            if k == 0 || s == 0 || d == 0 {
                return Err(Error::InvalidArgument(
                    "kernel, stride and dilation must be positive".into(),
                ));
            }
            if n + 2 * p < span {
                return Err(Error::InvalidArgument(format!(
                    "kernel span {span} is larger than the padded input {}",
                    n + 2 * p
                )));
            }
            Ok((n + 2 * p - span) / s + 1)
        };
        Ok(ConvGeom {
            c,
            h,
            w,
            kernel,
            stride,
            padding,
            dilation,
            oh: out(h, kernel.0, stride.0, padding.0, dilation.0)?,
            ow: out(w, kernel.1, stride.1, padding.1, dilation.1)?,
        })
    }

    /// Rows of the column matrix: `c * kh * kw`.
    pub fn col_rows(&self) -> usize {
        self.c * self.kernel.0 * self.kernel.1
    }

    /// Columns of the column matrix: `oh * ow`.
    pub fn col_cols(&self) -> usize {
        self.oh * self.ow
    }

    /// Whether the kernel covers the whole plane at a single position (output 1x1, no
    /// padding, no dilation, kernel = plane): the column matrix of an image is then the
    /// image itself, and the convolution a fully connected layer over the batch, one GEMM
    /// (the DCGAN VAE's first transposed convolution, from its 1x1 code).
    pub fn is_dense(&self) -> bool {
        self.oh == 1
            && self.ow == 1
            && self.padding == (0, 0)
            && self.dilation == (1, 1)
            && (self.h, self.w) == self.kernel
    }

    /// For kernel offset `k` along an axis, the range of output positions whose input
    /// coordinate `o*s - p + k*d` falls inside `0..n`.
    #[inline]
    pub(super) fn valid(o_len: usize, n: usize, s: usize, p: usize, off: usize) -> (usize, usize) {
        // o*s + off >= p  and  o*s + off < n + p
        let lo = if off >= p { 0 } else { (p - off).div_ceil(s) };
        let hi = if n + p > off {
            ((n + p - off - 1) / s + 1).min(o_len)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Geometry of a Conv2d with weight `[o, c, kh, kw]` on input `x` `[n, c, h, w]`.
pub(crate) fn direct_geom(x: &[usize], w: &[usize], opts: &ConvOptions) -> Result<ConvGeom> {
    ConvGeom::new(
        x[1],
        (x[2], x[3]),
        (w[2], w[3]),
        opts.stride,
        opts.padding,
        opts.dilation,
    )
}

/// The geometry of the convolution this one transposes: unfolding the *output* image
/// `[c_out, h_out, w_out]` with `h_out = (h - 1) s - 2p + d (k - 1) + output_padding + 1`.
pub(crate) fn transposed_geom(x: &[usize], w: &[usize], opts: &ConvOptions) -> Result<ConvGeom> {
    if x[1] != w[0] {
        return Err(Error::shape(
            "conv_transpose2d input",
            format!("[batch, {}, h, w]", w[0]),
            x,
        ));
    }
    let side = |n: usize, k: usize, s: usize, p: usize, d: usize, op: usize| -> Result<usize> {
        if op >= s && op >= d {
            return Err(Error::InvalidArgument(format!(
                "output_padding {op} must be smaller than the stride {s} or the dilation {d}"
            )));
        }
        ((n.max(1) - 1) * s + d * (k - 1) + op + 1)
            .checked_sub(2 * p)
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::InvalidArgument("padding larger than the transposed output".into()))
    };
    let (s, p, d, op) = (opts.stride, opts.padding, opts.dilation, opts.output_padding);
    let ho = side(x[2], w[2], s.0, p.0, d.0, op.0)?;
    let wo = side(x[3], w[3], s.1, p.1, d.1, op.1)?;
    let mut g = ConvGeom::new(w[1], (ho, wo), (w[2], w[3]), s, p, d)?;
    // Output padding below the dilation (stride 1) leaves the convolution room for more
    // kernel positions than the input has rows: those positions read nothing.
    debug_assert!(g.oh >= x[2] && g.ow >= x[3]);
    (g.oh, g.ow) = (x[2], x[3]);
    Ok(g)
}

/// Which way a convolution layer runs: [`Direct`] (Conv2d) or [`Transposed`]
/// (ConvTranspose2d).
pub trait ConvDirection: Debug + Clone + Send + Sync + 'static {
    /// The PyTorch class name, for messages.
    const NAME: &'static str;
    /// Whether this is the transposed direction.
    const TRANSPOSED: bool;
    /// The weight's shape for `in_ch -> out_ch` channels and a `kernel`.
    fn weight_shape(in_ch: usize, out_ch: usize, kernel: (usize, usize)) -> [usize; 4];
    /// The fan-in PyTorch's default initialisation uses (`size(1) * kh * kw`).
    fn fan_in(in_ch: usize, out_ch: usize, kernel: (usize, usize)) -> usize;
    /// The forward free function; `weight` pairs the weight with the [`KernelCache`] the
    /// Fourier path leaves its kernel blocks in.
    fn forward<F: Float>(
        x: ArrayView4<F>,
        weight: (ArrayView4<F>, &mut KernelCache<F>),
        b: Option<ArrayView1<F>>,
        o: &ConvOptions,
    ) -> Result<Array4<F>>;
    /// The parameter half of the backward free function: `dw += ...`, `db += ...`.
    fn backward_params<F: Float>(
        x: ArrayView4<F>,
        w: ArrayView4<F>,
        dy: ArrayView4<F>,
        o: &ConvOptions,
        dw: ArrayViewMut4<F>,
        db: Option<ArrayViewMut1<F>>,
    ) -> Result<()>;
    /// Both halves in one pass, the input gradient written over the kept input `x`
    /// (standard layout), which is read first; the Fourier path takes its kernel blocks
    /// from `weight`'s [`KernelCache`] when the forward left them there for these weights.
    fn backward_over_input<F: Float>(
        x: ArrayViewMut4<F>,
        weight: (ArrayView4<F>, &mut KernelCache<F>),
        dy: ArrayView4<F>,
        o: &ConvOptions,
        dw: ArrayViewMut4<F>,
        db: Option<ArrayViewMut1<F>>,
    ) -> Result<()>;
}

/// Conv2d: weight `[out, in, kh, kw]`, `fan_in = in*kh*kw`.
#[derive(Debug, Clone, Copy)]
pub struct Direct;

/// ConvTranspose2d: weight `[in, out, kh, kw]`, `fan_in = out*kh*kw` (PyTorch reads the
/// fan-in off the weight's second axis).
#[derive(Debug, Clone, Copy)]
pub struct Transposed;

impl ConvDirection for Direct {
    const NAME: &'static str = "Conv2d";
    const TRANSPOSED: bool = false;
    fn weight_shape(i: usize, o: usize, k: (usize, usize)) -> [usize; 4] {
        [o, i, k.0, k.1]
    }
    fn fan_in(i: usize, _o: usize, k: (usize, usize)) -> usize {
        i * k.0 * k.1
    }
    fn forward<F: Float>(
        x: ArrayView4<F>,
        (w, kernels): (ArrayView4<F>, &mut KernelCache<F>),
        b: Option<ArrayView1<F>>,
        o: &ConvOptions,
    ) -> Result<Array4<F>> {
        conv2d_forward_keeping(x, w, b, o, kernels)
    }
    fn backward_params<F: Float>(
        x: ArrayView4<F>,
        w: ArrayView4<F>,
        dy: ArrayView4<F>,
        o: &ConvOptions,
        dw: ArrayViewMut4<F>,
        db: Option<ArrayViewMut1<F>>,
    ) -> Result<()> {
        conv2d_backward_params(x, w, dy, o, dw, db)
    }
    fn backward_over_input<F: Float>(
        x: ArrayViewMut4<F>,
        (w, kernels): (ArrayView4<F>, &mut KernelCache<F>),
        dy: ArrayView4<F>,
        o: &ConvOptions,
        dw: ArrayViewMut4<F>,
        db: Option<ArrayViewMut1<F>>,
    ) -> Result<()> {
        conv2d_backward_over_input(x, (w, kernels), dy, o, dw, db)
    }
}

impl ConvDirection for Transposed {
    const NAME: &'static str = "ConvTranspose2d";
    const TRANSPOSED: bool = true;
    fn weight_shape(i: usize, o: usize, k: (usize, usize)) -> [usize; 4] {
        [i, o, k.0, k.1]
    }
    fn fan_in(_i: usize, o: usize, k: (usize, usize)) -> usize {
        o * k.0 * k.1
    }
    fn forward<F: Float>(
        x: ArrayView4<F>,
        (w, kernels): (ArrayView4<F>, &mut KernelCache<F>),
        b: Option<ArrayView1<F>>,
        o: &ConvOptions,
    ) -> Result<Array4<F>> {
        conv_transpose2d_forward_keeping(x, w, b, o, kernels)
    }
    fn backward_params<F: Float>(
        x: ArrayView4<F>,
        w: ArrayView4<F>,
        dy: ArrayView4<F>,
        o: &ConvOptions,
        dw: ArrayViewMut4<F>,
        db: Option<ArrayViewMut1<F>>,
    ) -> Result<()> {
        conv_transpose2d_backward_params(x, w, dy, o, dw, db)
    }
    fn backward_over_input<F: Float>(
        x: ArrayViewMut4<F>,
        (w, kernels): (ArrayView4<F>, &mut KernelCache<F>),
        dy: ArrayView4<F>,
        o: &ConvOptions,
        dw: ArrayViewMut4<F>,
        db: Option<ArrayViewMut1<F>>,
    ) -> Result<()> {
        conv_transpose2d_backward_over_input(x, (w, kernels), dy, o, dw, db)
    }
}

/// A convolution layer with PyTorch's default initialisation
/// (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for weight and bias) and `state_dict` names
/// `{prefix}.weight`, `{prefix}.bias`.
#[derive(Debug, Clone)]
pub struct ConvLayer<F, D> {
    /// The weight, laid out as [`ConvDirection::weight_shape`].
    pub weight: Param<F>,
    /// `[out]`.
    pub bias: Option<Param<F>>,
    /// Stride, padding, dilation (and output padding for the transposed direction).
    pub opts: ConvOptions,
    input: Option<Array4<F>>,
    /// The forward's kernel transforms, for the backward (Fourier path only).
    kernels: KernelCache<F>,
    direction: PhantomData<D>,
}

/// `torch.nn.Conv2d`: weight `[out, in, kh, kw]`.
pub type Conv2d<F> = ConvLayer<F, Direct>;

/// `torch.nn.ConvTranspose2d`: weight `[in, out, kh, kw]`.
pub type ConvTranspose2d<F> = ConvLayer<F, Transposed>;

impl<F: Float, D: ConvDirection> ConvLayer<F, D> {
    /// `in_ch -> out_ch` channels with a `kernel = (kh, kw)` kernel.
    pub fn new<R: Rng + ?Sized>(
        prefix: &str,
        in_ch: usize,
        out_ch: usize,
        kernel: (usize, usize),
        opts: ConvOptions,
        rng: &mut R,
    ) -> Self {
        let bound = F::one() / F::lit(D::fan_in(in_ch, out_ch, kernel) as f64).sqrt();
        let weight = Param::uniform(
            format!("{prefix}.weight"),
            &D::weight_shape(in_ch, out_ch, kernel),
            bound,
            rng,
        );
        let bias = opts
            .bias
            .then(|| Param::uniform(format!("{prefix}.bias"), &[out_ch], bound, rng));
        ConvLayer {
            weight,
            bias,
            opts,
            input: None,
            kernels: KernelCache::default(),
            direction: PhantomData,
        }
    }

    /// Forward without keeping the input.
    pub fn infer(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        self.run_forward(x, &mut KernelCache::default())
    }

    /// Forward, with the kernel transforms left in `kernels`.
    fn run_forward(&self, x: ArrayView4<F>, kernels: &mut KernelCache<F>) -> Result<Array4<F>> {
        let w = self
            .weight
            .value
            .view()
            .into_dimensionality::<Ix4>()
            .expect("4-D weight");
        let b = self
            .bias
            .as_ref()
            .map(|b| b.value.view().into_dimensionality().expect("vector"));
        D::forward(x, (w, kernels), b, &self.opts)
    }

    /// Forward in `mode`; outside [`Mode::Eval`] keeps `x` (and the Fourier path's kernel
    /// blocks) for [`ConvLayer::backward4`].
    pub fn forward4(&mut self, x: Array4<F>, mode: Mode) -> Result<Array4<F>> {
        if !mode.keeps_cache() {
            self.kernels.clear();
            self.input = None;
            return self.infer(x.view());
        }
        let mut kernels = std::mem::take(&mut self.kernels);
        let y = self.run_forward(x.view(), &mut kernels)?;
        (self.input, self.kernels) = (Some(x), kernels);
        Ok(y)
    }

    /// Backward from the kept input: accumulates the weight and bias gradients, returns
    /// `dx` if `need_dx`.
    pub fn backward4(&mut self, dy: Array4<F>, need_dx: bool) -> Result<Option<Array4<F>>> {
        let dy = dy.view();
        // What the forward kept serves this backward only.
        let mut kernels = std::mem::take(&mut self.kernels);
        let x = self.input.take().ok_or_else(|| {
            Error::InvalidArgument(format!("{} {}: backward before forward", D::NAME, self.weight.name))
        })?;
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
        if !need_dx {
            D::backward_params(x.view(), w, dy, &self.opts, dw, db)?;
            return Ok(None);
        }
        // dx has the input's shape and the input is no longer needed once read: both
        // gradients come out of one pass that overwrites it (no second activation-sized
        // array to allocate and fault in).
        let mut x = if x.is_standard_layout() {
            x
        } else {
            x.as_standard_layout().into_owned()
        };
        D::backward_over_input(x.view_mut(), (w, &mut kernels), dy, &self.opts, dw, db)?;
        Ok(Some(x))
    }
}

impl<F: Float, D: ConvDirection> Module<F> for ConvLayer<F, D> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}

impl<F: Float, D: ConvDirection> Layer<F> for ConvLayer<F, D> {
    fn spec(&self) -> LayerSpec {
        let s = self.weight.value.shape();
        let kernel = (s[2], s[3]);
        let opts = self.opts;
        if D::TRANSPOSED {
            LayerSpec::ConvTranspose2d {
                in_ch: s[0],
                out_ch: s[1],
                kernel,
                opts,
            }
        } else {
            LayerSpec::Conv2d {
                in_ch: s[1],
                out_ch: s[0],
                kernel,
                opts,
            }
        }
    }

    fn forward(&mut self, x: ArrayD<F>, mode: Mode) -> Result<ArrayD<F>> {
        let x = to4(x, &self.weight.name)?;
        Ok(self.forward4(x, mode)?.into_dyn())
    }

    fn backward(&mut self, dy: ArrayD<F>, need_dx: bool) -> Result<Option<ArrayD<F>>> {
        let dy = to4(dy, &self.weight.name)?;
        Ok(self.backward4(dy, need_dx)?.map(Array4::into_dyn))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array4, ArrayD};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use ndarray::{Array1, ArrayView1};

    use crate::nn::{
        conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward, ConvAlgorithm,
    };

    fn random4(shape: [usize; 4], rng: &mut ChaCha8Rng) -> Array4<f64> {
        Array4::from_shape_fn(shape, |_| rng.random_range(-1.0..1.0))
    }

    fn max_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
        (a - b)
            .iter()
            .fold(0.0, |m, d| if d.abs() > m || d.is_nan() { d.abs() } else { m })
    }

    /// Through the Fourier path a train-mode forward keeps its kernel blocks and the
    /// backward uses them up; an eval-mode forward keeps nothing; and weights edited
    /// between forward and backward are transformed afresh, so that the input gradient is
    /// the one of the current weights, as the free functions (and im2col) compute it.
    #[test]
    fn kept_kernel_blocks_serve_one_backward_and_only_the_weights_they_were_made_from() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let opts = ConvOptions::default().padding(1).algorithm(ConvAlgorithm::Fourier);
        let x = random4([3, 4, 7, 6], &mut rng);
        for edit in [false, true] {
            let mut conv = Conv2d::<f64>::new("c", 4, 5, (3, 3), opts, &mut rng);
            let mut convt = ConvTranspose2d::<f64>::new("t", 4, 5, (3, 3), opts, &mut rng);
            for layer in [&mut conv as &mut dyn Layer<f64>, &mut convt] {
                layer.forward(x.clone().into_dyn(), Mode::Eval).unwrap();
            }
            assert!(conv.kernels.is_empty() && convt.kernels.is_empty());
            let y = conv.forward(x.clone().into_dyn(), Mode::Train).unwrap();
            let yt = convt.forward(x.clone().into_dyn(), Mode::Train).unwrap();
            assert!(!conv.kernels.is_empty() && !convt.kernels.is_empty());
            if edit {
                conv.weight.value.mapv_inplace(|v| 0.5 - v);
                convt.weight.value.mapv_inplace(|v| 0.5 - v);
            }
            let dy = random4(y.shape().try_into().unwrap(), &mut rng).into_dyn();
            let dyt = random4(yt.shape().try_into().unwrap(), &mut rng).into_dyn();
            let dx = conv.backward(dy.clone(), true).unwrap().unwrap();
            let dxt = convt.backward(dyt.clone(), true).unwrap().unwrap();
            assert!(conv.kernels.is_empty() && convt.kernels.is_empty());

            let w = conv.weight.value.view().into_dimensionality().unwrap();
            let mut dw = Array4::zeros(w.raw_dim());
            let dy4 = dy.view().into_dimensionality().unwrap();
            let want = conv2d_backward(x.view(), w, dy4, &opts, true, dw.view_mut(), None).unwrap();
            assert!(
                max_diff(&dx, &want.unwrap().into_dyn()) < 1e-12,
                "Conv2d, edited {edit}"
            );
            let w = convt.weight.value.view().into_dimensionality().unwrap();
            let mut dw = Array4::zeros(w.raw_dim());
            let dy4 = dyt.view().into_dimensionality().unwrap();
            let want = conv_transpose2d_backward(x.view(), w, dy4, &opts, true, dw.view_mut(), None).unwrap();
            assert!(
                max_diff(&dxt, &want.unwrap().into_dyn()) < 1e-12,
                "ConvTranspose2d, edited {edit}"
            );
        }
    }

    /// The bias is added as each path writes its output (the unfolding adds it to each
    /// image while in cache, the others in a pass over the batch, parallel when large) and
    /// its gradient is summed per channel block; either way the values are exactly those
    /// of the bias added and summed afterwards on one thread, image by image, for every
    /// algorithm, both directions, a batch of one and batches large enough to split.
    #[test]
    fn bias_is_added_and_summed_exactly_as_one_pass_after_the_product() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let cases = [
            (ConvAlgorithm::Unfold, [1, 3, 9, 9]),
            (ConvAlgorithm::Unfold, [64, 3, 12, 12]),
            (ConvAlgorithm::Fourier, [64, 3, 12, 12]),
            (ConvAlgorithm::Winograd, [256, 4, 4, 4]),
            (ConvAlgorithm::KernelRows, [1, 3, 9, 9]),
            (ConvAlgorithm::KernelRows, [3, 3, 12, 12]),
        ];
        for (algo, shape) in cases {
            let opts = ConvOptions::default().padding(1).algorithm(algo);
            let x = random4(shape, &mut rng);
            let ci = shape[1];
            for transposed in [false, true] {
                let w = if transposed {
                    random4([ci, 16, 3, 3], &mut rng)
                } else {
                    random4([16, ci, 3, 3], &mut rng)
                };
                let b = Array1::from_shape_fn(16, |_| rng.random_range(-1.0..1.0));
                let forward = |b: Option<ArrayView1<f64>>| {
                    pool.install(|| {
                        if transposed {
                            conv_transpose2d_forward(x.view(), w.view(), b, &opts).unwrap()
                        } else {
                            conv2d_forward(x.view(), w.view(), b, &opts).unwrap()
                        }
                    })
                };
                let with = forward(Some(b.view()));
                let mut want = forward(None);
                for mut image in want.outer_iter_mut() {
                    for (mut plane, &bo) in image.outer_iter_mut().zip(&b) {
                        plane += bo;
                    }
                }
                assert!(with == want, "{algo:?}, transposed {transposed}, {shape:?}: bias added");

                let dy = random4(want.dim().into(), &mut rng);
                let mut db = Array1::from_elem(16, 0.25);
                let mut dw = Array4::zeros(w.raw_dim());
                pool.install(|| {
                    let (dy, dw, db) = (dy.view(), dw.view_mut(), Some(db.view_mut()));
                    if transposed {
                        conv_transpose2d_backward(x.view(), w.view(), dy, &opts, false, dw, db).unwrap();
                    } else {
                        conv2d_backward(x.view(), w.view(), dy, &opts, false, dw, db).unwrap();
                    }
                });
                let mut want_db = Array1::from_elem(16, 0.25);
                for image in dy.outer_iter() {
                    for (d, plane) in want_db.iter_mut().zip(image.outer_iter()) {
                        *d += plane.sum();
                    }
                }
                assert!(
                    db == want_db,
                    "{algo:?}, transposed {transposed}, {shape:?}: bias gradient"
                );
            }
        }
    }

    /// A bias or bias gradient that is not one value per output channel is an error that
    /// names it, in both directions (not a silently shorter or garbled sum).
    #[test]
    fn a_bias_of_the_wrong_length_is_an_error() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let opts = ConvOptions::default();
        let x = random4([2, 3, 6, 6], &mut rng);
        let short = Array1::<f64>::zeros(4);
        for transposed in [false, true] {
            let w = if transposed {
                random4([3, 5, 3, 3], &mut rng)
            } else {
                random4([5, 3, 3, 3], &mut rng)
            };
            let y = if transposed {
                conv_transpose2d_forward(x.view(), w.view(), None, &opts).unwrap()
            } else {
                conv2d_forward(x.view(), w.view(), None, &opts).unwrap()
            };
            let err = if transposed {
                conv_transpose2d_forward(x.view(), w.view(), Some(short.view()), &opts).unwrap_err()
            } else {
                conv2d_forward(x.view(), w.view(), Some(short.view()), &opts).unwrap_err()
            };
            assert!(err.to_string().contains("bias"), "{err}");
            let (mut dw, mut db) = (Array4::zeros(w.raw_dim()), Array1::<f64>::zeros(4));
            let (dy, dwv, dbv) = (y.view(), dw.view_mut(), Some(db.view_mut()));
            let err = if transposed {
                conv_transpose2d_backward(x.view(), w.view(), dy, &opts, false, dwv, dbv).unwrap_err()
            } else {
                conv2d_backward(x.view(), w.view(), dy, &opts, false, dwv, dbv).unwrap_err()
            };
            assert!(err.to_string().contains("bias gradient"), "{err}");
        }
    }
}
