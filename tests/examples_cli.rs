//! The examples refuse unknown flags and bad values with a message naming them, before
//! doing any work. (Cargo builds the examples next to the test binaries.)

use std::path::PathBuf;
use std::process::Command;

/// The example binary `cargo test` built for this run: the newest `NAME-HASH` in
/// target/<profile>/examples (the tests themselves live in target/<profile>/deps).
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.join("examples");
    let prefix = format!("{name}-");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            f.starts_with(&prefix) && !f.contains('.') && f[prefix.len()..].chars().all(|c| c.is_ascii_hexdigit())
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn run(name: &str, args: &[&str]) -> (i32, String) {
    let path = example(name).unwrap_or_else(|| panic!("example {name} was not built next to the tests"));
    let out = Command::new(path).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_flags_and_bad_values_are_named() {
    let (code, err) = run("vae", &["--bogus", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown flag --bogus"), "{err}");
    let (code, err) = run("vae", &["--model", "resnet"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--model resnet") && err.contains("conv, dcgan, strided, mlp or vanilla"),
        "{err}"
    );
    let (code, err) = run("vae", &["--epochs", "ten"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--epochs ten"), "{err}");
    let (code, err) = run("vae", &["--objective", "iwae", "--beta", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--beta"), "{err}");
    let (code, err) = run("vae", &["--dataset", "cifar"]);
    assert_ne!(code, 0);
    assert!(err.contains("cifar") && err.contains("shapes"), "{err}");
    let (code, err) = run("pca_vs_ae", &["--k"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--k needs a value"), "{err}");
    let (code, err) = run(
        "pca_vs_ae",
        &["--k", "0", "--pca-repeats", "1", "--epochs", "0", "--conv-epochs", "0"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--k 0"), "{err}");
}

/// Without a GPU (or without the `cuda` feature), `--device cuda` is a clear error; where
/// a GPU answers, the run is one epoch on 512 images, written to a temporary folder.
#[test]
fn device_cuda_without_a_gpu_is_an_error() {
    let out = std::env::temp_dir().join(format!("latent-cli-cuda-{}", std::process::id()));
    let out_arg = out.to_str().unwrap();
    let small = [
        "--epochs",
        "1",
        "--train-images",
        "512",
        "--iwae-images",
        "16",
        "--out",
        out_arg,
    ];
    let (code, err) = run("vae", &[&["--device", "cuda"][..], &small].concat());
    let _ = std::fs::remove_dir_all(&out);
    if code == 0 {
        return; // a machine with a GPU
    }
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--device cuda"), "{err}");
    let (code, err) = run("vae", &["--device", "tpu"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tpu"), "{err}");
}

#[test]
fn resuming_from_a_missing_checkpoint_is_named() {
    let (code, err) = run("vae", &["--resume", "/nonexistent/ck.safetensors", "--epochs", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/ck.safetensors"), "{err}");
}

/// An `--out` that cannot be made a folder (here: an existing file) is an error naming
/// it, before any training (no epoch is printed).
#[test]
fn an_output_folder_that_cannot_be_made_is_named() {
    let file = std::env::temp_dir().join(format!("latent-out-is-a-file-{}", std::process::id()));
    std::fs::write(&file, b"not a folder").unwrap();
    let path = file.to_str().unwrap();
    for name in ["pca_vs_ae", "vae"] {
        let exe = example(name).unwrap_or_else(|| panic!("example {name} was not built next to the tests"));
        let out = Command::new(exe).args(["--out", path]).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(path), "{name}: {stderr}");
        assert!(
            !stdout.contains("epoch") && !stderr.contains("epoch"),
            "{name} trained before failing: {stdout}{stderr}"
        );
    }
    std::fs::remove_file(&file).unwrap();
}

/// The IWAE-paper program names a model, objective or schedule it does not have, before
/// loading any data.
#[test]
fn iwae_paper_refuses_what_it_does_not_run() {
    let (code, err) = run("iwae_paper", &["--model", "three"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--model three") && err.contains("one or two"), "{err}");
    let (code, err) = run("iwae_paper", &["--objective", "rws"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--objective rws"), "{err}");
    // Both models take every objective: this one gets as far as the data.
    let (code, err) = run(
        "iwae_paper",
        &["--model", "two", "--objective", "dreg", "--data-dir", "/no/such/mnist"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/no/such/mnist"), "{err}");
    let (code, err) = run("iwae_paper", &["--passes", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--passes 0"), "{err}");
    let (code, err) = run("iwae_paper", &["--k", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("samples"), "{err}");
}

/// Your own data: a missing path, a model that does not fit the images, a condition the
/// model does not take and a bad size are errors naming them, before any training.
#[test]
fn user_data_errors_are_named() {
    let (code, err) = run("vae", &["--data", "/nonexistent/latent-images"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/latent-images"), "{err}");
    let (code, err) = run("vae", &["--dataset", "shapes", "--model", "conv"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("1x28x28") && err.contains("3x32x32"), "{err}");
    let (code, err) = run("vae", &["--model", "conv", "--conditional", "on"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("mlp"), "{err}");
    let (code, err) = run("pca_vs_ae", &["--data", "/tmp", "--size", "0x4"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--size 0x4"), "{err}");
}

/// The conditional MLP VAE on the generated colour shapes, end to end: one short epoch,
/// the figure of samples by class written.
#[test]
fn a_conditional_vae_runs_on_the_colour_shapes() {
    let out = std::env::temp_dir().join(format!("latent-cli-shapes-{}", std::process::id()));
    let args = [
        "--dataset",
        "shapes",
        "--model",
        "mlp",
        "--conditional",
        "on",
        "--epochs",
        "1",
        "--train-images",
        "400",
        "--iwae-images",
        "20",
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, err) = run("vae", &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.join("vae_mlp_conditional_class_samples.png").exists(), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}
