//! The GPU Linear forward/backward pair.

use super::*;

/// Linear on rows `[b, f]`: one GEMM and the bias.
pub(super) struct GpuLinear {
    pub(super) in_f: usize,
    pub(super) out_f: usize,
    pub(super) p: WeightBias,
    pub(super) kept: Option<Tensor>,
}

impl GpuOp for GpuLinear {
    fn forward(&mut self, name: &str, gpu: &Gpu, store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let p = &store.params;
        let GpuLinear {
            in_f,
            out_f,
            p: wb,
            kept,
        } = self;
        let Shape::Rows { b, f } = x.shape else {
            return Err(wrong_input(name, "rows", x.shape));
        };
        if f != *in_f {
            return Err(wrong_input(name, &format!("{in_f} columns"), x.shape));
        }
        let y = gpu.scratch(b * *out_f)?;
        gpu.gemm(
            (Op::N, Op::T),
            (b, *out_f, *in_f),
            1.0,
            x.ptr(),
            p.at(wb.w),
            0.0,
            y.ptr(),
        )?;
        if let Some(bo) = wb.b {
            gpu.launch_n(
                "add_col_bias",
                b * *out_f,
                &[Arg::P(y.ptr()), Arg::P(p.at(bo)), int(b)?, int(*out_f)?],
            )?;
        }
        *kept = Some(x);
        Ok(Tensor::new(y, Shape::Rows { b, f: *out_f }))
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
        let p = &store.params;
        let g = &store.grads;
        let GpuLinear {
            in_f,
            out_f,
            p: wb,
            kept,
        } = self;
        let x = kept.take().ok_or_else(missing)?;
        let Shape::Rows { b, .. } = x.shape else {
            return Err(missing());
        };
        if let Some(bo) = wb.b {
            gpu.launch_n(
                "col_sums",
                *out_f,
                &[Arg::P(dy.ptr()), Arg::P(g.at(bo)), int(b)?, int(*out_f)?],
            )?;
        }
        gpu.gemm(
            (Op::T, Op::N),
            (*out_f, *in_f, b),
            1.0,
            dy.ptr(),
            x.ptr(),
            0.0,
            g.at(wb.w),
        )?;
        if !need_dx {
            return Ok(None);
        }
        let dx = x.reuse_or_alloc(gpu)?;
        gpu.gemm(
            (Op::N, Op::N),
            (b, *in_f, *out_f),
            1.0,
            dy.ptr(),
            p.at(wb.w),
            0.0,
            dx.ptr(),
        )?;
        Ok(Some(dx))
    }
}
