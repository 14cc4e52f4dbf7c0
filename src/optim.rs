//! Adam with PyTorch's semantics (`torch.optim.Adam`: L2 weight decay added to the gradient).

use ndarray::{ArrayD, Zip};

use crate::nn::param::split_light_pass;
use crate::nn::{Module, Param};
use crate::tuning;
use crate::{Error, Float, Result};

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamConfig<F> {
    /// Learning rate.
    pub lr: F,
    /// Decay of the first moment.
    pub beta1: F,
    /// Decay of the second moment.
    pub beta2: F,
    /// Added to the denominator.
    pub eps: F,
    /// L2 penalty: `weight_decay * p` is added to the gradient (not AdamW's decoupled form).
    pub weight_decay: F,
}

impl<F: Float> AdamConfig<F> {
    /// PyTorch's defaults with learning rate `lr`: betas (0.9, 0.999), eps 1e-8, no decay.
    pub fn new(lr: F) -> Self {
        AdamConfig {
            lr,
            beta1: F::lit(0.9),
            beta2: F::lit(0.999),
            eps: F::lit(1e-8),
            weight_decay: F::zero(),
        }
    }

    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: F) -> Self {
        self.weight_decay = wd;
        self
    }
}

/// One Adam update of `p` in place, at step `t` (1-based), as `torch.optim.Adam`
/// (single-tensor path): `g += wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
///
/// Values that fall below the smallest normal float are flushed to zero: with weight
/// decay, weights fed by always-zero inputs shrink geometrically into subnormals, which
/// are many times slower on x86 and change nothing that can be seen.
pub fn adam_update<F: Float>(
    cfg: &AdamConfig<F>,
    t: u64,
    p: &mut ArrayD<F>,
    g: &ArrayD<F>,
    m: &mut ArrayD<F>,
    v: &mut ArrayD<F>,
) {
    let one = F::one();
    let bc1 = one - cfg.beta1.powi(t as i32);
    let bc2_sqrt = (one - cfg.beta2.powi(t as i32)).sqrt();
    let step = cfg.lr / bc1;
    let tiny = F::min_positive_value();
    let flush = |x: F| if x.abs() < tiny { F::zero() } else { x };
    let update = |p: &mut F, g: F, m: &mut F, v: &mut F| {
        let g = g + cfg.weight_decay * *p;
        *m = flush(cfg.beta1 * *m + (one - cfg.beta1) * g);
        *v = flush(cfg.beta2 * *v + (one - cfg.beta2) * g * g);
        let denom = v.sqrt() / bc2_sqrt + cfg.eps;
        *p = flush(*p - step * *m / denom);
    };
    let run = |p: &mut [F], g: &[F], m: &mut [F], v: &mut [F]| {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            update(p, g, m, v);
        }
    };
    // Parameters and moments are owned, standard-layout arrays: a loop over the four
    // slices vectorises, where a 4-way Zip over dynamic-rank arrays measured 5x slower.
    // Large parameters are cut into chunks over the thread pool (each entry's update is
    // independent of the others, so the result is the same to the bit).
    match (p.as_slice_mut(), g.as_slice(), m.as_slice_mut(), v.as_slice_mut()) {
        (Some(p), Some(g), Some(m), Some(v)) if p.len() == g.len() && p.len() == m.len() && p.len() == v.len() => {
            if p.len() >= 2 * tuning::PARAM_PAR_CHUNK && rayon::current_num_threads() > 1 {
                use rayon::prelude::*;
                p.par_chunks_mut(tuning::PARAM_PAR_CHUNK)
                    .zip(g.par_chunks(tuning::PARAM_PAR_CHUNK))
                    .zip(m.par_chunks_mut(tuning::PARAM_PAR_CHUNK))
                    .zip(v.par_chunks_mut(tuning::PARAM_PAR_CHUNK))
                    .for_each(|(((p, g), m), v)| run(p, g, m, v));
            } else {
                run(p, g, m, v);
            }
        }
        _ => Zip::from(p)
            .and(g)
            .and(m)
            .and(v)
            .for_each(|p, &g, m, v| update(p, g, m, v)),
    }
}

/// Whether every entry of `a` is finite (over the slice when contiguous, which vectorises).
fn all_finite<F: Float>(a: &ArrayD<F>) -> bool {
    match a.as_slice_memory_order() {
        Some(s) if split_light_pass(s.len()) => {
            use rayon::prelude::*;
            s.par_chunks(tuning::PARAM_PAR_CHUNK).all(crate::float::all_finite::<F>)
        }
        _ => crate::float::all_finite_array(a.view()),
    }
}

/// Adam's first and second moment estimates `(m, v)` of one parameter.
pub type Moments<F> = (ArrayD<F>, ArrayD<F>);

/// The Adam optimizer: its configuration, step count and one pair of moments per
/// parameter, in the order of [`Module::visit_params`].
#[derive(Debug, Clone)]
pub struct Adam<F> {
    /// Hyper-parameters (may be changed between steps).
    pub config: AdamConfig<F>,
    step: u64,
    moments: Vec<(ArrayD<F>, ArrayD<F>)>,
}

impl<F: Float> Adam<F> {
    /// A fresh optimizer.
    pub fn new(config: AdamConfig<F>) -> Self {
        Adam {
            config,
            step: 0,
            moments: Vec::new(),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The step count and the moments `(m, v)` of each parameter (empty before the first
    /// step), for checkpoints.
    pub fn state(&self) -> (u64, &[Moments<F>]) {
        (self.step, &self.moments)
    }

    /// Restores a state saved with [`Adam::state`]; the shapes are checked against the
    /// model at the next [`Adam::step`].
    pub fn set_state(&mut self, step: u64, moments: Vec<Moments<F>>) {
        self.step = step;
        self.moments = moments;
    }

    /// Updates every parameter of `model` from its accumulated gradient. A NaN or
    /// infinite gradient is an error naming the first such parameter, and then nothing is
    /// updated (the model stays at its last good state).
    pub fn step(&mut self, model: &mut (impl Module<F> + ?Sized)) -> Result<()> {
        let mut bad = None;
        model.visit_params(&mut |p: &mut Param<F>| {
            if bad.is_none() && !all_finite(&p.grad) {
                bad = Some(p.name.clone());
            }
        });
        if let Some(name) = bad {
            return Err(Error::NonFinite(format!("the gradient of parameter {name}")));
        }
        self.step += 1;
        let t = self.step;
        let cfg = self.config;
        let moments = &mut self.moments;
        let mut i = 0;
        let mut err = None;
        model.visit_params(&mut |p: &mut Param<F>| {
            if moments.len() == i {
                moments.push((ArrayD::zeros(p.value.raw_dim()), ArrayD::zeros(p.value.raw_dim())));
            }
            let (m, v) = &mut moments[i];
            if m.shape() != p.value.shape() {
                err.get_or_insert_with(|| {
                    Error::shape(
                        format!("Adam state of parameter {}", p.name),
                        format!("{:?}", m.shape()),
                        p.value.shape(),
                    )
                });
            } else {
                adam_update(&cfg, t, &mut p.value, &p.grad, m, v);
            }
            i += 1;
        });
        err.map_or(Ok(()), Err)
    }
}
