//! Convolutions, Conv2d and ConvTranspose2d, in one folder.
//!
//! Read in this order:
//! - [`layer`](ConvLayer): the options, the geometry and the layer (weights, the kept
//!   input, PyTorch's layout and initialisation in each direction);
//! - `functions`: the forward and backward free functions of both directions, side by
//!   side ([`conv2d_forward`], [`conv2d_backward`], [`conv_transpose2d_forward`],
//!   [`conv_transpose2d_backward`]), each made of three products;
//! - `reference`: those three products as the plain loops that define them;
//! - `algorithm`: [`ConvAlgorithm`], which routes the products to a path.
//!
//! The paths, all private and all tested against the reference loops and PyTorch:
//! `im2col` (unfold, then one GEMM; any geometry), `fourier` (per frequency, stride 1),
//! `winograd` (minimal filtering, stride 1, small planes), `kernel_rows` (one GEMM per
//! kernel row, stride 1, small batches) and `single_image` (im2col cut across threads
//! for batches smaller than the pool).

mod algorithm;
mod fourier;
mod functions;
mod im2col;
mod kernel_rows;
mod layer;
mod reference;
mod single_image;
mod winograd;

pub use algorithm::ConvAlgorithm;
pub use fourier::KernelCache;
pub use functions::{conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward};
#[cfg(feature = "cuda")]
pub(crate) use layer::{direct_geom, transposed_geom, ConvGeom};
pub use layer::{Conv2d, ConvDirection, ConvLayer, ConvOptions, ConvTranspose2d, Direct, Transposed};
