//! The GPU convolutions, each a forward/backward pair: im2col or col2im kernels around one cuBLAS GEMM over the whole batch (maps are CNHW, so the batch is one matrix).

use super::*;

/// Conv2d: im2col of the batch, then one GEMM; the columns are kept for the backward.
pub(super) struct GpuConv2d {
    pub(super) in_ch: usize,
    pub(super) out_ch: usize,
    pub(super) kernel: (usize, usize),
    pub(super) opts: ConvOptions,
    pub(super) p: WeightBias,
    pub(super) kept: Option<(DeviceBuf, Geom)>,
}

impl GpuOp for GpuConv2d {
    fn forward(&mut self, name: &str, gpu: &Gpu, store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let p = &store.params;
        let GpuConv2d {
            in_ch,
            out_ch,
            kernel,
            opts,
            p: wb,
            kept,
        } = self;
        let Shape::Maps { c, b, h, w } = x.shape else {
            return Err(wrong_input(name, "maps", x.shape));
        };
        if c != *in_ch {
            return Err(wrong_input(name, &format!("{in_ch} channels"), x.shape));
        }
        let g = Geom {
            conv: conv2d_geom(&[b, c, h, w], &[*out_ch, c, kernel.0, kernel.1], opts)?,
            b,
        };
        let col = gpu.scratch(g.col_rows() * g.col_cols())?;
        g.im2col(gpu, x.ptr(), col.ptr())?;
        let y = gpu.scratch(*out_ch * g.col_cols())?;
        gpu.gemm(
            (Op::N, Op::N),
            (*out_ch, g.col_cols(), g.col_rows()),
            1.0,
            p.at(wb.w),
            col.ptr(),
            0.0,
            y.ptr(),
        )?;
        if let Some(bo) = wb.b {
            add_channel_bias(gpu, y.ptr(), p.at(bo), *out_ch, g.col_cols())?;
        }
        *kept = Some((col, g));
        Ok(Tensor::new(
            y,
            Shape::Maps {
                c: *out_ch,
                b,
                h: g.conv.oh,
                w: g.conv.ow,
            },
        ))
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
        let GpuConv2d {
            in_ch,
            out_ch,
            p: wb,
            kept,
            ..
        } = self;
        let (col, geom) = kept.take().ok_or_else(missing)?;
        let ncols = geom.col_cols();
        if let Some(bo) = wb.b {
            channel_sums(gpu, dy.ptr(), g.at(bo), *out_ch, ncols)?;
        }
        gpu.gemm(
            (Op::N, Op::T),
            (*out_ch, geom.col_rows(), ncols),
            1.0,
            dy.ptr(),
            col.ptr(),
            0.0,
            g.at(wb.w),
        )?;
        if !need_dx {
            return Ok(None);
        }
        // dcol = W^T dy, over the kept columns (no longer needed).
        gpu.gemm(
            (Op::T, Op::N),
            (geom.col_rows(), ncols, *out_ch),
            1.0,
            p.at(wb.w),
            dy.ptr(),
            0.0,
            col.ptr(),
        )?;
        let dx = gpu.scratch(geom.image_len())?;
        geom.col2im(gpu, col.ptr(), dx.ptr())?;
        Ok(Some(Tensor::new(
            dx,
            Shape::Maps {
                c: *in_ch,
                b: geom.b,
                h: geom.conv.h,
                w: geom.conv.w,
            },
        )))
    }
}

/// ConvTranspose2d: one GEMM into columns, then col2im; the input is kept for the backward.
pub(super) struct GpuConvTranspose2d {
    pub(super) in_ch: usize,
    pub(super) out_ch: usize,
    pub(super) kernel: (usize, usize),
    pub(super) opts: ConvOptions,
    pub(super) p: WeightBias,
    pub(super) kept: Option<(Tensor, Geom)>,
}

impl GpuOp for GpuConvTranspose2d {
    fn forward(&mut self, name: &str, gpu: &Gpu, store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let p = &store.params;
        let GpuConvTranspose2d {
            in_ch,
            out_ch,
            kernel,
            opts,
            p: wb,
            kept,
        } = self;
        let Shape::Maps { c, b, h, w } = x.shape else {
            return Err(wrong_input(name, "maps", x.shape));
        };
        if c != *in_ch || h == 0 || w == 0 {
            return Err(wrong_input(name, &format!("{in_ch} channels"), x.shape));
        }
        // The output is the image side of the im2col, the input its column side.
        let g = Geom {
            conv: conv_transpose2d_geom(&[b, c, h, w], &[c, *out_ch, kernel.0, kernel.1], opts)?,
            b,
        };
        let (ho, wo) = (g.conv.h, g.conv.w);
        let col = gpu.scratch(g.col_rows() * g.col_cols())?;
        gpu.gemm(
            (Op::T, Op::N),
            (g.col_rows(), g.col_cols(), *in_ch),
            1.0,
            p.at(wb.w),
            x.ptr(),
            0.0,
            col.ptr(),
        )?;
        let y = gpu.scratch(g.image_len())?;
        g.col2im(gpu, col.ptr(), y.ptr())?;
        if let Some(bo) = wb.b {
            add_channel_bias(gpu, y.ptr(), p.at(bo), *out_ch, g.per_channel())?;
        }
        *kept = Some((x, g));
        Ok(Tensor::new(
            y,
            Shape::Maps {
                c: *out_ch,
                b,
                h: ho,
                w: wo,
            },
        ))
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
        let GpuConvTranspose2d {
            in_ch,
            out_ch,
            p: wb,
            kept,
            ..
        } = self;
        let (x, geom) = kept.take().ok_or_else(missing)?;
        let dcol = gpu.scratch(geom.col_rows() * geom.col_cols())?;
        geom.im2col(gpu, dy.ptr(), dcol.ptr())?;
        if let Some(bo) = wb.b {
            channel_sums(gpu, dy.ptr(), g.at(bo), *out_ch, geom.per_channel())?;
        }
        gpu.gemm(
            (Op::N, Op::T),
            (*in_ch, geom.col_rows(), geom.col_cols()),
            1.0,
            x.ptr(),
            dcol.ptr(),
            0.0,
            g.at(wb.w),
        )?;
        if !need_dx {
            return Ok(None);
        }
        let dx = x.reuse_or_alloc(gpu)?;
        gpu.gemm(
            (Op::N, Op::N),
            (*in_ch, geom.col_cols(), geom.col_rows()),
            1.0,
            p.at(wb.w),
            dcol.ptr(),
            0.0,
            dx.ptr(),
        )?;
        Ok(Some(dx))
    }
}
