//! PyTorch interop through safetensors state_dicts: a file laid out as
//! `safetensors.torch.save_file(model.state_dict())` writes it (the reference models'
//! parameters, float32 as PyTorch's default, BatchNorm buffers of a fresh module) loads
//! into the matching model and reproduces PyTorch's loss; and the file this crate writes
//! holds exactly the keys of the PyTorch `state_dict`, so `load_state_dict(strict=True)`
//! accepts it.

mod common;

use std::collections::BTreeSet;

use common::Fixture;
use latent::checkpoint;
use latent::models::{ConvVae, DcganVae, StridedVae};
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

fn check<M: Vae<f32>>(fx: &Fixture, mut model: M, eps: ndarray::Array3<f32>) {
    let dir = std::env::temp_dir().join(format!("latent-interop-{}-{}", std::process::id(), fx.file));
    std::fs::create_dir_all(&dir).unwrap();
    let from_torch = dir.join("torch.safetensors");
    let keys = torch_state_dict(fx, &from_torch);
    checkpoint::load_weights(&from_torch)
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
    let written: BTreeSet<String> = checkpoint::load_weights(&ours).unwrap().names().cloned().collect();
    assert_eq!(written, keys, "{}: the keys of PyTorch's state_dict", fx.file);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pytorch_state_dicts_load_and_reproduce_the_loss() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut seen = 0;
    for fx in Fixture::all() {
        match fx.kind.as_str() {
            "model_conv_vae" => {
                let k = fx.setting_f64("K") as usize;
                let eps = fx.get::<f32>("eps").into_dimensionality::<Ix3>().unwrap();
                check(&fx, ConvVae::<f32>::cis522(k, &mut rng).unwrap(), eps);
            }
            "model_dcgan_vae" => {
                let m = DcganVae::<f32>::new(
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
                let m = StridedVae::<f32>::new([1, 28, 28], fx.setting_f64("latent") as usize, &mut rng).unwrap();
                let eps = fx
                    .get::<f32>("eps")
                    .into_dimensionality::<Ix2>()
                    .unwrap()
                    .insert_axis(Axis(1));
                check(&fx, m, eps);
            }
            _ => continue,
        }
        seen += 1;
    }
    assert_eq!(seen, 3, "the three VAE model fixtures");
}
