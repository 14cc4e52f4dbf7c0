//! PyTorch interop through safetensors state_dicts: a file laid out as
//! `safetensors.torch.save_file(model.state_dict())` writes it (the reference models'
//! parameters, float32 as PyTorch's default, BatchNorm buffers of a fresh module) loads
//! into the matching model and reproduces PyTorch's loss; and the file this crate writes
//! holds exactly the keys of the PyTorch `state_dict`, so `load_state_dict(strict=True)`
//! accepts it. And with files PyTorch itself wrote (`tests/fixtures/interop/`, made by
//! `scripts/torch_interop.py`): its state_dicts give its outputs here, and the weights
//! written here load into the notebook classes (the script's `check`).

mod common;

use std::collections::BTreeSet;

use common::Fixture;
use latent::checkpoint;
use latent::models::VaeModel;
use latent::nn::Mode;
use latent::vae::{self, Vae};
use ndarray::{Axis, Ix2, Ix3, Ix4};
use rand::SeedableRng;
use safetensors::tensor::{Dtype, TensorView};

/// A PyTorch-style state_dict file: every `param.NAME` of the fixture as float32, plus
/// the BatchNorm buffers of a freshly built module (running mean 0, variance 1, count 0).
fn torch_state_dict(fx: &Fixture, path: &std::path::Path) -> BTreeSet<String> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in fx.names().filter(|n| n.starts_with("param.")) {
        let a = fx.get::<f64>(name);
        let data = a.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
        tensors.push((name["param.".len()..].to_string(), Dtype::F32, a.shape().to_vec(), data));
    }
    for name in fx.names().filter(|n| n.starts_with("buffer_after.")) {
        let key = &name["buffer_after.".len()..];
        let a = fx.get::<f64>(name);
        let fresh = if key.ends_with("running_var") { 1.0f32 } else { 0.0 };
        let data = a.iter().flat_map(|_| fresh.to_le_bytes()).collect();
        tensors.push((key.to_string(), Dtype::F32, a.shape().to_vec(), data));
        if let Some(prefix) = key.strip_suffix(".running_mean") {
            tensors.push((
                format!("{prefix}.num_batches_tracked"),
                Dtype::I64,
                vec![],
                0i64.to_le_bytes().to_vec(),
            ));
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    tensors.into_iter().map(|t| t.0).collect()
}

fn check(fx: &Fixture, mut model: VaeModel<f32>, eps: ndarray::Array3<f32>) {
    let dir = std::env::temp_dir().join(format!("latent-interop-{}-{}", std::process::id(), fx.file));
    std::fs::create_dir_all(&dir).unwrap();
    let from_torch = dir.join("torch.safetensors");
    let keys = torch_state_dict(fx, &from_torch);
    checkpoint::load_checkpoint(&from_torch)
        .unwrap()
        .restore_model(&mut model)
        .unwrap();
    let x = fx.get::<f32>("x").into_dimensionality::<Ix4>().unwrap();
    let mut cfg = model.recipe();
    cfg.objective = vae::Objective::Elbo {
        samples: eps.dim().1,
        beta: 1.0,
    };
    let loss = vae::loss_and_grad(&mut model, x.view(), eps.view(), &cfg).unwrap().loss as f64;
    let want = *fx.get::<f64>("loss").first().unwrap();
    assert!(
        (loss - want).abs() <= 1e-4 * want.abs(),
        "{}: loss {loss} vs PyTorch {want}",
        fx.file
    );
    let ours = dir.join("ours.safetensors");
    checkpoint::save_weights(&ours, &mut model).unwrap();
    let written: BTreeSet<String> = checkpoint::load_checkpoint(&ours).unwrap().names().cloned().collect();
    assert_eq!(written, keys, "{}: the keys of PyTorch's state_dict", fx.file);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pytorch_state_dicts_load_and_reproduce_the_loss() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut seen = BTreeSet::new();
    for fx in Fixture::all() {
        match fx.kind.as_str() {
            "model_conv_vae" => {
                let k = fx.setting_f64("K") as usize;
                let eps = fx.get::<f32>("eps").into_dimensionality::<Ix3>().unwrap();
                check(&fx, VaeModel::<f32>::conv_cis522(k, &mut rng).unwrap(), eps);
            }
            "model_dcgan_vae" => {
                let m = VaeModel::<f32>::dcgan(
                    [1, 28, 28],
                    fx.setting_f64("z_dim") as usize,
                    fx.setting_f64("enc_hidden") as usize,
                    fx.setting_f64("dec_hidden") as usize,
                    &mut rng,
                )
                .unwrap();
                let eps = fx
                    .get::<f32>("eps")
                    .into_dimensionality::<Ix2>()
                    .unwrap()
                    .insert_axis(Axis(1));
                check(&fx, m, eps);
            }
            "model_strided_vae" => {
                let m = VaeModel::<f32>::strided([1, 28, 28], fx.setting_f64("latent") as usize, &mut rng).unwrap();
                let eps = fx
                    .get::<f32>("eps")
                    .into_dimensionality::<Ix2>()
                    .unwrap()
                    .insert_axis(Axis(1));
                check(&fx, m, eps);
            }
            _ => continue,
        }
        seen.insert(fx.kind.clone());
    }
    // Every case found is checked; each kind this test knows must have one at least.
    for kind in ["model_conv_vae", "model_dcgan_vae", "model_strided_vae"] {
        assert!(seen.contains(kind), "no {kind} fixture in {:?}", common::fixtures_dir());
    }
}

/// The tensors of a safetensors file of float32 values (PyTorch's), back in `f32`: the
/// reader widens them to `f64` exactly, so narrowing is exact too.
fn read_f32(path: &std::path::Path) -> std::collections::HashMap<String, ndarray::ArrayD<f32>> {
    let file = checkpoint::load_checkpoint(path).unwrap();
    file.names()
        .map(|name| (name.clone(), file.tensor(name).unwrap().mapv(|v| v as f32)))
        .collect()
}

fn write_f32(path: &std::path::Path, tensors: &[(&str, ndarray::ArrayD<f32>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, a)| {
            let a = a.as_standard_layout();
            (
                n.to_string(),
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Evaluation-mode `mu`, `logvar` and the decoder's output at `mu + std * eps`, as
/// `scripts/torch_interop.py` computes them.
fn eval_outputs<M: Vae<f32>>(
    model: &mut M,
    x: &ndarray::Array4<f32>,
    eps: &ndarray::Array2<f32>,
) -> [(&'static str, ndarray::ArrayD<f32>); 3] {
    let q = model.encode(x.view(), Mode::Eval).unwrap();
    let z = &q.mu + &(q.logvar.mapv(|v| (0.5 * v).exp()) * eps);
    let out = model.decode(z.view(), Mode::Eval).unwrap();
    [
        ("mu", q.mu.into_dyn()),
        ("logvar", q.logvar.into_dyn()),
        ("out", out.into_dyn()),
    ]
}

/// PyTorch -> latent with files PyTorch itself wrote, then latent -> PyTorch: one Adam
/// step here, the weights and outputs written for `scripts/torch_interop.py check`.
fn torch_round_trip(name: &str, mut model: VaeModel<f32>, fresh: VaeModel<f32>, out: &std::path::Path) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interop");
    checkpoint::load_checkpoint(&dir.join(format!("{name}.torch.safetensors")))
        .unwrap()
        .restore_model(&mut model)
        .unwrap();
    let io = read_f32(&dir.join(format!("{name}.torch_io.safetensors")));
    let x = io["x"].clone().into_dimensionality::<Ix4>().unwrap();
    let eps = io["eps"].clone().into_dimensionality::<Ix2>().unwrap();
    let mut report = common::Report::default();
    for (key, ours) in eval_outputs(&mut model, &x, &eps) {
        report.check(name, key, &ours, &io[key]);
    }
    report.finish();

    let mut cfg = model.recipe();
    cfg.objective = vae::Objective::Elbo { samples: 1, beta: 1.0 };
    let mut opt = latent::optim::Adam::new(latent::optim::AdamConfig::new(1e-2));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    vae::train_step(&mut model, x.view(), &cfg, &mut opt, &mut rng).unwrap();
    let weights = out.join(format!("{name}.latent.safetensors"));
    checkpoint::save_weights(&weights, &mut model).unwrap();
    let ours = eval_outputs(&mut model, &x, &eps);
    // The written file alone reproduces the trained model here too.
    let mut reloaded = fresh;
    checkpoint::load_checkpoint(&weights)
        .unwrap()
        .restore_model(&mut reloaded)
        .unwrap();
    for ((key, a), (_, b)) in ours.iter().zip(eval_outputs(&mut reloaded, &x, &eps)) {
        assert_eq!(a, &b, "{name}: {key} after reloading the written weights");
        assert_ne!(a, &io[*key], "{name}: {key} should have moved with the Adam step");
    }
    let mut tensors = vec![("x", x.into_dyn()), ("eps", eps.into_dyn())];
    tensors.extend(ours);
    write_f32(&out.join(format!("{name}.latent_io.safetensors")), &tensors);
}

/// `tests/fixtures/interop/` holds state_dicts saved by PyTorch 2 itself
/// (`scripts/torch_interop.py export`): they load and give PyTorch's outputs. Set
/// `LATENT_INTEROP_OUT` to keep what this test writes for the reverse check in PyTorch.
#[test]
fn state_dicts_saved_by_pytorch_give_its_outputs() {
    let keep = std::env::var_os("LATENT_INTEROP_OUT").map(std::path::PathBuf::from);
    let out = keep
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("latent-torch-io-{}", std::process::id())));
    std::fs::create_dir_all(&out).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut conv = || VaeModel::<f32>::conv([1, 28, 28], 3, 4, 5, &mut rng).unwrap();
    torch_round_trip("conv_vae", conv(), conv(), &out);
    let mut dcgan = || VaeModel::<f32>::dcgan([1, 28, 28], 8, 4, 8, &mut rng).unwrap();
    torch_round_trip("dcgan_vae", dcgan(), dcgan(), &out);
    let mut strided = || VaeModel::<f32>::strided([1, 28, 28], 32, &mut rng).unwrap();
    torch_round_trip("strided_vae", strided(), strided(), &out);
    if keep.is_none() {
        std::fs::remove_dir_all(out).unwrap();
    }
}
