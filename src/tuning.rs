//! The thresholds and chunk sizes that decide how work is cut, in one place, each with
//! what it trades. They were set by measurement on 2-vCPU hosts (`docs/performance-log.md`
//! has how); a machine with many more cores may want others, which is why they live here
//! rather than in the code that uses them.

use std::time::Duration;

// Matrix products.

/// Below this many multiply-adds a product is not worth splitting across threads. 2^17
/// since the other workers stay awake through a step ([`crate::pool::on_worker`]): the
/// ConvVAE's `fc_up` at batch 1 (256,000, bound by reading its megabyte of weights) is
/// now split, and the batch-1 step's median fell 8% against 2^18 (eight alternations).
pub(crate) const GEMM_PAR_MIN_WORK: usize = 1 << 17;

// Linear layers.

/// Batches of at most this many rows take the small-batch backward: its two products are
/// then bound by reading `w` and updating `dw`, and each thread does both on its own
/// block of them in one pass, instead of each product being split (or, under
/// [`crate::gemm::gemm_par`]'s work threshold, not split) on its own.
pub(crate) const LINEAR_SMALL_BATCH: usize = 8;

/// Weights smaller than this take the general path ([`crate::gemm::gemm_par`] per product).
pub(crate) const LINEAR_SMALL_BATCH_MIN_WEIGHT: usize = 1 << 15;

// Convolutions.

/// Columns per GEMM that make a product worth its call: images with fewer output
/// positions than this are unfolded several at a time, side by side.
pub(crate) const IM2COL_MIN_GEMM_COLS: usize = 512;

/// Below this many values a bias pass over a batch (adding the bias, or summing its
/// gradient) stays on the calling thread.
pub(crate) const PAR_MIN_BIAS: usize = 1 << 16;

/// Below this many multiply-adds an image's product stays on one thread.
pub(crate) const SINGLE_IMAGE_MIN_WORK: usize = 1 << 18;

/// Fewest values along each GEMM's inner dimension (`c * kw`) for which this path is
/// chosen by `Auto`: with fewer, the many thin products lose to im2col's one (the
/// ConvVAE's one-channel layers at batch 1: backward 80 against 45 µs).
pub(crate) const KERNEL_ROWS_MIN_INNER: usize = 32;

/// Largest batch for which `Auto` chooses this path. For the ConvVAE's 32 -> 32 layers
/// (one forward and backward, two threads) it beat the Fourier path 3x at 4 images and by
/// 20-35% at 8; at 16 the Fourier path's transforms are amortised and it wins the
/// backward.
pub(crate) const KERNEL_ROWS_MAX_BATCH: usize = 8;

/// Below this many multiply-adds a product is not cut across threads.
pub(crate) const KERNEL_ROWS_MIN_WORK: usize = 1 << 18;

/// Images whose spectra are multiplied together: enough rows for an efficient GEMM per
/// frequency, few enough that a chunk's spectra stay in cache.
pub(crate) const FOURIER_CHUNK: usize = 32;

/// Images per chunk: rows enough for an efficient GEMM per point, few enough that the
/// chunk's transformed planes stay in cache.
pub(crate) const WINOGRAD_CHUNK: usize = 64;

// Element-wise passes.

/// Arrays at least this long are processed in parallel.
pub(crate) const ACTIVATION_PAR_MIN: usize = 1 << 15;

/// Entries per task of the in-place ReLU passes.
pub(crate) const RELU_SIGN_CHUNK: usize = 1 << 14;

/// Below this many values an array is zeroed on the calling thread.
pub(crate) const PAR_MIN_ZEROS: usize = 1 << 16;

/// Entries per task when a whole-parameter pass (zeroing, Adam's update, the finiteness
/// check) is split over threads.
pub(crate) const PARAM_PAR_CHUNK: usize = 4096;

/// Entries from which a pass that touches each entry once (zeroing, the finiteness check)
/// is split over threads: below half a megabyte of `f32` the fork costs more than it
/// saves (the linear AE's 15680-entry weights, zeroed in parallel, made its epoch 6%
/// slower). Half, not one: the ConvVAE's `fc_up` weight (256,000 entries, 1.02 MB) fell
/// just under 2^18.
pub(crate) const PAR_MIN_LIGHT: usize = 1 << 17;

// Threads.

/// Images per part below which a batch is not cut further: a part of a few images
/// leaves each layer's products too small to be worth a thread.
pub const MIN_PART: usize = 8;

/// How long a worker keeps looking for a step's jobs after it last found one, before it
/// returns to rayon's own idling (and sleep): a step with a long serial stretch does not
/// hold the other cores for more than this.
pub const SPIN_LIMIT: Duration = Duration::from_millis(2);
