//! Which algorithm computes a convolution's three products (forward correlation, input
//! gradient, weight gradient), and the routing to it: `reference` (the defining loops),
//! `im2col` (unfolding and GEMM, any geometry), `fourier` (per frequency, stride 1),
//! `winograd` (per evaluation point, stride 1, small planes) or `kernel_rows` (one GEMM
//! per kernel row, stride 1, small batches).

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3};

use super::fourier::{self, KernelCache};
use super::im2col::{self, add_bias_to_images, gemm_fold, gemm_fold_bias, unfold_gemm_bias};
use super::layer::ConvGeom;
use super::{kernel_rows, reference, winograd};
use crate::{Error, Float, Result};

/// How a convolution layer computes its products. All give the same result up to
/// rounding; they differ in speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// The path expected to be fastest: Winograd for stride-1 convolutions of small planes
    /// (at most 6 points a side, padding included) with many channels and a batch of 4 or
    /// more; for other stride-1 convolutions, kernel rows for batches of at most 8 with at
    /// least 32 values per image row of the unfolded side (`channels * kernel width`), and
    /// Fourier for larger planes with many channels and a kernel of 3x3 or more (batches of
    /// 4 or more, 9 or more where kernel rows apply); im2col otherwise.
    #[default]
    Auto,
    /// im2col + GEMM, always.
    Unfold,
    /// Per frequency of the FFT'd planes; an error for strides other than 1.
    Fourier,
    /// Winograd's minimal filtering, the whole plane one tile; an error for strides or
    /// dilations other than 1 or planes larger than 6 points a side.
    Winograd,
    /// One GEMM per kernel row over the input unfolded along the kernel's columns alone
    /// (`kw` copies of it where im2col makes `kh * kw`); an error for strides other than 1.
    KernelRows,
    /// The loops that define the products (`src/nn/conv/reference.rs`): any
    /// geometry, one thread, orders of magnitude slower; for reading and for testing.
    Reference,
}

/// The module that computes a product.
#[derive(Clone, Copy)]
enum Path {
    Reference,
    Unfold,
    Fourier,
    Winograd,
    KernelRows,
}

impl ConvAlgorithm {
    /// The path for the products of `n` images of geometry `g`, with `rows` channels on
    /// the other side of the weight.
    fn path(self, g: &ConvGeom, rows: usize, n: usize) -> Result<Path> {
        match self {
            ConvAlgorithm::Auto if winograd::preferred(g, rows, n) => Ok(Path::Winograd),
            ConvAlgorithm::Auto if kernel_rows::preferred(g, n) => Ok(Path::KernelRows),
            ConvAlgorithm::Auto if fourier::preferred(g, rows, n) => Ok(Path::Fourier),
            ConvAlgorithm::Auto | ConvAlgorithm::Unfold => Ok(Path::Unfold),
            ConvAlgorithm::Fourier if fourier::supports(g) => Ok(Path::Fourier),
            ConvAlgorithm::Fourier => Err(Error::InvalidArgument(format!(
                "the Fourier convolution needs stride 1, not {:?}",
                g.stride
            ))),
            ConvAlgorithm::Winograd if winograd::supports(g) => Ok(Path::Winograd),
            ConvAlgorithm::Winograd => Err(Error::InvalidArgument(format!(
                "the Winograd convolution needs stride 1 (not {:?}), dilation 1 (not {:?}) and at most 6 \
                 points a side (output + kernel - 1: {}x{})",
                g.stride,
                g.dilation,
                g.oh + g.kernel.0 - 1,
                g.ow + g.kernel.1 - 1
            ))),
            ConvAlgorithm::KernelRows if kernel_rows::supports(g) => Ok(Path::KernelRows),
            ConvAlgorithm::KernelRows => Err(Error::InvalidArgument(format!(
                "the kernel-row convolution needs stride 1, not {:?}",
                g.stride
            ))),
            ConvAlgorithm::Reference => Ok(Path::Reference),
        }
    }
}

/// `out[n] = wmat · im2col(inp[n])` (see `im2col::unfold_gemm`), plus `bias[o]` on
/// every output channel `o` unless `bias` is empty. The Fourier path takes its kernel
/// blocks from `kernels` or leaves them there.
pub(crate) fn correlate<F: Float>(
    algo: ConvAlgorithm,
    inp: ArrayView2<F>,
    g: &ConvGeom,
    (wmat, kernels): (ArrayView2<F>, &mut KernelCache<F>),
    mut out: ArrayViewMut3<F>,
    bias: &[F],
) -> Result<()> {
    match algo.path(g, wmat.nrows(), inp.nrows())? {
        Path::Winograd => winograd::correlate(inp, g, wmat, out.view_mut()),
        Path::Fourier => fourier::correlate(inp, g, wmat, out.view_mut(), kernels),
        Path::KernelRows => kernel_rows::correlate(inp, g, wmat, out.view_mut()),
        Path::Reference => reference::correlate(inp, g, wmat, out.view_mut()),
        // Adds the bias to each group of images as it writes them.
        Path::Unfold => {
            unfold_gemm_bias(inp, g, wmat, out, bias);
            return Ok(());
        }
    }
    let (n, rows, p) = out.dim();
    let out2 = out.into_shape_with_order((n, rows * p)).expect("standard layout");
    add_bias_to_images(out2, bias);
    Ok(())
}

/// `out[n] = col2im(wmat' · src[n])` (see `im2col::gemm_fold`), plus `bias[c]` on every
/// channel `c` of the folded images unless `bias` is empty; `kernels` as [`correlate`].
pub(crate) fn fold<F: Float>(
    algo: ConvAlgorithm,
    src: ArrayView3<F>,
    g: &ConvGeom,
    (wmat, kernels): (ArrayView2<F>, &mut KernelCache<F>),
    mut out: ArrayViewMut2<F>,
    bias: &[F],
) -> Result<()> {
    match algo.path(g, wmat.nrows(), src.shape()[0])? {
        Path::Winograd => winograd::fold(src, g, wmat, out.view_mut()),
        Path::Fourier => fourier::fold(src, g, wmat, out.view_mut(), kernels),
        Path::KernelRows => kernel_rows::fold(src, g, wmat, out.view_mut()),
        Path::Reference => reference::fold(src, g, wmat, out.view_mut()),
        // Adds the bias to each image as it folds it.
        Path::Unfold => {
            gemm_fold_bias(src, g, wmat, out, bias);
            return Ok(());
        }
    }
    add_bias_to_images(out, bias);
    Ok(())
}

/// `dw += sum_n a[n] · im2col(b[n])'` (see `im2col::weight_grad`).
pub(crate) fn weight_grad<F: Float>(
    algo: ConvAlgorithm,
    a: ArrayView3<F>,
    b: ArrayView2<F>,
    g: &ConvGeom,
    dw: ArrayViewMut2<F>,
) -> Result<()> {
    match algo.path(g, a.shape()[1], a.shape()[0])? {
        Path::Winograd => winograd::weight_grad(a, b, g, dw),
        Path::Fourier => fourier::weight_grad(a, b, g, dw),
        Path::KernelRows => kernel_rows::weight_grad(a, b, g, dw),
        Path::Unfold => im2col::weight_grad(a, b, g, dw),
        Path::Reference => reference::weight_grad(a, b, g, dw),
    }
    Ok(())
}

/// Both gradients in one call, the input gradient written over the kept input `x` (see
/// [`fourier::backward_over_input`]): Conv2d (`dy_is_a`) has `dy` `[N, rows*oh*ow]` and
/// `x` `[N, c*h*w]`, ConvTranspose2d the other way round. `dw += ...`; `kernels` as
/// [`correlate`].
pub(crate) fn backward_over_input<F: Float>(
    algo: ConvAlgorithm,
    dy_is_a: bool,
    dy: ArrayView2<F>,
    x: ArrayViewMut2<F>,
    g: &ConvGeom,
    (wmat, kernels): (ArrayView2<F>, &mut KernelCache<F>),
    dw: ArrayViewMut2<F>,
) -> Result<()> {
    let (n, rows, p) = (dy.nrows(), wmat.nrows(), g.col_cols());
    match algo.path(g, rows, n)? {
        Path::Winograd => {
            winograd::backward_over_input(dy_is_a, dy, x, g, wmat, dw);
            return Ok(());
        }
        Path::Fourier => {
            fourier::backward_over_input(dy_is_a, dy, x, g, (wmat, kernels), dw);
            return Ok(());
        }
        Path::KernelRows => {
            kernel_rows::backward_over_input(dy_is_a, dy, x, g, wmat, dw);
            return Ok(());
        }
        Path::Reference => {
            // Conv2d: dw reads x, then dx overwrites it; ConvTranspose2d the other way.
            if dy_is_a {
                let dy3 = dy.into_shape_with_order((n, rows, p)).expect("standard layout");
                reference::weight_grad(dy3, x.view(), g, dw);
                reference::fold(dy3, g, wmat, x);
            } else {
                let mut x3 = x.into_shape_with_order((n, rows, p)).expect("standard layout");
                reference::weight_grad(x3.view(), dy, g, dw);
                reference::correlate(dy, g, wmat, x3.view_mut());
            }
            return Ok(());
        }
        Path::Unfold => {}
    }
    // im2col. Conv2d: the weight gradient reads x, then the input gradient overwrites it.
    // ConvTranspose2d: one unfolding of dy serves both products.
    if dy_is_a {
        let dy3 = dy.into_shape_with_order((n, rows, p)).expect("standard layout");
        im2col::weight_grad(dy3, x.view(), g, dw);
        gemm_fold(dy3, g, wmat, x);
    } else {
        let x3 = x.into_shape_with_order((n, rows, p)).expect("standard layout");
        im2col::unfold_backward_over_input(dy, x3, g, wmat, dw);
    }
    Ok(())
}
