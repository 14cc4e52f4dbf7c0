//! [`VaeTrainer`]: a VAE's training step on the GPU. The model's values go up once; per
//! step the images and the noise go up and four numbers come down (loss, bound,
//! reconstruction, KL); the parameters, their Adam moments and BatchNorm's running
//! statistics stay on the GPU until [`VaeTrainer::download_into`] copies them back.
//!
//! The step is [`crate::vae::train_step`]'s, kernel for kernel: encode, sample, decode,
//! score, the bound's weights, the backward through each, the non-finite check and Adam.
//! Evaluation (test ELBO, IWAE, figures) runs on the CPU model after the download.

use std::sync::Arc;

use ndarray::{Array2, ArrayD, ArrayView3};

use super::gpu::{int, Arg, DeviceBuf, DeviceImages, Gpu};
use super::layers::{GpuChain, Shape, Tensor};
use super::store::{ParamStore, SlotCursor};
use crate::loss::Reduction;
use crate::nn::{LayerSpec, Module};
use crate::optim::{Adam, AdamConfig};
use crate::vae::{KlEstimator, Likelihood, LossConfig, Objective, PosteriorForm, Vae, VaeModel, HALF_LN_2PI};
use crate::{Error, Result};

/// What one step reports, per image as [`crate::vae::LossParts`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The minimised loss.
    pub loss: f32,
    /// The bound (ELBO or IWAE), mean over the batch.
    pub bound: f32,
    /// `-E_q log p(x|z)`.
    pub recon: f32,
    /// The KL term (closed form or sampled).
    pub kl: f32,
}

/// The likelihood as the kernels number it, and where its `log sigma_x` is.
enum LogSig {
    /// A parameter of the model, at this offset.
    Learned(usize),
    /// A fixed value, in its own buffer.
    Fixed(DeviceBuf),
}

/// See the module docs.
pub struct VaeTrainer {
    gpu: Arc<Gpu>,
    store: ParamStore,
    m: DeviceBuf,
    v: DeviceBuf,
    encoder: GpuChain,
    heads: Option<(GpuChain, GpuChain)>,
    decoder: GpuChain,
    posterior: PosteriorForm,
    image: [usize; 3],
    latent: usize,
    like_code: i32,
    half_ln_2pi: f32,
    log_sig: LogSig,
    cfg: LossConfig,
    adam: AdamConfig<f32>,
    step: u64,
    unsynced_steps: u64,
    last_mu: Option<(Tensor, usize)>,
}

/// The kernels' objective number, KL-form flag and `beta`.
fn objective_code(cfg: &LossConfig) -> Result<(i32, f32)> {
    cfg.objective.validate()?;
    Ok(match (cfg.objective, cfg.kl) {
        (Objective::Elbo { beta, .. }, KlEstimator::Closed) => (0, beta as f32),
        (Objective::Elbo { beta, .. }, KlEstimator::MonteCarlo) => (1, beta as f32),
        (Objective::Iwae { .. }, _) => (2, 1.0),
        (Objective::IwaeDreg { .. }, _) => {
            return Err(Error::Device(
                "the DReG estimator has no GPU kernels: train it on the CPU".into(),
            ))
        }
    })
}

impl VaeTrainer {
    /// A trainer for `model` with the loss `cfg` and the optimizer `opt` (its
    /// configuration, and its moments and step count if it has taken steps: a resumed run
    /// continues where it was). The plan is read off the model's layers
    /// ([`VaeModel::layout`]); a layer the GPU has no kernels for is an error naming it.
    pub fn new(gpu: Arc<Gpu>, model: &mut VaeModel<f32>, cfg: LossConfig, opt: &Adam<f32>) -> Result<Self> {
        let layout = model.layout()?;
        objective_code(&cfg)?;
        let image = model.image_shape();
        let latent = model.latent_dim();
        let store = ParamStore::upload(&gpu, model)?;
        let mut pc = SlotCursor::new(&store.param_slots);
        let mut bc = SlotCursor::new(&store.buffer_slots);
        let log_sig_offset = if layout.learned_log_sig_x {
            Some(pc.take(&[], "log sigma_x")?)
        } else {
            None
        };
        // Images arrive as rows of NCHW pixels and leave the decoder as such.
        let mut enc_specs = vec![LayerSpec::Unflatten { shape: image.to_vec() }];
        enc_specs.extend(layout.encoder.iter().cloned());
        let encoder = GpuChain::build(&enc_specs, &mut pc, &mut bc)?;
        let heads = match layout.posterior {
            PosteriorForm::LinearHeads { features } => {
                let head = LayerSpec::Linear {
                    in_features: features,
                    out_features: latent,
                    bias: true,
                };
                let mu = GpuChain::build(std::slice::from_ref(&head), &mut pc, &mut bc)?;
                let lv = GpuChain::build(&[head], &mut pc, &mut bc)?;
                Some((mu, lv))
            }
            _ => None,
        };
        let mut dec_specs = layout.decoder.clone();
        dec_specs.push(LayerSpec::Flatten);
        let decoder = GpuChain::build(&dec_specs, &mut pc, &mut bc)?;
        if !pc.done() || !bc.done() {
            return Err(Error::Device(
                "the model has parameters or buffers its layout does not account for".into(),
            ));
        }
        let (like_code, half, log_sig) = match model.likelihood() {
            Likelihood::Gaussian { log_sig_x, normalised } => {
                let half = if normalised { HALF_LN_2PI as f32 } else { 0.0 };
                let ls = match log_sig_offset {
                    Some(off) => LogSig::Learned(off),
                    None => LogSig::Fixed(gpu.upload(&[log_sig_x])?),
                };
                (0, half, ls)
            }
            other => {
                let code = match other {
                    Likelihood::SquaredError => 1,
                    Likelihood::Bernoulli => 2,
                    _ => 3,
                };
                (code, 0.0, LogSig::Fixed(gpu.upload(&[0.0])?))
            }
        };
        // Adam's moments: fresh, or the optimizer's own when it has stepped.
        let n = store.num_params();
        let (step, moments) = opt.state();
        let (m, v) = if moments.is_empty() {
            (gpu.zeros(n)?, gpu.zeros(n)?)
        } else {
            if moments.len() != store.param_slots.len()
                || moments
                    .iter()
                    .zip(&store.param_slots)
                    .any(|((m, _), s)| m.shape() != s.shape.as_slice())
            {
                return Err(Error::Device("the optimizer's moments do not match the model".into()));
            }
            let flat = |which: usize| -> Vec<f32> {
                moments
                    .iter()
                    .flat_map(|mv| if which == 0 { &mv.0 } else { &mv.1 }.iter().copied())
                    .collect()
            };
            (gpu.upload(&flat(0))?, gpu.upload(&flat(1))?)
        };
        Ok(VaeTrainer {
            gpu,
            store,
            m,
            v,
            encoder,
            heads,
            decoder,
            posterior: layout.posterior,
            image,
            latent,
            like_code,
            half_ln_2pi: half,
            log_sig,
            cfg,
            adam: opt.config,
            step,
            unsynced_steps: 0,
            last_mu: None,
        })
    }

    /// Changes the loss and Adam's hyper-parameters from the next step on (a KL warm-up,
    /// a learning-rate schedule); the objective is checked as in [`VaeTrainer::new`].
    pub fn set_config(&mut self, cfg: LossConfig, adam: AdamConfig<f32>) -> Result<()> {
        objective_code(&cfg)?;
        self.cfg = cfg;
        self.adam = adam;
        Ok(())
    }

    /// Adam steps taken (counting a resumed optimizer's).
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One training step on images `x` (rows of `c h w` pixels, NCHW) with noise `eps`
    /// `[b, n, K]`, then an Adam update. A non-finite loss or gradient is an error that
    /// names it, and then nothing is updated.
    pub fn step(&mut self, x: &[f32], eps: ArrayView3<f32>) -> Result<StepStats> {
        let d = self.image_len();
        self.check_batch(x.len() / d.max(1), x.len() % d.max(1) == 0, eps)?;
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite("VAE input images".into()));
        }
        let b = eps.dim().0;
        let x_rows = Tensor::new(self.gpu.upload(x)?, Shape::Rows { b, f: d });
        self.step_on(x_rows, eps)
    }

    /// [`VaeTrainer::step`] on rows `idx` of `images` (kept on the GPU): only the indices
    /// and the noise go up.
    pub fn step_rows(&mut self, images: &DeviceImages, idx: &[usize], eps: ArrayView3<f32>) -> Result<StepStats> {
        let d = self.image_len();
        self.check_batch(idx.len(), images.dim() == d, eps)?;
        let x_rows = Tensor::new(self.gpu.gather(images, idx)?, Shape::Rows { b: idx.len(), f: d });
        self.step_on(x_rows, eps)
    }

    /// Pixels per image.
    fn image_len(&self) -> usize {
        self.image.iter().product()
    }

    fn check_batch(&self, b_images: usize, whole_images: bool, eps: ArrayView3<f32>) -> Result<()> {
        let d = self.image_len();
        let (b, n, k) = eps.dim();
        if b == 0 || b != b_images || !whole_images || k != self.latent || n != self.cfg.objective.samples() {
            return Err(Error::shape(
                "GPU VAE step: images and noise",
                format!(
                    "[b, {d}] images and [b, {}, {}] noise",
                    self.cfg.objective.samples(),
                    self.latent
                ),
                &[b_images, b, n, k],
            ));
        }
        Ok(())
    }

    fn step_on(&mut self, x_rows: Tensor, eps: ArrayView3<f32>) -> Result<StepStats> {
        let gpu = self.gpu.clone();
        let d = self.image_len();
        let (b, n, k) = eps.dim();
        let (objective, beta) = objective_code(&self.cfg)?;
        let bn = b * n;
        let eps_buf = gpu.upload(&eps.iter().copied().collect::<Vec<_>>())?;

        // Encode.
        let enc = self.encoder.forward(&gpu, &self.store, x_rows.clone())?;
        let (mu_t, s_t, mu_rs, s_off, s_rs, s_cs, s_scale) = match (&mut self.heads, self.posterior) {
            (None, PosteriorForm::Isotropic) => (enc.clone(), enc, k + 1, k, k + 1, 0, 2.0f32),
            (None, PosteriorForm::MeanLogStd) => (enc.clone(), enc, 2 * k, k, 2 * k, 1, 2.0),
            (Some((hm, hl)), PosteriorForm::LinearHeads { .. }) => {
                let mu = hm.forward(&gpu, &self.store, enc.clone())?;
                let lv = hl.forward(&gpu, &self.store, enc)?;
                (mu, lv, k, 0, k, 1, 1.0)
            }
            _ => unreachable!("heads exist exactly for LinearHeads"),
        };
        // mu's row stride is the encoder's (or mu head's) output width.
        if mu_t.shape != (Shape::Rows { b, f: mu_rs }) {
            return Err(Error::Device(format!(
                "the encoder gave {:?}, the posterior needs [{b}, {mu_rs}]",
                mu_t.shape
            )));
        }
        let post_args = |extra: &[Arg]| -> Result<Vec<Arg>> {
            let mut a = vec![
                Arg::P(mu_t.buf.ptr()),
                int(mu_rs)?,
                Arg::P(s_t.buf.at(s_off)),
                int(s_rs)?,
                int(s_cs)?,
                Arg::F(s_scale),
                Arg::P(eps_buf.ptr()),
            ];
            a.extend_from_slice(extra);
            Ok(a)
        };

        // Sample.
        let z = gpu.scratch(bn * k)?;
        let ratio = gpu.scratch(bn)?;
        let kl = gpu.scratch(b)?;
        let mut a = post_args(&[Arg::P(z.ptr()), Arg::P(ratio.ptr()), Arg::P(kl.ptr())])?;
        a.extend([int(b)?, int(n)?, int(k)?]);
        gpu.launch_n("posterior_forward", bn, &a)?;

        // Decode and score.
        let z_t = Tensor::new(z, Shape::Rows { b: bn, f: k });
        let out = self.decoder.forward(&gpu, &self.store, z_t.clone())?;
        if out.shape != (Shape::Rows { b: bn, f: d }) {
            return Err(Error::Device(format!(
                "the decoder gave {:?}, expected [{bn}, {d}]",
                out.shape
            )));
        }
        let log_sig_ptr = match &self.log_sig {
            LogSig::Learned(off) => self.store.params.at(*off),
            LogSig::Fixed(buf) => buf.ptr(),
        };
        let ll = gpu.scratch(bn)?;
        gpu.launch(
            "log_likelihood",
            bn as u32,
            256,
            &[
                Arg::P(x_rows.buf.ptr()),
                Arg::P(out.buf.ptr()),
                Arg::P(ll.ptr()),
                int(n)?,
                int(d)?,
                Arg::I(self.like_code),
                Arg::P(log_sig_ptr),
                Arg::F(self.half_ln_2pi),
            ],
        )?;
        let bound = gpu.scratch(b)?;
        let dll = gpu.scratch(bn)?;
        let dratio = gpu.scratch(bn)?;
        let dkl = gpu.scratch(b)?;
        let scale = match self.cfg.reduction {
            Reduction::Mean => 1.0 / b as f32,
            Reduction::Sum => 1.0,
        };
        gpu.launch_n(
            "bound_weights",
            b,
            &[
                Arg::P(ll.ptr()),
                Arg::P(ratio.ptr()),
                Arg::P(kl.ptr()),
                Arg::P(bound.ptr()),
                Arg::P(dll.ptr()),
                Arg::P(dratio.ptr()),
                Arg::P(dkl.ptr()),
                int(b)?,
                int(n)?,
                Arg::I(objective),
                Arg::F(beta),
                Arg::F(scale),
            ],
        )?;
        gpu.clear_flag()?;
        let stats = gpu.scratch(4)?;
        gpu.launch(
            "loss_stats",
            1,
            1024,
            &[
                Arg::P(bound.ptr()),
                Arg::P(ll.ptr()),
                Arg::P(ratio.ptr()),
                Arg::P(kl.ptr()),
                Arg::P(stats.ptr()),
                gpu.flag(),
                int(b)?,
                int(n)?,
                Arg::I((objective == 0) as i32),
                Arg::I((self.cfg.reduction == Reduction::Mean) as i32),
            ],
        )?;

        // Backward: likelihood, decoder, posterior, encoder.
        let dout = gpu.scratch(bn * d)?;
        let dls = gpu.scratch(bn)?;
        gpu.launch(
            "log_likelihood_backward",
            bn as u32,
            256,
            &[
                Arg::P(x_rows.buf.ptr()),
                Arg::P(out.buf.ptr()),
                Arg::P(dll.ptr()),
                Arg::P(dout.ptr()),
                Arg::P(dls.ptr()),
                int(n)?,
                int(d)?,
                Arg::I(self.like_code),
                Arg::P(log_sig_ptr),
            ],
        )?;
        if let (LogSig::Learned(off), 0) = (&self.log_sig, self.like_code) {
            gpu.launch(
                "sum_into",
                1,
                1024,
                &[Arg::P(dls.ptr()), Arg::P(self.store.grads.at(*off)), int(bn)?],
            )?;
        }
        drop(out);
        let dz = self
            .decoder
            .backward(&gpu, &self.store, Tensor::new(dout, Shape::Rows { b: bn, f: d }), true)?
            .ok_or_else(|| Error::Device("the decoder gave no dz".into()))?;
        let dmu = gpu.scratch(mu_t.shape.len())?;
        let ds = if self.heads.is_some() {
            Some(gpu.scratch(s_t.shape.len())?)
        } else {
            None
        };
        let ds_ptr = match &ds {
            Some(buf) => buf.ptr(),
            None => dmu.at(s_off),
        };
        let mut a = post_args(&[
            Arg::P(z_t.buf.ptr()),
            Arg::P(dz.buf.ptr()),
            Arg::P(dratio.ptr()),
            Arg::P(dkl.ptr()),
            Arg::P(dmu.ptr()),
            Arg::P(ds_ptr),
        ])?;
        a.extend([int(b)?, int(n)?, int(k)?]);
        gpu.launch_n("posterior_backward", b, &a)?;
        let mu_shape = mu_t.shape;
        self.last_mu = Some((mu_t, mu_rs));
        drop(s_t);
        let denc = match (&mut self.heads, ds) {
            (Some((hm, hl)), Some(ds)) => {
                let rows = Shape::Rows { b, f: k };
                let d1 = hm
                    .backward(&gpu, &self.store, Tensor::new(dmu, rows), true)?
                    .ok_or_else(|| Error::Device("head gave no dx".into()))?;
                let d2 = hl
                    .backward(&gpu, &self.store, Tensor::new(ds, rows), true)?
                    .ok_or_else(|| Error::Device("head gave no dx".into()))?;
                let d1 = d1.into_unique(&gpu)?;
                let len = d1.shape.len();
                gpu.launch_n(
                    "add_into",
                    len,
                    &[Arg::P(d1.buf.ptr()), Arg::P(d2.buf.ptr()), Arg::L(len as i64)],
                )?;
                d1
            }
            _ => Tensor::new(dmu, mu_shape),
        };
        self.encoder.backward(&gpu, &self.store, denc, false)?;

        // Adam, unless something was not finite.
        let np = self.store.num_params();
        gpu.launch_n(
            "find_non_finite",
            np,
            &[Arg::P(self.store.grads.ptr()), Arg::L(np as i64), gpu.flag()],
        )?;
        let t = self.step + 1;
        launch_adam(
            &gpu,
            &self.adam,
            t,
            [&self.store.params, &self.store.grads, &self.m, &self.v],
            np,
        )?;
        let s = gpu.download(&stats, 4)?;
        let flag = gpu.read_flag()?;
        let stats = StepStats {
            loss: s[0],
            bound: s[1],
            recon: s[2],
            kl: s[3],
        };
        // BatchNorm's running statistics moved in the forward pass either way.
        self.unsynced_steps += 1;
        match flag {
            0 => {
                self.step = t;
                Ok(stats)
            }
            u32::MAX => Err(Error::NonFinite(format!(
                "VAE loss (reconstruction {}, KL {})",
                stats.recon, stats.kl
            ))),
            f => {
                let at = (u32::MAX - f) as usize;
                let name = self
                    .store
                    .param_slots
                    .iter()
                    .find(|s| at >= s.offset && at < s.offset + s.len())
                    .map_or("?", |s| s.name.as_str());
                Err(Error::NonFinite(format!("the gradient of parameter {name}")))
            }
        }
    }

    /// `E_q[z | x]` `[b, K]` of the last step's images.
    pub fn posterior_mean(&self) -> Result<Array2<f32>> {
        let (mu, rs) = self
            .last_mu
            .as_ref()
            .ok_or_else(|| Error::Device("no step taken yet".into()))?;
        let Shape::Rows { b, .. } = mu.shape else {
            return Err(Error::Device("posterior mean".into()));
        };
        let v = self.gpu.download(&mu.buf, mu.shape.len())?;
        Ok(Array2::from_shape_fn((b, self.latent), |(i, j)| v[i * rs + j]))
    }

    /// Copies the parameters, BatchNorm's running statistics (and its count of batches),
    /// Adam's moments and step count back into `model` and `opt`.
    pub fn download_into(&mut self, model: &mut VaeModel<f32>, opt: &mut Adam<f32>) -> Result<()> {
        self.store.download_into(&self.gpu, model)?;
        let steps = self.unsynced_steps;
        model.visit_counters(&mut |_, c| *c += steps);
        self.unsynced_steps = 0;
        let n = self.store.num_params();
        let m = self.gpu.download(&self.m, n)?;
        let v = self.gpu.download(&self.v, n)?;
        let moments = self
            .store
            .param_slots
            .iter()
            .map(|s| (s.array(&m), s.array(&v)))
            .collect();
        opt.set_state(self.step, moments);
        Ok(())
    }

    /// The gradients of the last step, one array per parameter in visiting order.
    pub fn grads(&self) -> Result<Vec<ArrayD<f32>>> {
        self.store.download_grads(&self.gpu)
    }
}

impl Gpu {
    /// The trainer's Adam kernel on host slices, for checking it against
    /// [`crate::optim::adam_update`]: uploads `p`, `g`, `m`, `v`, runs one update at step
    /// `t` and downloads `p`, `m`, `v` (a round trip; training keeps everything on the GPU).
    pub fn adam_round_trip(
        &self,
        cfg: &AdamConfig<f32>,
        t: u64,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<()> {
        let gpu = self;
        let n = p.len();
        if g.len() != n || m.len() != n || v.len() != n || t == 0 {
            return Err(Error::shape(
                "adam_round_trip g, m, v (and t >= 1)",
                format!("[{n}]"),
                &[g.len(), m.len(), v.len()],
            ));
        }
        let (pb, gb, mb, vb) = (gpu.upload(p)?, gpu.upload(g)?, gpu.upload(m)?, gpu.upload(v)?);
        gpu.clear_flag()?;
        launch_adam(gpu, cfg, t, [&pb, &gb, &mb, &vb], n)?;
        p.copy_from_slice(&gpu.download(&pb, n)?);
        m.copy_from_slice(&gpu.download(&mb, n)?);
        v.copy_from_slice(&gpu.download(&vb, n)?);
        Ok(())
    }
}

/// Launches Adam's kernel on `n` entries of (params, grads, m, v), skipped when the flag is set.
fn launch_adam(gpu: &Gpu, cfg: &AdamConfig<f32>, t: u64, [p, g, m, v]: [&DeviceBuf; 4], n: usize) -> Result<()> {
    // The bias corrections in f32, as the CPU's.
    let bc1 = 1.0 - cfg.beta1.powi(t as i32);
    let bc2_sqrt = (1.0 - cfg.beta2.powi(t as i32)).sqrt();
    gpu.launch_n(
        "adam_step",
        n,
        &[
            Arg::P(p.ptr()),
            Arg::P(g.ptr()),
            Arg::P(m.ptr()),
            Arg::P(v.ptr()),
            Arg::L(n as i64),
            gpu.flag(),
            Arg::F(cfg.lr / bc1),
            Arg::F(bc2_sqrt),
            Arg::F(cfg.beta1),
            Arg::F(cfg.beta2),
            Arg::F(cfg.eps),
            Arg::F(cfg.weight_decay),
        ],
    )
}
