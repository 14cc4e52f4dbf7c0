//! Flatten and Unflatten on the GPU: the only layers that reorder (CNHW maps to NCHW rows and back).

use super::*;

/// Maps `[c, b, h, w]` to rows `[b, c h w]`.
pub(super) struct GpuFlatten {
    pub(super) kept: Option<Shape>,
}

impl GpuOp for GpuFlatten {
    fn forward(&mut self, _name: &str, gpu: &Gpu, _store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let GpuFlatten { kept } = self;
        *kept = Some(x.shape);
        let out = match x.shape {
            Shape::Rows { .. } => x,
            Shape::Maps { c, b, h, w } => {
                let rows = Shape::Rows { b, f: c * h * w };
                permute(gpu, x, rows)?
            }
        };
        Ok(out)
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
        let GpuFlatten { kept } = self;
        let input = kept.take().ok_or_else(missing)?;
        if !need_dx {
            return Ok(None);
        }
        match input {
            Shape::Rows { .. } => Ok(Some(dy)),
            maps => Ok(Some(permute(gpu, dy, maps)?)),
        }
    }
}

/// Rows `[b, c h w]` to maps `[c, b, h, w]`.
pub(super) struct GpuUnflatten {
    pub(super) shape: Vec<usize>,
    pub(super) kept: Option<Shape>,
}

impl GpuOp for GpuUnflatten {
    fn forward(&mut self, name: &str, gpu: &Gpu, _store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let GpuUnflatten { shape, kept } = self;
        let Shape::Rows { b, f } = x.shape else {
            return Err(wrong_input(name, "rows", x.shape));
        };
        if shape.iter().product::<usize>() != f {
            return Err(wrong_input(name, &format!("rows of {shape:?}"), x.shape));
        }
        let out = match shape[..] {
            [c, h, w] => permute(gpu, x, Shape::Maps { c, b, h, w })?,
            _ => x,
        };
        *kept = Some(Shape::Rows { b, f });
        Ok(out)
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
        let GpuUnflatten { kept, .. } = self;
        let input = kept.take().ok_or_else(missing)?;
        if !need_dx {
            return Ok(None);
        }
        match dy.shape {
            Shape::Rows { .. } => Ok(Some(Tensor {
                buf: dy.buf,
                shape: input,
            })),
            _ => Ok(Some(permute(gpu, dy, input)?)),
        }
    }
}
