//! im2col against the loops that define a convolution, and the fast paths of the
//! convolutions (Fourier, Winograd, kernel rows) against im2col: the
//! same outputs and gradients (forward, dx, dw, db) for Conv2d and ConvTranspose2d over
//! many geometries in f64, and in f32 at the notebooks' shapes (the conv AE's 32 -> 32
//! layers, the DCGAN VAE's 256 -> 128 one) within f32 rounding of the f64 result.

mod common;

use common::rand_array;
use latent::nn::{
    conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward, ConvAlgorithm, ConvOptions,
};
use latent::Float;
use ndarray::{Array1, Array4, ArrayView1, ArrayView4, ArrayViewMut1, ArrayViewMut4, Ix1, Ix4};

/// `conv2d_forward` / `conv_transpose2d_forward`.
type Forward<F> = fn(ArrayView4<F>, ArrayView4<F>, Option<ArrayView1<F>>, &ConvOptions) -> latent::Result<Array4<F>>;

/// `conv2d_backward` / `conv_transpose2d_backward`.
type Backward<F> = fn(
    ArrayView4<F>,
    ArrayView4<F>,
    ArrayView4<F>,
    &ConvOptions,
    bool,
    ArrayViewMut4<F>,
    Option<ArrayViewMut1<F>>,
) -> latent::Result<Option<Array4<F>>>;

/// Forward output, dx, dw and db of one convolution.
struct Run<F> {
    y: Array4<F>,
    dx: Array4<F>,
    dw: Array4<F>,
    db: Array1<F>,
}

fn run<F: Float>(
    transposed: bool,
    x: &Array4<F>,
    w: &Array4<F>,
    b: &Array1<F>,
    dy_seed: u64,
    opts: ConvOptions,
) -> Run<F> {
    let (forward, backward) = if transposed {
        (
            conv_transpose2d_forward::<F> as Forward<F>,
            conv_transpose2d_backward::<F> as Backward<F>,
        )
    } else {
        (conv2d_forward::<F> as Forward<F>, conv2d_backward::<F> as Backward<F>)
    };
    let y = forward(x.view(), w.view(), Some(b.view()), &opts).unwrap();
    let dy = rand_array(y.shape(), dy_seed)
        .mapv(F::lit)
        .into_dimensionality::<Ix4>()
        .unwrap();
    let mut dw = Array4::zeros(w.raw_dim());
    let mut db = Array1::zeros(b.raw_dim());
    let dx = backward(
        x.view(),
        w.view(),
        dy.view(),
        &opts,
        true,
        dw.view_mut(),
        Some(db.view_mut()),
    )
    .unwrap()
    .unwrap();
    Run { y, dx, dw, db }
}

/// `||a - b|| / ||b||` after widening to f64.
fn rel<F: Float>(a: &Array4<F>, b: &Array4<f64>) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x.to_f64_lossless() - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// (transposed, n, c_in, h, w, c_out, kernel, padding, output_padding, dilation)
type Case = (
    bool,
    usize,
    usize,
    usize,
    usize,
    usize,
    (usize, usize),
    usize,
    usize,
    usize,
);

/// Runs each case through `algo` and through im2col, in f64, and compares y, dx, dw, db.
fn agree_with_im2col(algo: ConvAlgorithm, cases: &[Case]) {
    for (i, &(transposed, n, c, h, w, o, k, p, op, d)) in cases.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = rand_array(&[n, c, h, w], seed).into_dimensionality::<Ix4>().unwrap();
        let wshape = if transposed { [c, o, k.0, k.1] } else { [o, c, k.0, k.1] };
        let wt = rand_array(&wshape, seed + 1).into_dimensionality::<Ix4>().unwrap();
        let b = rand_array(&[o], seed + 2).into_dimensionality::<Ix1>().unwrap();
        let opts = ConvOptions::default().padding(p).output_padding(op).dilation(d);
        let reference = run(transposed, &x, &wt, &b, seed + 3, opts.algorithm(ConvAlgorithm::Unfold));
        let fast = run(transposed, &x, &wt, &b, seed + 3, opts.algorithm(algo));
        let case =
            format!("{algo:?} case {i} (transposed {transposed}, n {n}, {c}->{o}, {h}x{w}, k {k:?}, p {p}, d {d})");
        assert_agree(&case, &fast, &reference);
    }
}

/// y, dx and dw within 1e-12 relative error, db to the bit (every path sums it alike).
fn assert_agree(case: &str, fast: &Run<f64>, reference: &Run<f64>) {
    for (what, a, r) in [
        ("y", &fast.y, &reference.y),
        ("dx", &fast.dx, &reference.dx),
        ("dw", &fast.dw, &reference.dw),
    ] {
        let e = rel(a, r);
        assert!(e < 1e-12, "{case}: {what} relative error {e:.2e}");
    }
    assert_eq!(fast.db, reference.db, "{case}: db");
}

/// im2col against the loops that define a convolution, strides included: square and
/// non-square kernels, padding, dilation, output padding, a batch larger than the
/// unfolding's groups of images.
#[test]
fn im2col_and_the_reference_loops_agree_on_many_geometries() {
    // (stride, case)
    let cases: [(usize, Case); 9] = [
        (1, (false, 3, 4, 9, 9, 5, (3, 3), 0, 0, 1)),
        (2, (false, 2, 3, 11, 8, 2, (5, 3), 2, 0, 1)),
        (3, (false, 2, 2, 10, 9, 3, (3, 2), 1, 0, 2)),
        (2, (false, 40, 1, 6, 6, 2, (2, 2), 0, 0, 1)),
        (2, (false, 1, 3, 7, 7, 4, (4, 4), 1, 0, 1)),
        (2, (true, 3, 4, 5, 6, 3, (4, 4), 1, 0, 1)),
        (2, (true, 2, 3, 4, 4, 5, (3, 3), 1, 1, 1)),
        (3, (true, 2, 2, 3, 5, 2, (3, 2), 0, 2, 2)),
        (1, (true, 40, 2, 3, 3, 2, (4, 4), 0, 0, 1)),
    ];
    for (i, &(s, (transposed, n, c, h, w, o, k, p, op, d))) in cases.iter().enumerate() {
        let seed = 700 + 10 * i as u64;
        let x = rand_array(&[n, c, h, w], seed).into_dimensionality::<Ix4>().unwrap();
        let wshape = if transposed { [c, o, k.0, k.1] } else { [o, c, k.0, k.1] };
        let wt = rand_array(&wshape, seed + 1).into_dimensionality::<Ix4>().unwrap();
        let b = rand_array(&[o], seed + 2).into_dimensionality::<Ix1>().unwrap();
        let opts = ConvOptions::default()
            .stride(s)
            .padding(p)
            .output_padding(op)
            .dilation(d);
        let reference = run(
            transposed,
            &x,
            &wt,
            &b,
            seed + 3,
            opts.algorithm(ConvAlgorithm::Reference),
        );
        let unfold = run(transposed, &x, &wt, &b, seed + 3, opts.algorithm(ConvAlgorithm::Unfold));
        let case =
            format!("case {i} (transposed {transposed}, n {n}, {c}->{o}, {h}x{w}, k {k:?}, s {s}, p {p}, d {d})");
        assert_agree(&case, &unfold, &reference);
    }
}

#[test]
fn fourier_and_im2col_agree_on_many_geometries() {
    agree_with_im2col(
        ConvAlgorithm::Fourier,
        &[
            (false, 3, 4, 9, 9, 5, (3, 3), 0, 0, 1),
            (false, 5, 3, 8, 11, 2, (5, 3), 2, 0, 1),
            (false, 2, 2, 10, 7, 3, (3, 2), 1, 0, 2),
            (false, 70, 2, 6, 6, 3, (3, 3), 1, 0, 1),
            (false, 4, 1, 7, 7, 1, (7, 7), 3, 0, 1),
            (true, 3, 4, 5, 6, 3, (4, 4), 0, 0, 1),
            (true, 4, 3, 7, 5, 5, (3, 3), 1, 0, 1),
            (true, 2, 2, 4, 4, 2, (3, 3), 2, 1, 2),
            (true, 66, 3, 4, 4, 2, (2, 3), 0, 0, 1),
            // An odd number of kernels over more than one tile of spectra (21 and 35).
            (false, 3, 3, 8, 8, 7, (3, 3), 1, 0, 1),
            (true, 2, 5, 6, 6, 7, (3, 3), 0, 0, 1),
        ],
    );
}

/// Every plane here fits one Winograd tile (output + kernel - 1 at most 6 a side): square
/// and non-square kernels and planes, padding, the DCGAN VAE's 4x4 transposed convolution
/// from 3x3, batches of one and two chunks per thread.
#[test]
fn winograd_and_im2col_agree_on_many_geometries() {
    agree_with_im2col(
        ConvAlgorithm::Winograd,
        &[
            (false, 3, 4, 4, 4, 5, (3, 3), 0, 0, 1),
            (false, 5, 3, 4, 3, 2, (3, 2), 1, 0, 1),
            (false, 70, 2, 5, 5, 3, (2, 2), 0, 0, 1),
            (false, 1, 2, 1, 1, 2, (1, 1), 0, 0, 1),
            (true, 3, 4, 3, 3, 3, (4, 4), 0, 0, 1),
            (true, 4, 3, 2, 3, 5, (3, 3), 1, 0, 1),
            (true, 130, 2, 3, 3, 2, (2, 3), 0, 0, 1),
        ],
    );
}

/// Kernel rows: batches of one to five, square and non-square kernels and planes, padding
/// wider than the kernel's reach, dilation (with an output padding for the transposed
/// direction), taps that fall wholly in the padding, and images large enough to be cut
/// across threads (16 -> 16 channels, 5x5).
#[test]
fn kernel_rows_and_im2col_agree_on_many_geometries() {
    agree_with_im2col(
        ConvAlgorithm::KernelRows,
        &[
            (false, 1, 4, 9, 9, 5, (3, 3), 0, 0, 1),
            (false, 2, 3, 8, 11, 2, (5, 3), 2, 0, 1),
            (false, 3, 2, 10, 7, 3, (3, 2), 1, 0, 2),
            (false, 5, 2, 6, 6, 3, (3, 3), 3, 0, 1),
            (false, 1, 1, 7, 7, 1, (7, 7), 3, 0, 1),
            (false, 1, 16, 16, 16, 16, (5, 5), 0, 0, 1),
            (false, 2, 16, 12, 14, 16, (5, 5), 2, 0, 1),
            (true, 1, 4, 5, 6, 3, (4, 4), 0, 0, 1),
            (true, 3, 3, 7, 5, 5, (3, 3), 1, 0, 1),
            (true, 2, 2, 4, 4, 2, (3, 3), 2, 1, 2),
            (true, 1, 16, 12, 12, 16, (5, 5), 0, 0, 1),
            (true, 3, 16, 10, 9, 8, (3, 5), 1, 0, 1),
        ],
    );
}

/// Kernel rows cut an image's products across threads (output rows for the forward,
/// channels for the gradients) and sum the weight gradient over images in order: the
/// results are the same to the bit on one, two and three threads.
#[test]
fn kernel_rows_give_the_same_bits_on_any_number_of_threads() {
    for (transposed, n) in [(false, 1), (true, 1), (false, 3), (true, 2)] {
        let x = rand_array(&[n, 16, 14, 13], 21).into_dimensionality::<Ix4>().unwrap();
        let wshape = if transposed { [16, 12, 5, 5] } else { [12, 16, 5, 5] };
        let w = rand_array(&wshape, 22).into_dimensionality::<Ix4>().unwrap();
        let b = rand_array(&[12], 23).into_dimensionality::<Ix1>().unwrap();
        let opts = ConvOptions::default().padding(1).algorithm(ConvAlgorithm::KernelRows);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run(transposed, &x, &w, &b, 24, opts))
        };
        let one = on(1);
        for threads in [2, 3] {
            let many = on(threads);
            let what = format!("transposed {transposed}, n {n}, {threads} threads");
            assert_eq!(many.y, one.y, "{what}: y");
            assert_eq!(many.dx, one.dx, "{what}: dx");
            assert_eq!(many.dw, one.dw, "{what}: dw");
            assert_eq!(many.db, one.db, "{what}: db");
        }
    }
}

/// `algo` in f32 against im2col in f64 on `n` images of `c -> o` channels, `hw` a side.
fn f32_within_rounding_of_f64(
    algo: ConvAlgorithm,
    transposed: bool,
    (n, c, o, hw, k): (usize, usize, usize, usize, usize),
) {
    let x = rand_array(&[n, c, hw, hw], 7).into_dimensionality::<Ix4>().unwrap();
    let wshape = if transposed { [c, o, k, k] } else { [o, c, k, k] };
    let w = (rand_array(&wshape, 8) * 0.05).into_dimensionality::<Ix4>().unwrap();
    let b = rand_array(&[o], 9).into_dimensionality::<Ix1>().unwrap();
    let opts = ConvOptions::default();
    let exact = run(transposed, &x, &w, &b, 10, opts.algorithm(ConvAlgorithm::Unfold));
    let f32s = run(
        transposed,
        &x.mapv(|v| v as f32),
        &w.mapv(|v| v as f32),
        &b.mapv(|v| v as f32),
        10,
        opts.algorithm(algo),
    );
    for (what, a, r) in [
        ("y", &f32s.y, &exact.y),
        ("dx", &f32s.dx, &exact.dx),
        ("dw", &f32s.dw, &exact.dw),
    ] {
        let e = rel(a, r);
        assert!(
            e < 1e-5,
            "{algo:?}, transposed {transposed}: {what} relative error {e:.2e} in f32"
        );
    }
}

/// At the conv autoencoder's 32 -> 32 layers (5x5 on 24x24, and its transpose on 20x20),
/// f32 through the Fourier path stays within 1e-5 of the f64 result.
#[test]
fn fourier_in_f32_is_within_rounding_of_f64() {
    f32_within_rounding_of_f64(ConvAlgorithm::Fourier, false, (4, 32, 32, 24, 5));
    f32_within_rounding_of_f64(ConvAlgorithm::Fourier, true, (4, 32, 32, 20, 5));
}

/// At the ConvVAE's 32 -> 32 layers at batch 1, f32 through kernel rows stays within 1e-5
/// of the f64 result.
#[test]
fn kernel_rows_in_f32_are_within_rounding_of_f64() {
    f32_within_rounding_of_f64(ConvAlgorithm::KernelRows, false, (1, 32, 32, 24, 5));
    f32_within_rounding_of_f64(ConvAlgorithm::KernelRows, true, (1, 32, 32, 20, 5));
}

/// At the DCGAN VAE's 256 -> 128 4x4 transposed convolution from 3x3 (and the convolution
/// of the same geometry, 6x6 to 3x3), f32 through Winograd stays within 1e-5 of f64.
#[test]
fn winograd_in_f32_is_within_rounding_of_f64() {
    f32_within_rounding_of_f64(ConvAlgorithm::Winograd, true, (4, 256, 128, 3, 4));
    f32_within_rounding_of_f64(ConvAlgorithm::Winograd, false, (4, 128, 256, 6, 4));
}

/// Winograd takes stride 1, dilation 1 and planes of at most 6 points a side: asking for
/// it otherwise is an error that says why.
#[test]
fn winograd_refuses_what_it_cannot_compute() {
    let x = rand_array(&[2, 2, 8, 8], 1).into_dimensionality::<Ix4>().unwrap();
    let w = rand_array(&[3, 2, 3, 3], 2).into_dimensionality::<Ix4>().unwrap();
    let winograd = |opts: ConvOptions| {
        conv2d_forward(x.view(), w.view(), None, &opts.algorithm(ConvAlgorithm::Winograd))
            .unwrap_err()
            .to_string()
    };
    assert!(winograd(ConvOptions::default().stride(2)).contains("stride 1"));
    assert!(winograd(ConvOptions::default().dilation(2)).contains("dilation 1"));
    assert!(
        winograd(ConvOptions::default()).contains("8x8"),
        "{}",
        winograd(ConvOptions::default())
    );
}

/// A strided convolution cannot go through the Fourier or the kernel-row path: asking for
/// either is an error that says why, and `Auto` quietly uses im2col.
#[test]
fn fourier_and_kernel_rows_refuse_strides() {
    let x = rand_array(&[2, 2, 8, 8], 1).into_dimensionality::<Ix4>().unwrap();
    let w = rand_array(&[3, 2, 3, 3], 2).into_dimensionality::<Ix4>().unwrap();
    let opts = ConvOptions::default().stride(2);
    for algo in [ConvAlgorithm::Fourier, ConvAlgorithm::KernelRows] {
        let err = conv2d_forward(x.view(), w.view(), None, &opts.algorithm(algo)).unwrap_err();
        assert!(err.to_string().contains("stride 1"), "{algo:?}: {err}");
    }
    assert!(conv2d_forward(x.view(), w.view(), None, &opts).is_ok());
}

/// A layer's backward computes both gradients in one pass that overwrites its kept input
/// (sharing the transform of `dy` on the Fourier path): it agrees with the separate free
/// functions, on both paths, for both directions.
#[test]
fn the_layers_one_pass_backward_agrees_with_the_separate_halves() {
    use latent::nn::{Conv2d, ConvTranspose2d, Layer, Mode};
    use rand::SeedableRng;
    for algo in [
        ConvAlgorithm::Unfold,
        ConvAlgorithm::Fourier,
        ConvAlgorithm::Winograd,
        ConvAlgorithm::KernelRows,
    ] {
        for transposed in [false, true] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let opts = ConvOptions::default().padding(1).algorithm(algo);
            let mut layer: Box<dyn Layer<f64>> = if transposed {
                Box::new(ConvTranspose2d::<f64>::new("l", 3, 4, (3, 3), opts, &mut rng))
            } else {
                Box::new(Conv2d::<f64>::new("l", 3, 4, (3, 3), opts, &mut rng))
            };
            // Planes small enough for one Winograd tile (3 + 3 - 1 by 4 + 3 - 1 points).
            let x = rand_array(&[70, 3, 3, 4], 4);
            let y = layer.forward(x.clone(), Mode::Train).unwrap();
            let dy = rand_array(y.shape(), 5);
            layer.zero_grad();
            let dx = layer.backward(dy.clone(), true).unwrap().unwrap();
            let mut params = Vec::new();
            layer.visit_params(&mut |p| params.push(p.clone()));
            let (w, b) = (&params[0], &params[1]);
            let w4 = w.value.view().into_dimensionality::<Ix4>().unwrap();
            let (x4, dy4) = (
                x.view().into_dimensionality::<Ix4>().unwrap(),
                dy.view().into_dimensionality::<Ix4>().unwrap(),
            );
            let mut dw = Array4::zeros(w4.raw_dim());
            let mut db = Array1::zeros(b.value.len());
            let bwd = if transposed {
                conv_transpose2d_backward(x4, w4, dy4, &opts, true, dw.view_mut(), Some(db.view_mut()))
            } else {
                conv2d_backward(x4, w4, dy4, &opts, true, dw.view_mut(), Some(db.view_mut()))
            };
            let dx_ref = bwd.unwrap().unwrap();
            let what = format!("{algo:?}, transposed {transposed}");
            let dx = dx.into_dimensionality::<Ix4>().unwrap();
            assert!(rel(&dx, &dx_ref) < 1e-13, "{what}: dx");
            let dw_layer = w.grad.clone().into_dimensionality::<Ix4>().unwrap();
            assert!(rel(&dw_layer, &dw) < 1e-13, "{what}: dw");
            assert_eq!(b.grad.view().into_dimensionality::<Ix1>().unwrap(), db, "{what}: db");
        }
    }
}
