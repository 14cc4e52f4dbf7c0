//! The GPU activations and pixel bias: in-place forward/backward pairs.

use super::*;

/// ReLU, LeakyReLU, Sigmoid or Tanh, in place; the output is kept for the backward.
pub(super) struct GpuActivation {
    pub(super) code: (i32, f32),
    pub(super) kept: Option<Tensor>,
}

impl GpuOp for GpuActivation {
    fn forward(&mut self, _name: &str, gpu: &Gpu, _store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let GpuActivation { code, kept } = self;
        let x = x.into_unique(gpu)?;
        let n = x.shape.len();
        gpu.launch_n(
            "activation_forward",
            n,
            &[Arg::P(x.ptr()), Arg::L(n as i64), Arg::I(code.0), Arg::F(code.1)],
        )?;
        *kept = Some(x.clone());
        Ok(x)
    }

    fn backward(
        &mut self,
        name: &str,
        gpu: &Gpu,
        _store: &ParamStore,
        dy: Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        let missing = || backward_before_forward(name);
        let GpuActivation { code, kept } = self;
        let y = kept.take().ok_or_else(missing)?;
        if !need_dx {
            return Ok(None);
        }
        let dy = dy.into_unique(gpu)?;
        let n = dy.shape.len();
        gpu.launch_n(
            "activation_backward",
            n,
            &[
                Arg::P(y.ptr()),
                Arg::P(dy.ptr()),
                Arg::L(n as i64),
                Arg::I(code.0),
                Arg::F(code.1),
            ],
        )?;
        Ok(Some(dy))
    }
}

/// The notebooks' per-pixel bias, in place.
pub(super) struct GpuPixelBias {
    pub(super) shape: Vec<usize>,
    pub(super) b: usize,
    pub(super) kept: Option<Shape>,
}

impl GpuOp for GpuPixelBias {
    fn forward(&mut self, name: &str, gpu: &Gpu, store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let p = &store.params;
        let GpuPixelBias { shape, b: bo, kept } = self;
        let numel: usize = shape.iter().product();
        let (c, b, hw) = match x.shape {
            Shape::Maps { c, b, h, w } if c * h * w == numel && shape.first() == Some(&c) => (c, b, h * w),
            Shape::Rows { b, f } if f == numel => (1, b, f),
            other => return Err(wrong_input(name, &format!("samples of shape {shape:?}"), other)),
        };
        let x = x.into_unique(gpu)?;
        gpu.launch_n(
            "add_pixel_bias",
            x.shape.len(),
            &[Arg::P(x.ptr()), Arg::P(p.at(*bo)), int(c)?, int(b)?, Arg::L(hw as i64)],
        )?;
        *kept = Some(x.shape);
        Ok(x)
    }

    fn backward(
        &mut self,
        name: &str,
        gpu: &Gpu,
        store: &ParamStore,
        dy: Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        let missing = || backward_before_forward(name);
        let g = &store.grads;
        let GpuPixelBias { b: bo, kept, .. } = self;
        let shape = kept.take().ok_or_else(missing)?;
        let (c, b, hw) = match shape {
            Shape::Maps { c, b, h, w } => (c, b, h * w),
            Shape::Rows { b, f } => (1, b, f),
        };
        gpu.launch_n(
            "pixel_bias_grad",
            c * hw,
            &[Arg::P(dy.ptr()), Arg::P(g.at(*bo)), int(c)?, int(b)?, Arg::L(hw as i64)],
        )?;
        Ok(need_dx.then_some(dy))
    }
}
