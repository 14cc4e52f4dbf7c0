//! Adam with PyTorch's semantics (`torch.optim.Adam`: L2 weight decay added to the gradient).

use ndarray::{ArrayD, Zip};

use crate::nn::param::{for_each_chunk, restore_params, split_light_pass, split_params_pass, take_params};
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
    let update = AdamUpdate::new(cfg, t);
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
                    .for_each(|(((p, g), m), v)| update.run(p, g, m, v));
            } else {
                update.run(p, g, m, v);
            }
        }
        _ => Zip::from(p)
            .and(g)
            .and(m)
            .and(v)
            .for_each(|p, &g, m, v| update.one(p, g, m, v)),
    }
}

/// [`adam_update`]'s arithmetic at one step: the configuration and the bias corrections.
#[derive(Clone, Copy)]
struct AdamUpdate<F> {
    cfg: AdamConfig<F>,
    step: F,
    bc2_sqrt: F,
}

impl<F: Float> AdamUpdate<F> {
    fn new(cfg: &AdamConfig<F>, t: u64) -> Self {
        let one = F::one();
        AdamUpdate {
            cfg: *cfg,
            step: cfg.lr / (one - cfg.beta1.powi(t as i32)),
            bc2_sqrt: (one - cfg.beta2.powi(t as i32)).sqrt(),
        }
    }

    /// One entry.
    #[inline(always)]
    fn one(&self, p: &mut F, g: F, m: &mut F, v: &mut F) {
        let (cfg, one) = (&self.cfg, F::one());
        let tiny = F::min_positive_value();
        let flush = |x: F| if x.abs() < tiny { F::zero() } else { x };
        let g = g + cfg.weight_decay * *p;
        *m = flush(cfg.beta1 * *m + (one - cfg.beta1) * g);
        *v = flush(cfg.beta2 * *v + (one - cfg.beta2) * g * g);
        let denom = v.sqrt() / self.bc2_sqrt + cfg.eps;
        *p = flush(*p - self.step * *m / denom);
    }

    /// Equal-length slices.
    fn run(&self, p: &mut [F], g: &[F], m: &mut [F], v: &mut [F]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            self.one(p, g, m, v);
        }
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
    /// infinite gradient, or moments of another shape than their parameter (a state
    /// restored for another model), is an error naming the first such parameter, and then
    /// nothing is updated (the model and the step count stay as they were).
    pub fn step(&mut self, model: &mut (impl Module<F> + ?Sized)) -> Result<()> {
        // The parameters are moved out for the update, so that one pass over the thread
        // pool covers all of them (not a fork and a join per large parameter), and back.
        let mut params = take_params(model);
        let done = self.step_params(&mut params);
        restore_params(model, params);
        done
    }

    /// [`Adam::step`] on parameters taken out of their model, in visiting order. Checks
    /// every gradient and shape before it updates anything.
    fn step_params(&mut self, params: &mut [Param<F>]) -> Result<()> {
        let split = split_params_pass(params);
        if let Some(p) = params.iter().find(|p| !all_finite(&p.grad)) {
            return Err(Error::NonFinite(format!("the gradient of parameter {}", p.name)));
        }
        for (i, p) in params.iter().enumerate() {
            match self.moments.get(i) {
                Some((m, _)) if m.shape() != p.value.shape() => {
                    return Err(Error::shape(
                        format!("Adam state of parameter {}", p.name),
                        format!("{:?}", m.shape()),
                        p.value.shape(),
                    ))
                }
                Some(_) => {}
                None => self
                    .moments
                    .push((ArrayD::zeros(p.value.raw_dim()), ArrayD::zeros(p.value.raw_dim()))),
            }
        }
        self.step += 1;
        let update = AdamUpdate::new(&self.config, self.step);
        let mut chunks = Vec::new();
        for (p, (m, v)) in params.iter_mut().zip(&mut self.moments) {
            let layouts = [
                p.value.is_standard_layout(),
                p.grad.is_standard_layout(),
                m.is_standard_layout(),
                v.is_standard_layout(),
            ];
            if !layouts.iter().all(|&l| l) {
                Zip::from(&mut p.value)
                    .and(&p.grad)
                    .and(m)
                    .and(v)
                    .for_each(|p, &g, m, v| update.one(p, g, m, v));
                continue;
            }
            let c = tuning::PARAM_PAR_CHUNK;
            let standard = "standard layout";
            let (pv, g) = (
                p.value.as_slice_mut().expect(standard),
                p.grad.as_slice().expect(standard),
            );
            let (m, v) = (m.as_slice_mut().expect(standard), v.as_slice_mut().expect(standard));
            chunks.extend(
                pv.chunks_mut(c)
                    .zip(g.chunks(c))
                    .zip(m.chunks_mut(c))
                    .zip(v.chunks_mut(c)),
            );
        }
        for_each_chunk(chunks, split, |(((p, g), m), v)| update.run(p, g, m, v));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Linear;
    use rand::SeedableRng;

    fn two_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(f)
    }

    fn random_grads(layer: &mut Linear<f64>, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        layer.visit_params(&mut |p| p.grad.mapv_inplace(|_| f64::sample_normal(&mut rng)));
    }

    /// The whole-model pass (its 180,000-entry weight cut over two threads) gives every
    /// parameter the bits that `adam_update` gives it alone, step after step.
    #[test]
    fn one_pass_over_all_parameters_matches_the_update_of_each() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut layer = Linear::<f64>::new("l", 600, 300, true, &mut rng);
        let mut want = layer.clone();
        let cfg = AdamConfig::new(1e-2).weight_decay(1e-3);
        let mut opt = Adam::new(cfg);
        let mut moments: Vec<Moments<f64>> = Vec::new();
        want.visit_params(&mut |p| moments.push((ArrayD::zeros(p.value.raw_dim()), ArrayD::zeros(p.value.raw_dim()))));
        for t in 1..=3 {
            random_grads(&mut layer, t);
            random_grads(&mut want, t);
            two_threads(|| opt.step(&mut layer)).unwrap();
            let mut i = 0;
            want.visit_params(&mut |p| {
                let (m, v) = &mut moments[i];
                adam_update(&cfg, t, &mut p.value, &p.grad, m, v);
                i += 1;
            });
        }
        let (mut got, mut expected) = (Vec::new(), Vec::new());
        layer.visit_params(&mut |p| got.push((p.name.clone(), p.value.clone())));
        want.visit_params(&mut |p| expected.push((p.name.clone(), p.value.clone())));
        assert_eq!(got, expected);
        assert_eq!(opt.steps(), 3);
    }

    /// A NaN gradient, or moments of another shape, is an error naming the parameter,
    /// and the model, the moments and the step count stay as they were.
    #[test]
    fn a_bad_gradient_or_state_updates_nothing() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut layer = Linear::<f64>::new("l", 4, 3, true, &mut rng);
        let mut opt = Adam::new(AdamConfig::new(1e-2));
        random_grads(&mut layer, 1);
        opt.step(&mut layer).unwrap();
        let before = layer.clone();
        let state = opt.state().1.to_vec();
        random_grads(&mut layer, 2);
        layer.bias.as_mut().unwrap().grad[[1]] = f64::NAN;
        let err = opt.step(&mut layer).unwrap_err().to_string();
        assert!(err.contains("l.bias"), "{err}");
        assert_eq!(layer.weight.value, before.weight.value);
        assert_eq!(opt.steps(), 1);
        assert_eq!(opt.state().1, &state[..]);

        random_grads(&mut layer, 3);
        let mut wrong = state.clone();
        wrong[1] = (ArrayD::zeros(ndarray::IxDyn(&[4])), ArrayD::zeros(ndarray::IxDyn(&[4])));
        opt.set_state(1, wrong);
        let err = opt.step(&mut layer).unwrap_err().to_string();
        assert!(err.contains("Adam state of parameter l.bias"), "{err}");
        assert_eq!(layer.weight.value, before.weight.value);
        assert_eq!(opt.steps(), 1);
    }
}
