//! [`GpuSequential`]: a CPU [`Sequential`]'s layers and values on the GPU, in train mode,
//! with host arrays in and out. The tests use it to hold each GPU layer against its CPU
//! counterpart; a user can use it to run a network's forward and backward on the GPU.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::gpu::Gpu;
use super::layers::{permute, GpuChain, Shape, Tensor};
use super::store::{ParamStore, SlotCursor};
use crate::nn::{Layer, Sequential};
use crate::{Error, Result};

/// See the module docs.
pub struct GpuSequential {
    gpu: Arc<Gpu>,
    store: ParamStore,
    chain: GpuChain,
    input: Option<Vec<usize>>,
    output: Option<Vec<usize>>,
}

/// A host array `[b, c, h, w]` or `[b, f]` as a GPU tensor (maps or rows).
pub(crate) fn upload_nd(gpu: &Gpu, x: ArrayViewD<f32>) -> Result<Tensor> {
    let flat: Vec<f32> = x.iter().copied().collect();
    let rows = Tensor::new(
        gpu.upload(&flat)?,
        Shape::Rows {
            b: x.shape().first().copied().unwrap_or(0),
            f: x.shape()[1..].iter().product(),
        },
    );
    match x.shape() {
        [_, _] => Ok(rows),
        &[b, c, h, w] => permute(gpu, rows, Shape::Maps { c, b, h, w }),
        other => Err(Error::shape("GPU input", "[b, f] or [b, c, h, w]", other)),
    }
}

/// A GPU tensor as a host array `[b, f]` or `[b, c, h, w]`.
pub(crate) fn download_nd(gpu: &Gpu, t: Tensor) -> Result<ArrayD<f32>> {
    let shape = match t.shape {
        Shape::Rows { b, f } => vec![b, f],
        Shape::Maps { c, b, h, w } => vec![b, c, h, w],
    };
    let rows = match t.shape {
        Shape::Rows { .. } => t,
        Shape::Maps { c, b, h, w } => permute(gpu, t, Shape::Rows { b, f: c * h * w })?,
    };
    let v = gpu.download(&rows.buf, rows.shape.len())?;
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), v).expect("sizes agree"))
}

impl GpuSequential {
    /// The layers and values of `net` on `gpu`.
    pub fn new(gpu: Arc<Gpu>, net: &mut Sequential<f32>) -> Result<Self> {
        let store = ParamStore::upload(&gpu, net)?;
        let specs = net.spec().flattened();
        let mut pc = SlotCursor::new(&store.param_slots);
        let mut bc = SlotCursor::new(&store.buffer_slots);
        let chain = GpuChain::build(&specs, &mut pc, &mut bc)?;
        if !pc.done() || !bc.done() {
            return Err(Error::Device("the network has parameters its layers do not use".into()));
        }
        Ok(GpuSequential {
            gpu,
            store,
            chain,
            input: None,
            output: None,
        })
    }

    /// Forward in train mode (BatchNorm on batch statistics, its running statistics
    /// moved); keeps what backward needs.
    pub fn forward(&mut self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        let t = upload_nd(&self.gpu, x.view())?;
        let y = self.chain.forward(&self.gpu, &self.store, t)?;
        let y = download_nd(&self.gpu, y)?;
        self.input = Some(x.shape().to_vec());
        self.output = Some(y.shape().to_vec());
        Ok(y)
    }

    /// Backward from `dy` (shaped as the last output): writes every parameter's gradient
    /// and returns the input's if `need_dx`.
    pub fn backward(&mut self, dy: ArrayViewD<f32>, need_dx: bool) -> Result<Option<ArrayD<f32>>> {
        if self.output.as_deref() != Some(dy.shape()) {
            return Err(Error::shape(
                "GpuSequential dy",
                format!("{:?} (the last output)", self.output),
                dy.shape(),
            ));
        }
        let t = upload_nd(&self.gpu, dy)?;
        match self.chain.backward(&self.gpu, &self.store, t, need_dx)? {
            Some(dx) => Ok(Some(download_nd(&self.gpu, dx)?)),
            None => Ok(None),
        }
    }

    /// The gradients of the last backward, one array per parameter in the order
    /// [`crate::nn::Module::visit_params`] visits them.
    pub fn grads(&self) -> Result<Vec<ArrayD<f32>>> {
        self.store.download_grads(&self.gpu)
    }

    /// Copies the GPU's values and running statistics back into `net` (the network this
    /// was made from).
    pub fn download_into(&self, net: &mut Sequential<f32>) -> Result<()> {
        self.store.download_into(&self.gpu, net)
    }
}
