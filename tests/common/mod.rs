//! Test helpers: PyTorch fixtures, relative errors, finite differences.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use latent::Float;
use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

/// The directory of PyTorch reference cases (copied from shared/fixtures/torch).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch")
}

/// One PyTorch reference case.
pub struct Fixture {
    pub file: String,
    pub kind: String,
    pub settings: serde_json::Value,
    tensors: HashMap<String, ArrayD<f64>>,
}

impl Fixture {
    pub fn load(path: &Path) -> Fixture {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let meta = meta.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).expect("safetensors body");
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), Dtype::F64, "{name} in {}", path.display());
            let data: Vec<f64> = view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            tensors.insert(
                name.to_string(),
                ArrayD::from_shape_vec(IxDyn(view.shape()), data).unwrap(),
            );
        }
        Fixture {
            file: path.file_name().unwrap().to_string_lossy().into_owned(),
            kind: meta.get("kind").cloned().unwrap_or_default(),
            settings: serde_json::from_str(meta.get("settings").map(String::as_str).unwrap_or("{}")).unwrap(),
            tensors,
        }
    }

    pub fn all() -> Vec<Fixture> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
            .expect("fixtures directory")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no fixtures found");
        paths.iter().map(|p| Fixture::load(p)).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor `name` converted to `F`.
    pub fn get<F: Float>(&self, name: &str) -> ArrayD<F> {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.file))
            .mapv(F::lit)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn setting_f64(&self, key: &str) -> f64 {
        self.settings[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: setting {key}", self.file))
    }

    pub fn setting_vec(&self, key: &str) -> Vec<usize> {
        self.settings[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: setting {key} is not a list", self.file))
            .iter()
            .map(|e| e.as_u64().expect("a whole number") as usize)
            .collect()
    }

    pub fn setting_str(&self, key: &str) -> String {
        self.settings[key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: setting {key}", self.file))
            .to_string()
    }
}

/// `‖a‖`.
pub fn norm<F: Float>(a: &ArrayD<F>) -> f64 {
    a.iter().map(|x| x.to_f64_lossless().powi(2)).sum::<f64>().sqrt()
}

/// `‖a − b‖ / ‖b‖` (or `‖a − b‖` when `b` is zero).
pub fn rel_err<F: Float>(a: &ArrayD<F>, b: &ArrayD<F>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x.to_f64_lossless() - y.to_f64_lossless()).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| y.to_f64_lossless().powi(2)).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// The parity tolerance for `F`: 1e-10 in f64, 1e-4 in f32 (relative, by norm).
pub fn tol<F: Float>() -> f64 {
    if F::NAME == "f64" {
        1e-10
    } else {
        1e-4
    }
}

/// Collects mismatches instead of stopping at the first, so a failing run names them all.
#[derive(Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub checked: usize,
}

impl Report {
    pub fn check<F: Float>(&mut self, case: &str, what: &str, ours: &ArrayD<F>, theirs: &ArrayD<F>) {
        self.checked += 1;
        if ours.shape() != theirs.shape() {
            self.failures.push(format!(
                "{case}: {what} ({}): shape {:?} vs {:?}",
                F::NAME,
                ours.shape(),
                theirs.shape()
            ));
            return;
        }
        let e = rel_err(ours, theirs);
        if e.is_nan() || e > tol::<F>() {
            self.failures.push(format!(
                "{case}: {what} ({}): relative error {e:.3e} > {:.0e}",
                F::NAME,
                tol::<F>()
            ));
        }
    }

    /// For a reference that is zero up to rounding (a bias followed by BatchNorm has an
    /// exactly zero gradient; PyTorch's value is noise of order 1e-14), a relative error is
    /// meaningless: compare `‖ours − theirs‖ / scale` instead, with `scale` the norm of a
    /// related non-zero quantity (the same layer's weight gradient).
    pub fn check_scaled<F: Float>(&mut self, case: &str, what: &str, ours: &ArrayD<F>, theirs: &ArrayD<F>, scale: f64) {
        self.checked += 1;
        assert_eq!(ours.shape(), theirs.shape(), "{case}: {what}");
        let num: f64 = ours
            .iter()
            .zip(theirs)
            .map(|(x, y)| (x.to_f64_lossless() - y.to_f64_lossless()).powi(2))
            .sum();
        let e = num.sqrt() / scale;
        if e.is_nan() || e > tol::<F>() {
            self.failures.push(format!(
                "{case}: {what} ({}): error {e:.3e} relative to scale {scale:.3e} > {:.0e}",
                F::NAME,
                tol::<F>()
            ));
        }
    }

    pub fn scalar<F: Float>(&mut self, case: &str, what: &str, ours: F, theirs: F) {
        self.check(
            case,
            what,
            &ndarray::arr0(ours).into_dyn(),
            &ndarray::arr0(theirs).into_dyn(),
        );
    }

    pub fn finish(self) {
        assert!(self.checked > 0, "nothing was checked");
        assert!(
            self.failures.is_empty(),
            "{} mismatches:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// Central finite differences of `f` at `x`, at `probes` coordinates spread over `x`,
/// compared with `analytic`. Returns the largest relative error (scaled by max(1, |g|)).
pub fn fd_check(x: &ArrayD<f64>, analytic: &ArrayD<f64>, probes: usize, f: impl FnMut(&ArrayD<f64>) -> f64) -> f64 {
    fd_check_h(x, analytic, probes, 1e-6, f)
}

/// [`fd_check`] with step `h`.
pub fn fd_check_h(
    x: &ArrayD<f64>,
    analytic: &ArrayD<f64>,
    probes: usize,
    h: f64,
    mut f: impl FnMut(&ArrayD<f64>) -> f64,
) -> f64 {
    assert_eq!(x.shape(), analytic.shape());
    let n = x.len();
    let step = (n / probes.max(1)).max(1);
    let mut worst = 0.0f64;
    let mut xp = x.clone();
    for i in (0..n).step_by(step) {
        let orig = xp.as_slice_memory_order().unwrap()[i];
        xp.as_slice_memory_order_mut().unwrap()[i] = orig + h;
        let fp = f(&xp);
        xp.as_slice_memory_order_mut().unwrap()[i] = orig - h;
        let fm = f(&xp);
        xp.as_slice_memory_order_mut().unwrap()[i] = orig;
        let numeric = (fp - fm) / (2.0 * h);
        let a = analytic.as_slice_memory_order().unwrap()[i];
        worst = worst.max((numeric - a).abs() / a.abs().max(1.0));
    }
    worst
}

/// A deterministic pseudo-random array in [-1, 1).
pub fn rand_array(shape: &[usize], seed: u64) -> ArrayD<f64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(-1.0..1.0))
}

/// Cases of a fuzz property: `default` in CI, `LATENT_FUZZ_CASES=N` for a long run.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("LATENT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
