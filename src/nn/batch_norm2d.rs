//! BatchNorm2d, train and eval modes, with its running statistics.
//!
//! Train: per channel, `y = gamma (x - mean) / sqrt(var + eps) + beta` with the batch's
//! mean and biased variance over `(n, h, w)`; the running mean and the *unbiased* running
//! variance move by `momentum`. Eval: the running statistics replace the batch's.
//!
//! The layer can apply a rectifier (ReLU, LeakyReLU) to its output in the same pass
//! ([`BatchNorm2d::with_rectifier`]): the DCGAN VAE's BatchNorm is always followed by one,
//! and on its largest maps (44 MB at batch 1024) each separate element-wise pass, forward
//! and backward, is a trip through memory. The backward recomputes the rectifier's input
//! from the kept `x`, so nothing more is kept; values and gradients are those of the two
//! layers in sequence, to the bit.

use ndarray::{Array1, Array4, ArrayD, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMutD, Zip};

use rayon::prelude::*;

use super::activation::{negative_slope, rectify, rectify_grad, rectify_grad_lanes};
use super::reduce::{sum_map, sum_map2_pair_lanes};
use super::{to4, Activation, Layer, Mode, Module, Param};
use crate::{Error, Float, Result};

/// What backward needs from a BatchNorm2d forward: the per-channel mean and `1/sqrt(var + eps)`
/// that normalised the input, and the mode they came from.
#[derive(Debug, Clone)]
pub struct BatchNormCache<F> {
    /// Mean used per channel (the batch's in train mode, the running one in eval mode).
    pub mean: Array1<F>,
    /// `1 / sqrt(var + eps)` per channel.
    pub inv_std: Array1<F>,
    /// The mode of the forward pass.
    pub mode: Mode,
}

/// What is applied to the normalised values inside the layer, one type per case so that
/// the per-element loops are compiled (and vectorised) for each.
trait Then<F>: Copy + Sync + Send {
    /// Its value at `z`.
    fn value(self, z: F) -> F;
    /// The gradient through it at `z` for the output gradient `g`.
    fn grad(self, z: F, g: F) -> F;
    /// [`Then::grad`] on eight lanes, the form the backward's loops use (see
    /// [`Float::select_lanes`] for why).
    fn grad_lanes(self, z: [F; 8], g: [F; 8]) -> [F; 8];
}

/// Nothing: plain BatchNorm.
#[derive(Clone, Copy)]
struct Identity;

/// ReLU.
#[derive(Clone, Copy)]
struct Relu;

/// LeakyReLU with this slope.
#[derive(Clone, Copy)]
struct Leaky<F>(F);

impl<F: Float> Then<F> for Identity {
    #[inline(always)]
    fn value(self, z: F) -> F {
        z
    }
    #[inline(always)]
    fn grad(self, _z: F, g: F) -> F {
        g
    }
    #[inline(always)]
    fn grad_lanes(self, _z: [F; 8], g: [F; 8]) -> [F; 8] {
        g
    }
}

impl<F: Float> Then<F> for Relu {
    #[inline(always)]
    fn value(self, z: F) -> F {
        rectify(z, None)
    }
    #[inline(always)]
    fn grad(self, z: F, g: F) -> F {
        rectify_grad(z, g, None)
    }
    #[inline(always)]
    fn grad_lanes(self, z: [F; 8], g: [F; 8]) -> [F; 8] {
        rectify_grad_lanes(std::array::from_fn(|l| z[l] > F::zero()), g, None)
    }
}

impl<F: Float> Then<F> for Leaky<F> {
    #[inline(always)]
    fn value(self, z: F) -> F {
        rectify(z, Some(self.0))
    }
    #[inline(always)]
    fn grad(self, z: F, g: F) -> F {
        rectify_grad(z, g, Some(self.0))
    }
    #[inline(always)]
    fn grad_lanes(self, z: [F; 8], g: [F; 8]) -> [F; 8] {
        rectify_grad_lanes(std::array::from_fn(|l| z[l] > F::zero()), g, Some(self.0))
    }
}

/// Per channel, `y = x scale + shift` (scale = gamma inv_std, shift = beta - mean scale,
/// the form PyTorch's CPU kernel uses): the same numbers for the forward and for the
/// backward that recomputes a rectifier's input.
fn scale_shift<F: Float>(gamma: ArrayView1<F>, beta: ArrayView1<F>, cache: &BatchNormCache<F>) -> Vec<(F, F)> {
    (0..gamma.len())
        .map(|ch| {
            let scale = gamma[ch] * cache.inv_std[ch];
            (scale, beta[ch] - cache.mean[ch] * scale)
        })
        .collect()
}

/// Forward. In [`Mode::Train`] updates `running_mean` and `running_var` in place.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_forward<F: Float>(
    x: ArrayView4<F>,
    gamma: ArrayView1<F>,
    beta: ArrayView1<F>,
    running_mean: ArrayViewMut1<F>,
    running_var: ArrayViewMut1<F>,
    momentum: F,
    eps: F,
    mode: Mode,
) -> Result<(Array4<F>, BatchNormCache<F>)> {
    let stats = (running_mean, running_var, momentum, eps);
    forward_then(x, gamma, beta, stats, mode, Identity)
}

/// [`batch_norm2d_forward`] with `then` applied to every output; `stats` are the running
/// mean and variance, the momentum and eps.
fn forward_then<F: Float>(
    x: ArrayView4<F>,
    gamma: ArrayView1<F>,
    beta: ArrayView1<F>,
    (mut running_mean, mut running_var, momentum, eps): (ArrayViewMut1<F>, ArrayViewMut1<F>, F, F),
    mode: Mode,
    then: impl Then<F>,
) -> Result<(Array4<F>, BatchNormCache<F>)> {
    let c = gamma.len();
    if x.shape()[1] != c {
        return Err(Error::shape(
            "batch_norm2d input",
            format!("[batch, {c}, h, w]"),
            x.shape(),
        ));
    }
    let m = x.shape()[0] * x.shape()[2] * x.shape()[3];
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout");
    let (mean, inv_std) = match mode {
        Mode::Train => {
            if m < 2 {
                return Err(Error::InvalidArgument(format!(
                    "BatchNorm2d in train mode needs more than one value per channel, got {m}"
                )));
            }
            let mf = F::lit(m as f64);
            // Per-channel statistics in two passes (the mean, then the centred sum of
            // squares), as PyTorch.
            let sums = channel_sums(xs, xs, x.shape(), |_, p, _| (sum_map(p, |v| v), F::zero()));
            let mean: Array1<F> = sums.iter().map(|s| s.0 / mf).collect();
            let sq = channel_sums(xs, xs, x.shape(), |ch, p, _| {
                let mu = mean[ch];
                (sum_map(p, |v| (v - mu) * (v - mu)), F::zero())
            });
            let var: Array1<F> = sq.iter().map(|s| s.0 / mf).collect();
            let one = F::one();
            let unbiased = F::lit(m as f64 / (m - 1) as f64);
            Zip::from(&mut running_mean)
                .and(&mean)
                .for_each(|r, &mu| *r = (one - momentum) * *r + momentum * mu);
            Zip::from(&mut running_var)
                .and(&var)
                .for_each(|r, &v| *r = (one - momentum) * *r + momentum * v * unbiased);
            (mean, var.mapv(|v| one / (v + eps).sqrt()))
        }
        Mode::Eval | Mode::Frozen => (
            running_mean.to_owned(),
            running_var.mapv(|v| F::one() / (v + eps).sqrt()),
        ),
    };
    let cache = BatchNormCache { mean, inv_std, mode };
    // y = then(x * scale + shift) per channel, sample by sample so that every plane is a
    // contiguous run.
    let coef = scale_shift(gamma, beta, &cache);
    let hw = x.shape()[2] * x.shape()[3];
    let mut y = super::zeros4(x.dim());
    per_plane(y.as_slice_mut().expect("fresh array"), hw, c, |ch, yp, at| {
        let xp = &xs[at..at + hw];
        let (a, b) = coef[ch];
        // (Into a fresh array: selects compile to blends here, not to the branches or
        // masked stores that `Then::grad_lanes` avoids.)
        for (o, &v) in yp.iter_mut().zip(xp) {
            *o = then.value(v * a + b);
        }
    });
    Ok((y, cache))
}

/// Backward given the forward's input `x` and cache: accumulates `dgamma`, `dbeta`, returns
/// `dx`. In train mode the batch statistics depend on `x`, which adds the two mean terms:
/// `dx = gamma inv_std / M (M dy - sum dy - xhat sum(dy xhat))`.
pub fn batch_norm2d_backward<F: Float>(
    x: ArrayView4<F>,
    gamma: ArrayView1<F>,
    cache: &BatchNormCache<F>,
    dy: ArrayView4<F>,
    dgamma: ArrayViewMut1<F>,
    dbeta: ArrayViewMut1<F>,
) -> Result<Array4<F>> {
    let mut dx = dy.as_standard_layout().into_owned();
    batch_norm2d_backward_inplace(x, gamma, cache, &mut dx, dgamma, dbeta, true)?;
    Ok(dx)
}

/// [`batch_norm2d_backward`] writing `dx` over `dy` (when `need_dx`; the parameter
/// gradients are accumulated either way), so that a training step does not allocate,
/// and fault in, one more activation-sized array per BatchNorm layer.
pub fn batch_norm2d_backward_inplace<F: Float>(
    x: ArrayView4<F>,
    gamma: ArrayView1<F>,
    cache: &BatchNormCache<F>,
    dy: &mut Array4<F>,
    dgamma: ArrayViewMut1<F>,
    dbeta: ArrayViewMut1<F>,
    need_dx: bool,
) -> Result<()> {
    backward_then(x, (gamma, None), cache, dy, (dgamma, dbeta), need_dx, Identity)
}

/// [`batch_norm2d_backward_inplace`] through `then`, whose input it recomputes from `x`,
/// gamma, beta and the cache (`beta` is needed only then: the identity reads no input);
/// `dy` is the gradient of `then`'s output.
fn backward_then<F: Float>(
    x: ArrayView4<F>,
    (gamma, beta): (ArrayView1<F>, Option<ArrayView1<F>>),
    cache: &BatchNormCache<F>,
    dy: &mut Array4<F>,
    (mut dgamma, mut dbeta): (ArrayViewMut1<F>, ArrayViewMut1<F>),
    need_dx: bool,
    then: impl Then<F>,
) -> Result<()> {
    if dy.shape() != x.shape() {
        return Err(Error::shape("batch_norm2d dy", format!("{:?}", x.shape()), dy.shape()));
    }
    if !dy.is_standard_layout() {
        *dy = dy.as_standard_layout().into_owned();
    }
    let m = F::lit((x.shape()[0] * x.shape()[2] * x.shape()[3]) as f64);
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout");
    // The gradient of the normalised value is dy through `then`, at the input it had:
    // `then.grad(x zs + zt, dy)` with `(zs, zt)` its channel's coefficients (zero, unused
    // and compiled away, for the identity).
    let zc = match beta {
        Some(beta) => scale_shift(gamma, beta, cache),
        None => vec![(F::zero(), F::zero()); gamma.len()],
    };
    // First the two sums of each channel ...
    let sums: Vec<(F, F)> = channel_sums(xs, dy.as_slice().expect("standard layout"), x.shape(), |ch, xp, dp| {
        let (mu, (zs, zt)) = (cache.mean[ch], zc[ch]);
        let dz = |v: F, d: F| then.grad(v * zs + zt, d);
        sum_map2_pair_lanes(
            xp,
            dp,
            |v, d| {
                let g = then.grad_lanes(std::array::from_fn(|l| v[l] * zs + zt), d);
                (g, std::array::from_fn(|l| g[l] * (v[l] - mu)))
            },
            |v, d| {
                let g = dz(v, d);
                (g, g * (v - mu))
            },
        )
    })
    .into_iter()
    .enumerate()
    .map(|(ch, (sum_dy, sum_dy_xc))| (sum_dy, sum_dy_xc * cache.inv_std[ch]))
    .collect();
    // ... then dy becomes dx, channel by channel.
    if need_dx {
        // dx = dy a + x b + c per channel, the terms of the formula above gathered.
        let hw = x.shape()[2] * x.shape()[3];
        let coef: Vec<(F, F, F)> = (0..gamma.len())
            .map(|ch| {
                let (mu, is, g) = (cache.mean[ch], cache.inv_std[ch], gamma[ch]);
                let (sum_dy, sum_dy_xhat) = sums[ch];
                match cache.mode {
                    Mode::Train => {
                        let k = g * is / m;
                        let b = -k * is * sum_dy_xhat;
                        (k * m, b, -k * sum_dy - b * mu)
                    }
                    Mode::Eval | Mode::Frozen => (g * is, F::zero(), F::zero()),
                }
            })
            .collect();
        let train = cache.mode == Mode::Train;
        per_plane(
            dy.as_slice_mut().expect("standard layout"),
            hw,
            gamma.len(),
            |ch, dp, at| {
                let (a, b, c) = coef[ch];
                let (zs, zt) = zc[ch];
                let xp = &xs[at..at + hw];
                let done = hw / 8 * 8;
                let (dl, dr) = dp.split_at_mut(done);
                let (xl, xr) = xp.split_at(done);
                for (d, v) in dl.chunks_exact_mut(8).zip(xl.chunks_exact(8)) {
                    let g = then.grad_lanes(std::array::from_fn(|l| v[l] * zs + zt), std::array::from_fn(|l| d[l]));
                    if train {
                        d.copy_from_slice(&std::array::from_fn::<F, 8, _>(|l| g[l] * a + v[l] * b + c));
                    } else {
                        d.copy_from_slice(&std::array::from_fn::<F, 8, _>(|l| g[l] * a));
                    }
                }
                for (d, &v) in dr.iter_mut().zip(xr) {
                    let g = then.grad(v * zs + zt, *d);
                    *d = if train { g * a + v * b + c } else { g * a };
                }
            },
        );
    }
    for (ch, (sum_dy, sum_dy_xhat)) in sums.into_iter().enumerate() {
        dgamma[ch] += sum_dy_xhat;
        dbeta[ch] += sum_dy;
    }
    Ok(())
}

/// Calls `f(channel, plane, offset)` on every `hw`-long plane of the standard-layout
/// `[n, c, h, w]` data `y` (`offset` its start in `y`, for reading a same-shaped input),
/// samples in parallel: each call a contiguous run.
fn per_plane<F: Float>(y: &mut [F], hw: usize, c: usize, f: impl Fn(usize, &mut [F], usize) + Sync) {
    if hw == 0 || c == 0 {
        return;
    }
    let per = samples_per_task(c, hw);
    y.par_chunks_mut(per * c * hw).enumerate().for_each(|(t, block)| {
        let base = t * per * c * hw;
        for (i, plane) in block.chunks_exact_mut(hw).enumerate() {
            f(i % c, plane, base + i * hw);
        }
    });
}

/// Samples per parallel task for `[n, c, h, w]` data: enough values (some 16K) to be worth
/// a task.
fn samples_per_task(c: usize, hw: usize) -> usize {
    (16384 / (c * hw).max(1)).max(1)
}

/// Per channel, the sums `f(channel, plane of a, plane of b)` over all samples, for
/// standard-layout `[n, c, h, w]` data `a` and `b` of `shape`. Samples are split into
/// fixed blocks summed in parallel, and the blocks' sums added in order: the same result
/// whatever the number of threads.
fn channel_sums<F: Float>(
    a: &[F],
    b: &[F],
    shape: &[usize],
    f: impl Fn(usize, &[F], &[F]) -> (F, F) + Sync,
) -> Vec<(F, F)> {
    let (c, hw) = (shape[1], shape[2] * shape[3]);
    let zero = vec![(F::zero(), F::zero()); c];
    if c * hw == 0 {
        return zero;
    }
    let block = samples_per_task(c, hw) * c * hw;
    let partials: Vec<Vec<(F, F)>> = a
        .par_chunks(block)
        .zip(b.par_chunks(block))
        .map(|(ab, bb)| {
            let mut acc = vec![(F::zero(), F::zero()); c];
            for (i, (ap, bp)) in ab.chunks_exact(hw).zip(bb.chunks_exact(hw)).enumerate() {
                let (s, t) = f(i % c, ap, bp);
                acc[i % c].0 += s;
                acc[i % c].1 += t;
            }
            acc
        })
        .collect();
    partials.into_iter().fold(zero, |mut tot, p| {
        for (t, v) in tot.iter_mut().zip(p) {
            t.0 += v.0;
            t.1 += v.1;
        }
        tot
    })
}

/// A BatchNorm2d layer: `{prefix}.weight` (gamma, init 1), `{prefix}.bias` (beta, init 0)
/// and the buffers `running_mean` (0) and `running_var` (1), as PyTorch.
#[derive(Debug, Clone)]
pub struct BatchNorm2d<F> {
    /// Scale gamma, `[c]`.
    pub weight: Param<F>,
    /// Shift beta, `[c]`.
    pub bias: Param<F>,
    /// Running mean, `[c]` (`{prefix}.running_mean`).
    pub running_mean: Array1<F>,
    /// Running unbiased variance, `[c]` (`{prefix}.running_var`).
    pub running_var: Array1<F>,
    /// Weight of the new batch in the running statistics (PyTorch's default 0.1).
    pub momentum: F,
    /// Added to the variance (default 1e-5).
    pub eps: F,
    /// Train-mode forward passes so far (`{prefix}.num_batches_tracked`).
    pub num_batches_tracked: u64,
    /// The rectifier applied to the output in the same pass, if any.
    rectifier: Option<Activation>,
    cache: Option<(Array4<F>, BatchNormCache<F>)>,
}

impl<F: Float> BatchNorm2d<F> {
    /// A layer over `channels` channels with PyTorch's defaults.
    pub fn new(prefix: &str, channels: usize) -> Self {
        BatchNorm2d {
            weight: Param::new(format!("{prefix}.weight"), ArrayD::ones(vec![channels])),
            bias: Param::new(format!("{prefix}.bias"), ArrayD::zeros(vec![channels])),
            running_mean: Array1::zeros(channels),
            running_var: Array1::ones(channels),
            momentum: F::lit(0.1),
            eps: F::lit(1e-5),
            num_batches_tracked: 0,
            rectifier: None,
            cache: None,
        }
    }

    /// The same layer with `act` (ReLU or LeakyReLU) applied to its output in the same
    /// pass: the values and gradients of this layer followed by an
    /// [`super::ActivationLayer`] of `act`, without that layer's trips through memory.
    /// Other activations are an error (their derivative is not a function of the sign of
    /// the input, which is what the backward recomputes).
    pub fn with_rectifier(mut self, act: Activation) -> Result<Self> {
        if !matches!(act, Activation::Relu | Activation::LeakyRelu(_)) {
            return Err(Error::InvalidArgument(format!(
                "BatchNorm2d {}: only ReLU and LeakyReLU can follow in the same pass, not {act:?}",
                self.weight.name
            )));
        }
        self.rectifier = Some(act);
        Ok(self)
    }

    /// The rectifier applied to the output, if any (see [`BatchNorm2d::with_rectifier`]).
    pub fn rectifier(&self) -> Option<Activation> {
        self.rectifier
    }

    /// Forward in evaluation mode (the running statistics), changing and keeping nothing.
    pub fn infer(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        // The statistics are only read in evaluation mode; copies of `c` values let the
        // shared forward take them as it does in training.
        let (mut mean, mut var) = (self.running_mean.clone(), self.running_var.clone());
        let stats = (mean.view_mut(), var.view_mut(), self.momentum, self.eps);
        Ok(self.forward_with(x, stats, Mode::Eval)?.0)
    }

    /// Forward in `mode`; in train mode updates the running statistics, and outside
    /// [`Mode::Eval`] keeps `x` and what [`BatchNorm2d::backward4`] needs.
    pub fn forward4(&mut self, x: Array4<F>, mode: Mode) -> Result<Array4<F>> {
        let (mut mean, mut var) = (
            std::mem::take(&mut self.running_mean),
            std::mem::take(&mut self.running_var),
        );
        let stats = (mean.view_mut(), var.view_mut(), self.momentum, self.eps);
        let run = self.forward_with(x.view(), stats, mode);
        (self.running_mean, self.running_var) = (mean, var);
        let (y, cache) = run?;
        if mode == Mode::Train {
            self.num_batches_tracked += 1;
        }
        self.cache = mode.keeps_cache().then_some((x, cache));
        Ok(y)
    }

    /// The forward with this layer's parameters and rectifier on `stats`.
    fn forward_with(
        &self,
        x: ArrayView4<F>,
        stats: (ArrayViewMut1<F>, ArrayViewMut1<F>, F, F),
        mode: Mode,
    ) -> Result<(Array4<F>, BatchNormCache<F>)> {
        let gamma = self.weight.value.view().into_dimensionality().expect("vector");
        let beta = self.bias.value.view().into_dimensionality().expect("vector");
        match self.rectifier.map(negative_slope) {
            None => forward_then(x, gamma, beta, stats, mode, Identity),
            Some(None) => forward_then(x, gamma, beta, stats, mode, Relu),
            Some(Some(s)) => forward_then(x, gamma, beta, stats, mode, Leaky(s)),
        }
    }

    /// Backward from the kept input: `dy` becomes `dx` in place.
    pub fn backward4(&mut self, mut dy: Array4<F>, need_dx: bool) -> Result<Option<Array4<F>>> {
        let (x, cache) = self.cache.take().ok_or_else(|| {
            Error::InvalidArgument(format!("BatchNorm2d {}: backward before forward", self.weight.name))
        })?;
        let gamma = self.weight.value.view().into_dimensionality().expect("vector");
        let beta = self.bias.value.view().into_dimensionality().expect("vector");
        let dgamma = self.weight.grad.view_mut().into_dimensionality().expect("vector");
        let dbeta = self.bias.grad.view_mut().into_dimensionality().expect("vector");
        let grads = (dgamma, dbeta);
        let (x, params) = (x.view(), (gamma, Some(beta)));
        match self.rectifier.map(negative_slope) {
            None => backward_then(x, params, &cache, &mut dy, grads, need_dx, Identity),
            Some(None) => backward_then(x, params, &cache, &mut dy, grads, need_dx, Relu),
            Some(Some(s)) => backward_then(x, params, &cache, &mut dy, grads, need_dx, Leaky(s)),
        }?;
        Ok(need_dx.then_some(dy))
    }
}

impl<F: Float> Module<F> for BatchNorm2d<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }

    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, ArrayViewMutD<F>)) {
        let prefix = self.weight.name.strip_suffix(".weight").unwrap_or(&self.weight.name);
        f(
            &format!("{prefix}.running_mean"),
            self.running_mean.view_mut().into_dyn(),
        );
        f(&format!("{prefix}.running_var"), self.running_var.view_mut().into_dyn());
    }

    fn visit_counters(&mut self, f: &mut dyn FnMut(&str, &mut u64)) {
        let prefix = self.weight.name.strip_suffix(".weight").unwrap_or(&self.weight.name);
        f(&format!("{prefix}.num_batches_tracked"), &mut self.num_batches_tracked);
    }
}

impl<F: Float> Layer<F> for BatchNorm2d<F> {
    fn spec(&self) -> super::LayerSpec {
        super::LayerSpec::BatchNorm2d {
            channels: self.weight.value.len(),
            eps: self.eps.to_f64_lossless(),
            momentum: self.momentum.to_f64_lossless(),
            rectifier: self.rectifier,
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
    use super::*;
    use crate::nn::ActivationLayer;

    fn bits(a: &ArrayD<f64>) -> Vec<u64> {
        a.iter().map(|v| v.to_bits()).collect()
    }

    /// The rectifier applied in the same pass gives the values, input gradient, parameter
    /// gradients and running statistics of BatchNorm2d followed by the activation layer,
    /// to the bit, in every mode, on data large enough for several parallel tasks; an
    /// eval-mode forward keeps nothing and equals `infer`.
    #[test]
    fn a_fused_rectifier_equals_the_two_layers_to_the_bit() {
        let shape = [37, 3, 9, 11];
        let x = ArrayD::from_shape_fn(&shape[..], |i| {
            ((i[0] * 31 + i[1] * 17 + i[2] * 7 + i[3] * 3) % 23) as f64 / 7.0 - 1.5
        });
        let dy = x.mapv(|v| (v * 3.1).sin());
        for act in [Activation::Relu, Activation::LeakyRelu(0.2)] {
            for mode in [Mode::Train, Mode::Eval, Mode::Frozen] {
                let mut plain = BatchNorm2d::<f64>::new("bn", 3);
                plain.bias.value = ArrayD::from_shape_vec(vec![3], vec![0.1, -0.4, 0.0]).unwrap();
                plain.running_mean = ndarray::arr1(&[0.2, -0.1, 0.05]);
                plain.running_var = ndarray::arr1(&[0.7, 1.3, 2.0]);
                let mut fused = plain.clone().with_rectifier(act).unwrap();
                let mut after = ActivationLayer::<f64>::new(act);
                // The activation layer keeps its input in Frozen mode (same values as Eval).
                let y_two = after
                    .forward(plain.forward(x.clone(), mode).unwrap(), Mode::Frozen)
                    .unwrap();
                let y_one = fused.forward(x.clone(), mode).unwrap();
                assert_eq!(bits(&y_one), bits(&y_two), "{act:?} {mode:?}: forward");
                if mode == Mode::Eval {
                    // Nothing is kept for a backward, and inference is the same forward.
                    assert!(fused.backward(dy.clone(), true).is_err() && plain.cache.is_none());
                    let inferred = fused.infer(x.view().into_dimensionality().unwrap()).unwrap();
                    assert_eq!(bits(&inferred.into_dyn()), bits(&y_one), "{act:?}: infer");
                    continue;
                }
                let dz = after.backward(dy.clone(), true).unwrap().unwrap();
                let dx_two = plain.backward(dz, true).unwrap().unwrap();
                let dx_one = fused.backward(dy.clone(), true).unwrap().unwrap();
                assert_eq!(bits(&dx_one), bits(&dx_two), "{act:?} {mode:?}: dx");
                assert_eq!(
                    bits(&fused.weight.grad),
                    bits(&plain.weight.grad),
                    "{act:?} {mode:?}: dgamma"
                );
                assert_eq!(
                    bits(&fused.bias.grad),
                    bits(&plain.bias.grad),
                    "{act:?} {mode:?}: dbeta"
                );
                assert_eq!(fused.running_var, plain.running_var, "{act:?} {mode:?}: running var");
                assert_eq!(fused.running_mean, plain.running_mean, "{act:?} {mode:?}: running mean");
            }
        }
    }

    #[test]
    fn only_rectifiers_fuse() {
        for act in [Activation::Sigmoid, Activation::Tanh] {
            let err = BatchNorm2d::<f32>::new("enc.1", 4).with_rectifier(act).unwrap_err();
            assert!(err.to_string().contains("enc.1"), "{err}");
        }
    }
}
