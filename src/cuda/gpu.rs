//! The GPU handle: a CUDA context, the one stream every launch goes to, a cuBLAS handle on
//! that stream, and the crate's kernels, compiled once by NVRTC when the handle is made.
//! Also the device buffers the other files pass around, and row-major GEMM.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::{Error, Result};

/// The kernels' CUDA C source, one file per family.
const SOURCE: &str = concat!(
    include_str!("kernels/common.cu"),
    include_str!("kernels/conv.cu"),
    include_str!("kernels/elementwise.cu"),
    include_str!("kernels/batch_norm.cu"),
    include_str!("kernels/vae.cu"),
    include_str!("kernels/adam.cu"),
);

/// Every `extern "C"` kernel in [`SOURCE`].
const KERNELS: &[&str] = &[
    "im2col",
    "col2im",
    "add_row_bias",
    "add_col_bias",
    "row_sums",
    "col_sums",
    "add_pixel_bias",
    "pixel_bias_grad",
    "permute_batch_channel",
    "activation_forward",
    "activation_backward",
    "bn_partial_stats",
    "bn_finish_mean",
    "bn_finish_var",
    "bn_apply",
    "bn_partial_grads",
    "bn_finish_grads",
    "bn_apply_grad",
    "posterior_forward",
    "log_likelihood",
    "log_likelihood_backward",
    "bound_weights",
    "loss_stats",
    "sum_into",
    "posterior_backward",
    "find_non_finite",
    "adam_step",
    "set_flag",
    "add_into",
    "gather_rows",
];

/// Threads per block of the element-wise (grid-stride) kernels.
const THREADS: u32 = 256;

/// The kernels index with 32-bit integers (kernels/common.cu): every buffer is smaller
/// than 2^31 elements.
fn check_len(n: usize) -> Result<()> {
    if n > i32::MAX as usize {
        return Err(Error::Device(format!(
            "a GPU buffer of {n} values, over the kernels' 2^31 (use a smaller batch)"
        )));
    }
    Ok(())
}

pub(crate) fn device_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// An `f32` buffer in GPU memory and its address (fixed for the buffer's life).
pub struct DeviceBuf {
    slice: CudaSlice<f32>,
    ptr: u64,
}

impl DeviceBuf {
    /// Number of `f32`s.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// Whether the buffer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }

    /// The device address of element `offset`.
    pub(crate) fn at(&self, offset: usize) -> u64 {
        debug_assert!(offset <= self.len());
        self.ptr + 4 * offset as u64
    }

    /// The device address of element 0.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }
}

/// Images on the GPU, one row of pixels each ([`Gpu::upload_images`]).
pub struct DeviceImages {
    buf: DeviceBuf,
    rows: usize,
    cols: usize,
}

impl DeviceImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Pixels per image.
    pub fn dim(&self) -> usize {
        self.cols
    }
}

/// A kernel argument.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    /// A device address.
    P(u64),
    /// An `int`.
    I(i32),
    /// A `long long`.
    L(i64),
    /// A `float`.
    F(f32),
}

/// `v` as an `int` kernel argument, or an error past 2^31.
pub(crate) fn int(v: usize) -> Result<Arg> {
    to_i32(v).map(Arg::I)
}

/// `v` as an `i32` (a kernel's or cuBLAS's size), or an error past 2^31.
fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Device(format!("size {v} over 2^31")))
}

/// Whether a GEMM operand is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// A usable GPU: see the module docs.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: HashMap<&'static str, CudaFunction>,
    name: String,
    flag: CudaSlice<u32>,
    flag_ptr: u64,
}

/// Keeps the memory a step frees in the device's pool instead of returning it at every
/// synchronisation (the default threshold, 0, does that), so that the next step's
/// stream-ordered allocations are reused, not mapped afresh.
fn keep_pool_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep: u64 = u64::MAX;
    // SAFETY: plain driver calls on this context's device, with valid out-pointers.
    unsafe {
        ctx.bind_to_thread().map_err(|e| device_err("bind context", e))?;
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| device_err("default memory pool", e))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )
        .result()
        .map_err(|e| device_err("memory pool threshold", e))?;
    }
    Ok(())
}

/// NVRTC's name for a compute capability it can target, if known.
fn arch_name(cc: (i32, i32)) -> Option<&'static str> {
    Some(match cc {
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => return None,
    })
}

impl Gpu {
    /// A handle on the GPU of `ctx` (from [`crate::device::select`]): makes the stream and
    /// the cuBLAS handle and compiles the kernels (an error names what failed, with
    /// NVRTC's log if the compilation did).
    pub fn new(ctx: Arc<CudaContext>) -> Result<Self> {
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let cc = ctx
            .compute_capability()
            .map_err(|e| device_err("compute capability", e))?;
        // One stream for everything: no cross-stream events needed.
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| device_err("cuBLAS handle", e))?;
        let opts = CompileOptions {
            arch: arch_name(cc),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(SOURCE, opts).map_err(|e| device_err("NVRTC compiling the kernels", e))?;
        let module = ctx.load_module(ptx).map_err(|e| device_err("loading the kernels", e))?;
        let mut kernels = HashMap::new();
        for &k in KERNELS {
            let f = module
                .load_function(k)
                .map_err(|e| device_err(&format!("kernel {k}"), e))?;
            kernels.insert(k, f);
        }
        keep_pool_memory(&ctx)?;
        let flag = stream.alloc_zeros::<u32>(1).map_err(|e| device_err("alloc", e))?;
        let flag_ptr = flag.device_ptr(&stream).0;
        Ok(Gpu {
            ctx,
            stream,
            blas,
            kernels,
            name,
            flag,
            flag_ptr,
        })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Waits for every launch so far; an error from any of them surfaces here.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| device_err("synchronize", e))
    }

    /// A zeroed buffer of `n` floats.
    pub fn zeros(&self, n: usize) -> Result<DeviceBuf> {
        check_len(n)?;
        let slice = self
            .stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(|e| device_err(&format!("allocating {n} floats"), e))?;
        Ok(self.wrap(slice))
    }

    /// A buffer of `n` floats, contents undefined (each user writes it whole).
    pub(crate) fn scratch(&self, n: usize) -> Result<DeviceBuf> {
        check_len(n)?;
        // SAFETY: every caller writes all `n` entries before reading any.
        let slice = unsafe { self.stream.alloc::<f32>(n.max(1)) }
            .map_err(|e| device_err(&format!("allocating {n} floats"), e))?;
        Ok(self.wrap(slice))
    }

    fn wrap(&self, slice: CudaSlice<f32>) -> DeviceBuf {
        let ptr = slice.device_ptr(&self.stream).0;
        DeviceBuf { slice, ptr }
    }

    /// Products in TF32 on the tensor cores (`true`; PyTorch's default for convolutions on
    /// Ampere and later) or in true float32 (`false`, the default: results as the CPU's
    /// to rounding).
    pub fn set_tf32(&self, on: bool) -> Result<()> {
        use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode, cublasStatus_t};
        let mode = if on {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: the handle is live for `self`'s life.
        match unsafe { cublasSetMathMode(*self.blas.handle(), mode) } {
            cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
            e => Err(device_err("cublasSetMathMode", e)),
        }
    }

    /// Training images kept on the GPU (rows of pixels), checked finite once here, so
    /// that a step copies only its batch's indices up ([`crate::cuda::VaeTrainer::step_rows`]).
    pub fn upload_images(&self, x: ndarray::ArrayView2<f32>) -> Result<DeviceImages> {
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite("training images".into()));
        }
        let xs = x.as_standard_layout();
        Ok(DeviceImages {
            buf: self.upload(xs.as_slice().expect("standard layout"))?,
            rows: x.nrows(),
            cols: x.ncols(),
        })
    }

    /// Rows `idx` of `images` as a new buffer `[idx.len(), cols]`.
    pub(crate) fn gather(&self, images: &DeviceImages, idx: &[usize]) -> Result<DeviceBuf> {
        if let Some(&bad) = idx.iter().find(|&&i| i >= images.rows) {
            return Err(Error::InvalidArgument(format!(
                "image index {bad} of {} images",
                images.rows
            )));
        }
        let idx32: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let ib = self
            .stream
            .clone_htod(&idx32)
            .map_err(|e| device_err("copy to the GPU", e))?;
        let ip = ib.device_ptr(&self.stream).0;
        let out = self.scratch(idx.len() * images.cols)?;
        self.launch_n(
            "gather_rows",
            idx.len() * images.cols,
            &[
                Arg::P(images.buf.ptr()),
                Arg::P(ip),
                Arg::P(out.ptr()),
                int(idx.len())?,
                int(images.cols)?,
            ],
        )?;
        Ok(out)
    }

    /// A copy of `host` in GPU memory.
    pub fn upload(&self, host: &[f32]) -> Result<DeviceBuf> {
        check_len(host.len())?;
        let slice = self
            .stream
            .clone_htod(host)
            .map_err(|e| device_err("copy to the GPU", e))?;
        Ok(self.wrap(slice))
    }

    /// Copies `host` into the start of `buf`.
    pub fn upload_into(&self, host: &[f32], buf: &mut DeviceBuf) -> Result<()> {
        if host.len() > buf.len() {
            return Err(Error::Device(format!(
                "copy of {} floats into a buffer of {}",
                host.len(),
                buf.len()
            )));
        }
        let mut view = buf.slice.slice_mut(0..host.len());
        self.stream
            .memcpy_htod(host, &mut view)
            .map_err(|e| device_err("copy to the GPU", e))
    }

    /// The first `n` floats of `buf`, waiting for the launches before.
    pub fn download(&self, buf: &DeviceBuf, n: usize) -> Result<Vec<f32>> {
        let n = n.min(buf.len());
        self.stream
            .clone_dtoh(&buf.slice.slice(0..n))
            .map_err(|e| device_err("copy from the GPU", e))
    }

    /// A copy of `src` (the first `n` floats) into `dst`.
    pub(crate) fn copy(&self, src: &DeviceBuf, dst: &mut DeviceBuf, n: usize) -> Result<()> {
        self.stream
            .memcpy_dtod(&src.slice.slice(0..n), &mut dst.slice.slice_mut(0..n))
            .map_err(|e| device_err("copy on the GPU", e))
    }

    /// Clears the flag word (see kernels/adam.cu).
    pub(crate) fn clear_flag(&self) -> Result<()> {
        self.launch("set_flag", 1, 1, &[Arg::P(self.flag_ptr), Arg::I(0)])
    }

    /// The flag word's address.
    pub(crate) fn flag(&self) -> Arg {
        Arg::P(self.flag_ptr)
    }

    /// The flag word, waiting for the launches before.
    pub(crate) fn read_flag(&self) -> Result<u32> {
        let v = self
            .stream
            .clone_dtoh(&self.flag)
            .map_err(|e| device_err("copy from the GPU", e))?;
        Ok(v[0])
    }

    /// Launches kernel `name` on `grid` blocks of `block` threads.
    pub(crate) fn launch(&self, name: &str, grid: u32, block: u32, args: &[Arg]) -> Result<()> {
        self.launch_2d(name, (grid, 1), block, args)
    }

    /// Launches kernel `name` on a `(x, y)` grid of blocks of `block` threads.
    pub(crate) fn launch_2d(&self, name: &str, (gx, gy): (u32, u32), block: u32, args: &[Arg]) -> Result<()> {
        if gy > 65535 {
            return Err(Error::Device(format!("{name}: {gy} rows of blocks, over CUDA's 65535")));
        }
        let f = self
            .kernels
            .get(name)
            .ok_or_else(|| Error::Device(format!("no kernel {name}")))?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::P(v) => b.arg(v),
                Arg::I(v) => b.arg(v),
                Arg::L(v) => b.arg(v),
                Arg::F(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (gx.max(1), gy.max(1), 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: each caller passes the argument list its kernel declares, with device
        // addresses of live buffers large enough for the sizes passed beside them; every
        // launch is on the one stream, so buffers dropped afterwards are freed in order.
        unsafe { b.launch(cfg) }.map_err(|e| device_err(&format!("launching {name}"), e))?;
        Ok(())
    }

    /// Launches a grid-stride kernel over `n` elements.
    pub(crate) fn launch_n(&self, name: &str, n: usize, args: &[Arg]) -> Result<()> {
        let blocks = n.div_ceil(THREADS as usize).clamp(1, 132 * 16) as u32;
        self.launch(name, blocks, THREADS, args)
    }

    /// Row-major `c = alpha op(a) op(b) + beta c`, with `op(a)` `[m, k]`, `op(b)` `[k, n]`
    /// and `c` `[m, n]`, all stored densely (cuBLAS is column-major: this asks it for
    /// `c^T = op(b)^T op(a)^T`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &self,
        (ta, tb): (Op, Op),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: u64,
        b: u64,
        beta: f32,
        c: u64,
    ) -> Result<()> {
        let op = |o| match o {
            Op::N => cublasOperation_t::CUBLAS_OP_N,
            Op::T => cublasOperation_t::CUBLAS_OP_T,
        };
        let lda = if tb == Op::T { k } else { n };
        let ldb = if ta == Op::T { m } else { k };
        // SAFETY: the addresses are of live buffers holding the dense matrices above.
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.blas.handle(),
                op(tb),
                op(ta),
                to_i32(n)?,
                to_i32(m)?,
                to_i32(k)?,
                &alpha,
                b as *const f32,
                to_i32(lda.max(1))?,
                a as *const f32,
                to_i32(ldb.max(1))?,
                &beta,
                c as *mut f32,
                to_i32(n.max(1))?,
            )
        }
        .map_err(|e| device_err("cuBLAS sgemm", e))
    }
}
