//! The VAE with two stochastic layers of Burda, Grosse & Salakhutdinov (2015):
//! q(h1|x) q(h2|h1) against p(h2) p(h1|h2) p(x|h1), every conditional a Tanh MLP, the
//! Gaussians diagonal, p(x|h1) Bernoulli on logits, p(h2) = N(0, I). Its log-weights are
//!
//! `log w = log p(x|h1) + log p(h1|h2) + log p(h2) - log q(h1|x) - log q(h2|h1)`,
//!
//! with `h1 = mu1 + sigma1 eps1` and `h2 = mu2(h1) + sigma2(h1) eps2`, all densities
//! normalised. [`Hvae2::loss_and_grad`] writes the forward and the whole backward out,
//! for the ELBO, IWAE, and IWAE with the doubly reparameterised encoder gradient (DReG,
//! Tucker et al. 2018).

use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis, Ix2};
use rand::Rng;

use crate::nn::{Activation, ActivationLayer, Flatten, Layer, Linear, Mode, Module, Param, Sequential};
use crate::vae::bound_of_log_weights;
use crate::vae::{
    log_likelihood, log_likelihood_backward, log_ratio, DiagGaussian, GaussianHeads, Likelihood, Objective, HALF_LN_2PI,
};
use crate::{Error, Float, Result};

/// A Tanh MLP to the mean and log variance of a diagonal Gaussian.
#[derive(Clone)]
pub struct GaussianMlp<F: Float> {
    /// Input to features: Linear, Tanh, Linear, Tanh.
    pub net: Sequential<F>,
    /// Features to `mu` and `logvar`.
    pub heads: GaussianHeads<F>,
}

impl<F: Float> GaussianMlp<F> {
    /// `prefix.net.0`, `prefix.net.2`, `prefix.mu`, `prefix.logvar`: `inp -> hidden ->
    /// hidden -> out`, Glorot-initialised; `flatten` puts a Flatten first (images in).
    fn new<R: Rng + ?Sized>(prefix: &str, dims: (usize, usize, usize), flatten: bool, rng: &mut R) -> Self {
        let (inp, hidden, out) = dims;
        let mut net = Sequential::new();
        if flatten {
            net = net.push(Flatten::new());
        }
        let net = net
            .push(Linear::glorot(&format!("{prefix}.net.0"), inp, hidden, rng))
            .push(ActivationLayer::new(Activation::Tanh))
            .push(Linear::glorot(&format!("{prefix}.net.2"), hidden, hidden, rng))
            .push(ActivationLayer::new(Activation::Tanh));
        let heads = GaussianHeads {
            mu: Linear::glorot(&format!("{prefix}.mu"), hidden, out, rng),
            logvar: Linear::glorot(&format!("{prefix}.logvar"), hidden, out, rng),
        };
        GaussianMlp { net, heads }
    }

    /// The Gaussian for inputs `x` (kept for backward outside [`Mode::Eval`]).
    fn forward(&mut self, x: ndarray::ArrayD<F>, mode: Mode) -> Result<DiagGaussian<F>> {
        let h = self
            .net
            .forward(x, mode)?
            .into_dimensionality::<Ix2>()
            .expect("features");
        self.heads.forward(h.view(), mode)
    }

    /// Backward from the gradients with respect to `mu` and `logvar`; the input's
    /// gradient if `need_dx`.
    fn backward(&mut self, dmu: Array2<F>, dlogvar: Array2<F>, need_dx: bool) -> Result<Option<Array2<F>>> {
        let dh = self.heads.backward(dmu, dlogvar)?;
        Ok(self
            .net
            .backward(dh.into_dyn(), need_dx)?
            .map(|d| d.into_dimensionality::<Ix2>().expect("inputs")))
    }
}

impl<F: Float> Module<F> for GaussianMlp<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.net.visit_params(f);
        self.heads.visit_params(f);
    }
}

/// The two-stochastic-layer VAE; see the module docs. Parameters are visited in the
/// order `q_h1`, `q_h2`, `p_h1`, `p_x`, as PyTorch registers them.
#[derive(Clone)]
pub struct Hvae2<F: Float> {
    /// q(h1|x).
    pub q_h1: GaussianMlp<F>,
    /// q(h2|h1).
    pub q_h2: GaussianMlp<F>,
    /// p(h1|h2).
    pub p_h1: GaussianMlp<F>,
    /// p(x|h1): Linear, Tanh, Linear, Tanh, Linear to Bernoulli logits.
    pub p_x: Sequential<F>,
    image: [usize; 3],
    h1: usize,
    h2: usize,
}

/// The loss of one batch and its bound, per image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hvae2Loss<F> {
    /// `-bound`, averaged over the batch.
    pub loss: F,
    /// The bound (ELBO or IWAE), mean over the batch.
    pub bound: F,
}

/// `sum_c log N(v_c; mean_c, exp(logvar_c))` over the last axis of `[m, c]` rows.
fn log_normal<F: Float>(v: ArrayView2<F>, mean: ArrayView2<F>, logvar: ArrayView2<F>) -> Array1<F> {
    let half = F::lit(0.5);
    let c = F::lit(HALF_LN_2PI);
    ndarray::Zip::from(v.rows())
        .and(mean.rows())
        .and(logvar.rows())
        .map_collect(|v, m, lv| {
            ndarray::Zip::from(v)
                .and(m)
                .and(lv)
                .fold(F::zero(), |acc, &v, &m, &lv| {
                    let d = v - m;
                    acc - c - half * lv - half * d * d * (-lv).exp()
                })
        })
}

/// `log q(z_ij | x_i)` `[b, k]` at q's own samples `z = mu + sigma eps`, from the noise:
/// `sum_c (-log(2 pi) / 2 - logvar_c / 2 - eps_c^2 / 2)`.
fn log_q_at_sample<F: Float>(q: &DiagGaussian<F>, eps: ArrayView3<F>) -> Array2<F> {
    let (b, k, n) = eps.dim();
    let half = F::lit(0.5);
    let c = F::lit(HALF_LN_2PI * n as f64);
    let lv_sums = q.logvar.sum_axis(Axis(1));
    Array2::from_shape_fn((b, k), |(i, j)| {
        let e2 = eps.slice(ndarray::s![i, j, ..]).fold(F::zero(), |a, &e| a + e * e);
        -c - half * lv_sums[i] - half * e2
    })
}

impl<F: Float> Hvae2<F> {
    /// The model for `image` with widths `hx` (q(h1|x) and p(x|h1)), `hh` (q(h2|h1) and
    /// p(h1|h2)) and stochastic layers of `h1` and `h2` dimensions, Glorot-initialised,
    /// with the `state_dict` names `q_h1.net.0`, ..., `p_x.4`.
    pub fn new<R: Rng + ?Sized>(
        image: [usize; 3],
        (hx, h1): (usize, usize),
        (hh, h2): (usize, usize),
        rng: &mut R,
    ) -> Result<Self> {
        let d: usize = image.iter().product();
        if [d, hx, h1, hh, h2].contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "two-layer VAE: image {image:?}, widths {hx}, {hh} and layers {h1}, {h2} must be >= 1"
            )));
        }
        let q_h1 = GaussianMlp::new("q_h1", (d, hx, h1), true, rng);
        let q_h2 = GaussianMlp::new("q_h2", (h1, hh, h2), false, rng);
        let p_h1 = GaussianMlp::new("p_h1", (h2, hh, h1), false, rng);
        let p_x = Sequential::new()
            .push(Linear::glorot("p_x.0", h1, hx, rng))
            .push(ActivationLayer::new(Activation::Tanh))
            .push(Linear::glorot("p_x.2", hx, hx, rng))
            .push(ActivationLayer::new(Activation::Tanh))
            .push(Linear::glorot("p_x.4", hx, d, rng));
        Ok(Hvae2 {
            q_h1,
            q_h2,
            p_h1,
            p_x,
            image,
            h1,
            h2,
        })
    }

    /// Burda et al.'s model for MNIST: 784 -> 200 -> 200 -> 100 -> 100 -> 100 -> 50.
    pub fn burda<R: Rng + ?Sized>(rng: &mut R) -> Result<Self> {
        Self::new([1, 28, 28], (200, 100), (100, 50), rng)
    }

    /// The dimensions of the two stochastic layers.
    pub fn latent_dims(&self) -> (usize, usize) {
        (self.h1, self.h2)
    }

    fn check(&self, x: &ArrayView4<F>, eps1: &ArrayView3<F>, eps2: &ArrayView3<F>) -> Result<()> {
        let b = x.shape()[0];
        if x.shape()[1..] != self.image || b == 0 {
            return Err(Error::shape(
                "two-layer VAE images",
                format!("[batch >= 1, {:?}]", self.image),
                x.shape(),
            ));
        }
        let k = eps1.dim().1;
        if eps1.dim() != (b, k, self.h1) || eps2.dim() != (b, k, self.h2) || k == 0 {
            return Err(Error::shape(
                "two-layer VAE noise",
                format!("eps1 [{b}, k, {}] and eps2 [{b}, k, {}]", self.h1, self.h2),
                eps2.shape(),
            ));
        }
        Ok(())
    }

    /// The log-weights `[b, k]` of images `x` with noise `eps1` `[b, k, h1]` and `eps2`
    /// `[b, k, h2]`, in evaluation mode.
    pub fn log_weights(&mut self, x: ArrayView4<F>, eps1: ArrayView3<F>, eps2: ArrayView3<F>) -> Result<Array2<F>> {
        Ok(self.log_weights_and_likelihood(x, eps1, eps2)?.0)
    }

    /// [`Hvae2::log_weights`] and their first term, `log p(x|h1)`, each `[b, k]`.
    pub fn log_weights_and_likelihood(
        &mut self,
        x: ArrayView4<F>,
        eps1: ArrayView3<F>,
        eps2: ArrayView3<F>,
    ) -> Result<(Array2<F>, Array2<F>)> {
        self.check(&x, &eps1, &eps2)?;
        let fw = self.forward(x, eps1, eps2, Mode::Eval)?;
        Ok((fw.log_w, fw.ll))
    }

    /// The mean of q(h1|x) for images `x`, `[b, h1]`, and the probabilities p(x|h1) gives
    /// at it, `[b, c, h, w]`: the model's code and reconstruction of each image.
    pub fn encode_decode(&mut self, x: ArrayView4<F>) -> Result<(Array2<F>, ndarray::Array4<F>)> {
        let q1 = self.q_h1.forward(x.to_owned().into_dyn(), Mode::Eval)?;
        let logits = self.p_x.forward(q1.mu.clone().into_dyn(), Mode::Eval)?;
        let [c, h, w] = self.image;
        let probs = logits.mapv(crate::loss::sigmoid);
        Ok((
            q1.mu,
            probs.into_shape_with_order((x.shape()[0], c, h, w)).expect("images"),
        ))
    }

    /// The loss `-bound` (averaged over the batch) of images `x` with noise `eps1`, `eps2`
    /// under `objective` (the ELBO with beta 1, IWAE, or IWAE with DReG's encoder
    /// gradient, on the log-weights), then the whole backward pass: parameter gradients
    /// are zeroed, then filled.
    pub fn loss_and_grad(
        &mut self,
        x: ArrayView4<F>,
        eps1: ArrayView3<F>,
        eps2: ArrayView3<F>,
        objective: Objective,
    ) -> Result<Hvae2Loss<F>> {
        objective.validate()?;
        self.check(&x, &eps1, &eps2)?;
        if matches!(objective, Objective::Elbo { beta, .. } if beta != 1.0) {
            return Err(Error::InvalidArgument(
                "two-layer VAE: the ELBO with beta 1, IWAE or IWAE with DReG".into(),
            ));
        }
        self.zero_grad();
        let fw = self.forward(x, eps1, eps2, Mode::Train)?;
        let b = fw.log_w.nrows();
        let (bound_i, weights) = bound_of_log_weights(fw.log_w.view(), objective)?;
        let bound = bound_i.mean().expect("b >= 1");
        if !bound.is_finite() {
            return Err(Error::NonFinite("two-layer VAE loss".into()));
        }
        // d loss / d log_w: the bound's weights, over the batch.
        let scale = F::one() / F::lit(b as f64);
        let g = weights.mapv(|w| -scale * w);
        let dreg = matches!(objective, Objective::IwaeDreg { .. });
        self.backward(&fw, g.view(), dreg.then_some(weights.view()))?;
        Ok(Hvae2Loss { loss: -bound, bound })
    }

    fn forward(
        &mut self,
        x: ArrayView4<F>,
        eps1: ArrayView3<F>,
        eps2: ArrayView3<F>,
        mode: Mode,
    ) -> Result<Forward<F>> {
        let (b, k, n1) = eps1.dim();
        let n2 = self.h2;
        let q1 = self.q_h1.forward(x.to_owned().into_dyn(), mode)?;
        let h1 = q1.rsample(eps1)?; // [b, k, h1]
        let h1_rows = h1
            .view()
            .into_shape_with_order((b * k, n1))
            .expect("contiguous")
            .to_owned();
        let q2 = self.q_h2.forward(h1_rows.clone().into_dyn(), mode)?; // [b k, h2]
        let eps2_rows = eps2.into_shape_with_order((b * k, 1, n2)).expect("contiguous");
        let h2 = q2
            .rsample(eps2_rows)?
            .into_shape_with_order((b * k, n2))
            .expect("one sample");
        let p1 = self.p_h1.forward(h2.clone().into_dyn(), mode)?;
        let logits = self.p_x.forward(h1_rows.clone().into_dyn(), mode)?;
        let d = logits.len() / (b * k);
        let logits = logits.into_shape_with_order((b, k, d)).expect("rows of pixels");
        let x2 = x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((b, d))
            .expect("pixels");
        let ll = log_likelihood(Likelihood::BernoulliLogits, x2.view(), logits.view())?;
        // log p(h1|h2) - log q(h1|x) + (log p(h2) - log q(h2|h1)), each q at its own sample.
        let log_p_h1 = log_normal(h1_rows.view(), p1.mu.view(), p1.logvar.view());
        let h2_samples = h2.view().into_shape_with_order((b * k, 1, n2)).expect("one sample");
        let ratio2 = log_ratio(&q2, eps2_rows, h2_samples)?;
        let rest = (&log_p_h1 - &ratio2.into_shape_with_order(b * k).expect("one sample"))
            .into_shape_with_order((b, k))
            .expect("[b, k]")
            - log_q_at_sample(&q1, eps1);
        let log_w = &ll + &rest;
        let ll = ll.to_owned();
        Ok(Forward {
            ll,
            x2,
            q1,
            q2,
            p1,
            eps1: eps1.to_owned(),
            eps2: eps2_rows.to_owned().into_shape_with_order((b * k, n2)).expect("rows"),
            h1: h1_rows,
            h2,
            logits,
            log_w,
        })
    }

    /// The backward pass from `g = d loss / d log_w` `[b, k]`. With DReG's normalised
    /// weights `dreg` (`w~` `[b, k]`), the encoder's gradient is DReG's instead
    /// ([`Hvae2::dreg_sample_gradients`]); the decoder's is the same either way.
    fn backward(&mut self, fw: &Forward<F>, g: ArrayView2<F>, dreg: Option<ArrayView2<F>>) -> Result<()> {
        let (b, k) = g.dim();
        let (n1, n2) = (self.h1, self.h2);
        let half = F::lit(0.5);
        let g_rows = g.to_owned().into_shape_with_order(b * k).expect("contiguous");
        // log p(x|h1): through p_x to h1.
        let (dlogits, _) = log_likelihood_backward(Likelihood::BernoulliLogits, fw.x2.view(), fw.logits.view(), g)?;
        let d = fw.logits.shape()[2];
        let dlogits = dlogits.into_shape_with_order((b * k, d)).expect("rows");
        let mut dh1 = self
            .p_x
            .backward(dlogits.into_dyn(), true)?
            .expect("asked for dh1")
            .into_dimensionality::<Ix2>()
            .expect("rows");
        // log p(h1|h2): to h1, and to p_h1's mean and log variance.
        let mut dmu_p = Array2::zeros((b * k, n1));
        let mut dlv_p = Array2::zeros((b * k, n1));
        for r in 0..b * k {
            let gr = g_rows[r];
            for c in 0..n1 {
                let (v, m, lv) = (fw.h1[[r, c]], fw.p1.mu[[r, c]], fw.p1.logvar[[r, c]]);
                let inv = (-lv).exp();
                let dv = v - m;
                dh1[[r, c]] -= gr * dv * inv;
                dmu_p[[r, c]] = gr * dv * inv;
                dlv_p[[r, c]] = gr * (-half + half * dv * dv * inv);
            }
        }
        let mut dh2 = self.p_h1.backward(dmu_p, dlv_p, true)?.expect("asked for dh2");
        // log p(h2) = N(0, I): -h2.
        for r in 0..b * k {
            let gr = g_rows[r];
            for c in 0..n2 {
                dh2[[r, c]] -= gr * fw.h2[[r, c]];
            }
        }
        let mut dlv2 = Array2::zeros((b * k, n2));
        let mut dlv1 = Array2::zeros((b, n1));
        match dreg {
            None => {
                // -log q(h2|h1) and -log q(h1|x) at their own samples: +1/2 per log
                // variance (and per sample, for q(h1|x)'s).
                dlv2.fill(half);
                dlv2 *= &g_rows.view().insert_axis(Axis(1));
                for i in 0..b {
                    dlv1.row_mut(i).fill(half * g.row(i).sum());
                }
            }
            Some(w) => self.dreg_sample_gradients(fw, g_rows.view(), w, &mut dh1, &mut dh2)?,
        }
        // h2 = mu2 + sigma2 eps2.
        let std2 = fw.q2.std();
        let dmu2 = dh2.clone();
        dlv2 += &(&dh2 * &std2 * &fw.eps2).mapv(|v| half * v);
        dh1 += &self.q_h2.backward(dmu2, dlv2, true)?.expect("asked for dh1");
        // h1 = mu1 + sigma1 eps1.
        let dh1 = dh1.into_shape_with_order((b, k, n1)).expect("[b, k, h1]");
        let mut dmu1 = Array2::zeros((b, n1));
        fw.q1
            .rsample_backward(fw.eps1.view(), dh1.view(), &mut dmu1, &mut dlv1)?;
        self.q_h1.backward(dmu1, dlv1, false)?;
        Ok(())
    }
}

impl<F: Float> Hvae2<F> {
    /// DReG's gradients with respect to the samples (Tucker et al. 2018), in place of
    /// IWAE's: `dh1`, `dh2` `[b k, h]` arrive holding the decoder's part of
    /// `d loss / d h` (weighted by `g = -w~ / b`); they leave holding the gradient of
    /// `-mean_b sum_k w~^2 log w` with respect to the samples, with q's parameters held
    /// fixed inside `log q(h1|x)` and `log q(h2|h1)`. Those terms add, per sample,
    /// `eps1 / sigma1` to `dh1`, `eps2 / sigma2` to `dh2`, and to `dh1` what `log q(h2|h1)`
    /// sends back through q_h2's network (on a copy, so that the parameters' gradients
    /// are not touched); then each sample's row is weighted by its `w~` once more. The
    /// caller goes on down the samples' paths to the encoder's parameters, without
    /// the score terms (the `1/2` per log variance) that IWAE's gradient has.
    fn dreg_sample_gradients(
        &self,
        fw: &Forward<F>,
        g_rows: ArrayView1<F>,
        w: ArrayView2<F>,
        dh1: &mut Array2<F>,
        dh2: &mut Array2<F>,
    ) -> Result<()> {
        let (b, k) = w.dim();
        let half = F::lit(0.5);
        let (std1, std2) = (fw.q1.std(), fw.q2.std());
        // -log q(h2|h1), q_h2's parameters fixed: to h2 directly, and to h1 through the
        // network's mean and log variance.
        let mut dmu2 = Array2::zeros(dh2.raw_dim());
        let mut dlv2 = Array2::zeros(dh2.raw_dim());
        for ((r, c), e) in fw.eps2.indexed_iter() {
            let gr = g_rows[r];
            dh2[[r, c]] += gr * *e / std2[[r, c]];
            dmu2[[r, c]] = -gr * *e / std2[[r, c]];
            dlv2[[r, c]] = gr * (half - half * *e * *e);
        }
        let mut q_h2 = self.q_h2.clone();
        *dh1 += &q_h2.backward(dmu2, dlv2, true)?.expect("asked for dh1");
        // -log q(h1|x), q_h1's parameters fixed: to h1 directly.
        for ((i, j, c), e) in fw.eps1.indexed_iter() {
            let r = i * k + j;
            dh1[[r, c]] += g_rows[r] * *e / std1[[i, c]];
        }
        // The encoder's weights are w~^2: each sample's row times its w~ once more.
        let w_rows = w.to_shape(b * k).expect("[b, k]");
        *dh1 *= &w_rows.view().insert_axis(Axis(1));
        *dh2 *= &w_rows.view().insert_axis(Axis(1));
        Ok(())
    }
}

/// What the backward pass needs of the forward one.
struct Forward<F> {
    ll: Array2<F>,
    x2: Array2<F>,
    q1: DiagGaussian<F>,
    q2: DiagGaussian<F>,
    p1: DiagGaussian<F>,
    eps1: Array3<F>,
    eps2: Array2<F>,
    h1: Array2<F>,
    h2: Array2<F>,
    logits: Array3<F>,
    log_w: Array2<F>,
}

impl<F: Float> Module<F> for Hvae2<F> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param<F>)) {
        self.q_h1.visit_params(f);
        self.q_h2.visit_params(f);
        self.p_h1.visit_params(f);
        self.p_x.visit_params(f);
    }
}
