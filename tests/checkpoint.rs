//! Weights and checkpoints: round trips, bit-for-bit resume, refusal of another model's
//! file, the non-finite training guard, and random or mutated bytes (no panic).

mod common;

use std::path::PathBuf;

use latent::checkpoint::{self, CheckpointMeta};
use latent::data::epoch_batches;
use latent::models::VaeModel;
use latent::nn::{Mode, Module};
use latent::optim::{Adam, AdamConfig};
use latent::vae::{self, Vae};
use ndarray::{Array4, Axis};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("latent-ck-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn images(n: usize, seed: u64) -> Array4<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_simple_fn((n, 1, 28, 28), || rng.random_range(0.0f32..1.0))
}

fn small_dcgan(seed: u64) -> VaeModel<f32> {
    VaeModel::dcgan([1, 28, 28], 3, 2, 2, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap()
}

/// Everything a `state_dict` holds, flattened, for bitwise comparison.
fn state(m: &mut impl Module<f32>) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    m.visit_params(&mut |p| out.push((p.name.clone(), p.value.iter().map(|v| v.to_bits()).collect())));
    m.visit_buffers(&mut |n, v| out.push((n.to_string(), v.iter().map(|v| v.to_bits()).collect())));
    m.visit_counters(&mut |n, v| out.push((n.to_string(), vec![*v as u32])));
    out
}

/// One epoch of the DCGAN VAE over `x` in batches of 4.
fn epoch(m: &mut VaeModel<f32>, opt: &mut Adam<f32>, rng: &mut ChaCha8Rng, x: &Array4<f32>) {
    let cfg = m.recipe();
    for idx in epoch_batches(x.shape()[0], 4, Some(&mut *rng)).unwrap() {
        let xb = x.select(Axis(0), &idx);
        vae::train_step(m, xb.view(), &cfg, opt, rng).unwrap();
    }
}

#[test]
fn weights_round_trip_with_batchnorm_buffers() {
    let dir = temp("weights");
    let mut a = small_dcgan(1);
    let mut opt = Adam::new(AdamConfig::new(1e-3));
    epoch(&mut a, &mut opt, &mut ChaCha8Rng::seed_from_u64(2), &images(8, 3));
    let path = dir.join("w.safetensors");
    checkpoint::save_weights(&path, &mut a).unwrap();
    let mut b = small_dcgan(4);
    assert_ne!(state(&mut a), state(&mut b));
    checkpoint::load_checkpoint(&path)
        .unwrap()
        .restore_model(&mut b)
        .unwrap();
    assert_eq!(state(&mut a), state(&mut b));
    let names: Vec<String> = checkpoint::load_checkpoint(&path).unwrap().names().cloned().collect();
    assert!(
        names.contains(&"encode.disc.0.1.num_batches_tracked".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"decode.gen.2.1.running_var".to_string()));
    // Single tensors read back as written (f32 widened exactly); a counter or a name
    // that is not there is an error naming the file and the tensor.
    let file = checkpoint::load_checkpoint(&path).unwrap();
    let mut seen = 0;
    a.visit_params(&mut |p| {
        assert_eq!(file.tensor(&p.name).unwrap(), p.value.mapv(f64::from), "{}", p.name);
        seen += 1;
    });
    assert!(seen > 10, "{seen} parameters");
    for (name, what) in [
        ("decode.gen.2.1.num_batches_tracked", "integer counter"),
        ("no.such.tensor", "no tensor no.such.tensor"),
    ] {
        let e = file.tensor(name).unwrap_err().to_string();
        assert!(e.contains("w.safetensors") && e.contains(what), "{e}");
    }
    // Same outputs in evaluation mode.
    let x = images(3, 5);
    let qa = a.encode(x.view(), Mode::Eval).unwrap();
    let qb = b.encode(x.view(), Mode::Eval).unwrap();
    assert_eq!(qa, qb);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Two epochs straight, or one epoch, a checkpoint, a fresh process's worth of objects
/// restored from it, and the second epoch: the same parameters, bit for bit.
/// A BatchNorm added to a preset's encoder is in its weights file (buffers and batch
/// count) and comes back from it: the model's buffers are read off its layers.
#[test]
fn a_batchnorm_added_to_a_preset_is_saved_and_restored() {
    let mut m = VaeModel::<f32>::strided([1, 28, 28], 3, &mut ChaCha8Rng::seed_from_u64(7)).unwrap();
    m.encoder = latent::nn::Sequential::new()
        .push(latent::nn::BatchNorm2d::new("pre", 1))
        .push(std::mem::take(&mut m.encoder));
    assert!(m.couples_batch());
    let x = images(6, 8);
    let cfg = m.recipe();
    let eps = vae::sample_noise(6, 1, 3, &mut ChaCha8Rng::seed_from_u64(9));
    vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg).unwrap();
    let dir = temp("bn-added");
    let path = dir.join("w.safetensors");
    checkpoint::save_weights(&path, &mut m).unwrap();
    let file = checkpoint::load_checkpoint(&path).unwrap();
    let names: Vec<&String> = file.names().collect();
    for want in [
        "pre.running_mean",
        "pre.running_var",
        "pre.num_batches_tracked",
        "pre.weight",
    ] {
        assert!(names.iter().any(|n| *n == want), "{want} missing from {names:?}");
    }
    let mut fresh = VaeModel::<f32>::strided([1, 28, 28], 3, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    fresh.encoder = latent::nn::Sequential::new()
        .push(latent::nn::BatchNorm2d::new("pre", 1))
        .push(std::mem::take(&mut fresh.encoder));
    file.restore_model(&mut fresh).unwrap();
    assert_eq!(state(&mut fresh), state(&mut m));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resuming_from_a_checkpoint_is_bit_for_bit() {
    let dir = temp("resume");
    let x = images(12, 6);
    let mut straight = small_dcgan(7);
    let mut opt = Adam::new(AdamConfig::new(2e-3));
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    epoch(&mut straight, &mut opt, &mut rng, &x);
    let path = dir.join("ck.safetensors");
    let meta = CheckpointMeta {
        model: "DcganVae z=3 widths 2/2".into(),
        epoch: 1,
        rng: rng.clone(),
    };
    checkpoint::save_checkpoint(&path, &mut straight, &opt, &meta).unwrap();
    epoch(&mut straight, &mut opt, &mut rng, &x);

    let ck = checkpoint::load_checkpoint(&path).unwrap();
    let restored = ck.meta().unwrap();
    assert_eq!(restored, meta);
    let mut resumed = small_dcgan(99);
    ck.restore_model(&mut resumed).unwrap();
    let mut opt2 = Adam::new(AdamConfig::new(2e-3));
    ck.restore_optimizer(&mut opt2, &mut resumed).unwrap();
    assert_eq!(opt2.steps(), 3);
    let mut rng2 = restored.rng;
    epoch(&mut resumed, &mut opt2, &mut rng2, &x);
    assert_eq!(state(&mut straight), state(&mut resumed));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_checkpoint_of_another_model_or_size_is_refused() {
    let dir = temp("other");
    let path = dir.join("w.safetensors");
    checkpoint::save_weights(&path, &mut small_dcgan(1)).unwrap();
    let ck = checkpoint::load_checkpoint(&path).unwrap();
    let mut strided = VaeModel::<f32>::strided([1, 28, 28], 3, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
    let before = state(&mut strided);
    let e = ck.restore_model(&mut strided).unwrap_err().to_string();
    assert!(
        e.contains("no tensor") && e.contains("encoder.0.weight") && e.contains("w.safetensors"),
        "{e}"
    );
    assert_eq!(state(&mut strided), before, "a refused load changes nothing");
    let mut wider = VaeModel::<f32>::dcgan([1, 28, 28], 3, 4, 2, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let e = ck.restore_model(&mut wider).unwrap_err().to_string();
    assert!(e.contains("shape") && e.contains("encode.disc.0.0"), "{e}");
    let mut bigger_z = VaeModel::<f32>::dcgan([1, 28, 28], 5, 2, 2, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert!(ck.restore_model(&mut bigger_z).is_err());
    // A weights file is not a checkpoint: no training state.
    let e = ck.meta().unwrap_err().to_string();
    assert!(e.contains("not a latent checkpoint"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_and_corrupt_files_are_named() {
    let dir = temp("corrupt");
    let missing = dir.join("nope.safetensors");
    let e = checkpoint::load_checkpoint(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
    let path = dir.join("w.safetensors");
    checkpoint::save_weights(&path, &mut small_dcgan(1)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load_checkpoint(&path).unwrap_err().to_string();
    assert!(
        e.contains("w.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A NaN gradient stops the step with an error naming the parameter, and the model keeps
/// its last good values.
#[test]
fn a_non_finite_gradient_stops_training_and_changes_nothing() {
    let mut m = VaeModel::<f32>::conv([1, 7, 7], 2, 2, 3, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let mut opt = Adam::new(AdamConfig::new(1e-3));
    let x = Array4::from_elem((2, 1, 7, 7), 0.5f32);
    let cfg = m.recipe();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    vae::train_step(&mut m, x.view(), &cfg, &mut opt, &mut rng).unwrap();
    m.visit_params(&mut |p| {
        if p.name == "p_deconv_2.bias" {
            p.value.fill(f32::INFINITY);
        }
    });
    let mut before = Vec::new();
    m.visit_params(&mut |p| before.push(p.value.clone()));
    let e = vae::train_step(&mut m, x.view(), &cfg, &mut opt, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite"), "{e}");
    let mut after = Vec::new();
    m.visit_params(&mut |p| after.push(p.value.clone()));
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert!(b.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    assert_eq!(opt.steps(), 1);
    // A finite loss with a NaN gradient: the optimizer names the parameter.
    let mut m = VaeModel::<f32>::conv([1, 7, 7], 2, 2, 3, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let eps = vae::sample_noise(2, 1, 2, &mut rng);
    vae::loss_and_grad(&mut m, x.view(), eps.view(), &cfg).unwrap();
    m.visit_params(&mut |p| {
        if p.name == "q_conv_1.weight" {
            p.grad[[0, 0, 0, 0]] = f32::NAN;
        }
    });
    let e = opt.step(&mut m).unwrap_err().to_string();
    assert!(e.contains("q_conv_1.weight"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::fuzz_cases(300)))]

    /// Random bytes, and a real checkpoint with bytes flipped, cut or inserted: always an
    /// error or a checkpoint, never a panic.
    #[test]
    fn checkpoint_reader_never_panics(
        random in prop::collection::vec(any::<u8>(), 0..512),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let path = std::path::Path::new("fuzz.safetensors");
        let _ = checkpoint::parse_checkpoint(path, &random);
        let mut bytes = valid_checkpoint().clone();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
        }
        if let Ok(ck) = checkpoint::parse_checkpoint(path, &bytes) {
            let _ = ck.meta();
            let _ = ck.restore_model(&mut small_dcgan(1));
        }
        let end = cut.index(bytes.len());
        let _ = checkpoint::parse_checkpoint(path, &bytes[..end]);
    }
}

fn valid_checkpoint() -> &'static Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = temp("fuzz-seed");
        let path = dir.join("ck.safetensors");
        let mut m = small_dcgan(1);
        let mut opt = Adam::new(AdamConfig::new(1e-3));
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        epoch(&mut m, &mut opt, &mut rng, &images(4, 3));
        let meta = CheckpointMeta {
            model: "fuzz".into(),
            epoch: 1,
            rng,
        };
        checkpoint::save_checkpoint(&path, &mut m, &opt, &meta).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        bytes
    })
}
