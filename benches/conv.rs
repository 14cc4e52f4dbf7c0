//! Conv layers at the notebooks' shapes (forward, forward + backward) and one training
//! step of the CIS-522 conv autoencoder. `cargo bench --bench conv`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use latent::models::ConvAe;
use latent::nn::{Conv2d, ConvAlgorithm, ConvOptions, ConvTranspose2d, Layer, Mode};
use latent::optim::{Adam, AdamConfig};
use ndarray::{Array4, ArrayD};
use rand::{Rng, SeedableRng};

fn rand4(rng: &mut impl Rng, shape: (usize, usize, usize, usize)) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || rng.random_range(-1.0..1.0))
}

fn bench(c: &mut Criterion) {
    latent::runtime::Runtime::training().apply();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut g = c.benchmark_group("conv");
    g.sample_size(10);
    // (name, transposed, batch, in, out, side, kernel, stride)
    let cases = [
        ("conv2d_1to32_k5_28", false, 100, 1, 32, 28, 5, 1),
        ("conv2d_32to32_k5_24", false, 100, 32, 32, 24, 5, 1),
        ("convt2d_32to32_k5_20", true, 100, 32, 32, 20, 5, 1),
        ("convt2d_32to1_k5_24", true, 100, 32, 1, 24, 5, 1),
        // The DCGAN VAE's layers (Coursera lab: encoder 16 / 32, decoder 256 / 128 / 64, z 32)
        // at its batch of 1024.
        ("dcgan_conv2d_1to16_k4s2_28", false, 1024, 1, 16, 28, 4, 2),
        ("dcgan_conv2d_16to32_k4s2_13", false, 1024, 16, 32, 13, 4, 2),
        ("dcgan_conv2d_32to64_k4s2_5", false, 1024, 32, 64, 5, 4, 2),
        ("dcgan_convt2d_32to256_k3s2_1", true, 1024, 32, 256, 1, 3, 2),
        ("dcgan_convt2d_256to128_k4s1_3", true, 1024, 256, 128, 3, 4, 1),
        ("dcgan_convt2d_128to64_k3s2_6", true, 1024, 128, 64, 6, 3, 2),
        ("dcgan_convt2d_64to1_k4s2_13", true, 1024, 64, 1, 13, 4, 2),
    ];
    // The default (Auto: the Fourier path for the 32 -> 32 layers, Winograd for the DCGAN
    // VAE's 256 -> 128 one, im2col for the others), and im2col forced on those for comparison.
    let runs = cases.iter().map(|&c| (c, ConvAlgorithm::Auto)).chain(
        cases
            .iter()
            .filter(|c| c.0.contains("32to32") || c.0.contains("256to128"))
            .map(|&c| (c, ConvAlgorithm::Unfold)),
    );
    for ((name, transposed, n, ci, co, side, k, s), algo) in runs.collect::<Vec<_>>() {
        let name = match algo {
            ConvAlgorithm::Unfold => format!("{name}_unfold"),
            _ => name.to_string(),
        };
        let opts = ConvOptions::default().stride(s).algorithm(algo);
        let mut layer: Box<dyn Layer<f32>> = if transposed {
            Box::new(ConvTranspose2d::new("l", ci, co, (k, k), opts, &mut rng))
        } else {
            Box::new(Conv2d::new("l", ci, co, (k, k), opts, &mut rng))
        };
        let x = rand4(&mut rng, (n, ci, side, side)).into_dyn();
        let y = layer.forward(x.clone(), Mode::Eval).unwrap();
        let out_side = y.shape()[2];
        // Multiply-adds of the forward as a direct convolution: n * co * ci * k^2 * (input
        // side^2 for a transposed conv, output side^2 for a conv); backward is twice that.
        // (The Fourier and Winograd paths do fewer: their rate is in direct-convolution FLOPs.)
        let positions = if transposed { side * side } else { out_side * out_side };
        let flops = 2 * n * co * ci * k * k * positions;
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(format!("{name}_forward"), |b| {
            b.iter(|| layer.forward(x.clone(), Mode::Eval).unwrap())
        });
        g.throughput(Throughput::Elements(3 * flops as u64));
        let dy: ArrayD<f32> = ArrayD::from_elem(y.shape(), 0.01);
        g.bench_function(format!("{name}_forward_backward"), |b| {
            b.iter(|| {
                layer.forward(x.clone(), Mode::Train).unwrap();
                layer.backward(dy.clone(), true).unwrap()
            })
        });
    }
    g.finish();
    let mut ae = ConvAe::<f32>::cis522(20, &mut rng).unwrap();
    let mut opt = Adam::new(AdamConfig::new(1e-3).weight_decay(1e-5));
    let x = rand4(&mut rng, (250, 1, 28, 28)).mapv(|v| v.abs());
    let mut g = c.benchmark_group("conv_ae");
    g.sample_size(10);
    // As `pca_vs_ae` trains it: the batch cut into one part per thread.
    let mut par = latent::data_parallel::DataParallel::conv_ae(&ae);
    g.bench_function("train_step_b250_k20", |b| {
        b.iter(|| par.train_step(&mut ae, x.view(), &mut opt).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
