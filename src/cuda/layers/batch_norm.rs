//! The GPU BatchNorm2d forward/backward pair (train mode), with its rectifier fused.

use super::*;

/// BatchNorm2d in train mode (batch statistics, running ones updated), with the rectifier that follows it in the same pass.
pub(super) struct GpuBatchNorm2d {
    pub(super) channels: usize,
    pub(super) eps: f32,
    pub(super) momentum: f32,
    pub(super) rect: Option<f32>,
    /// Offsets of `weight` (gamma) and `bias` (beta).
    pub(super) affine: (usize, usize),
    pub(super) running: usize,
    pub(super) kept: Option<(Tensor, DeviceBuf, DeviceBuf)>,
}

impl GpuOp for GpuBatchNorm2d {
    fn forward(&mut self, name: &str, gpu: &Gpu, store: &ParamStore, x: Tensor) -> Result<Tensor> {
        let p = &store.params;
        let GpuBatchNorm2d {
            channels,
            eps,
            momentum,
            rect,
            affine,
            running,
            kept,
        } = self;
        let Shape::Maps { c, b, h, w } = x.shape else {
            return Err(wrong_input(name, "maps", x.shape));
        };
        let n = b * h * w;
        if c != *channels || n < 2 {
            return Err(wrong_input(
                name,
                &format!("{channels} channels of more than one value"),
                x.shape,
            ));
        }
        let y = gpu.scratch(x.shape.len())?;
        let mean = gpu.scratch(c)?;
        let inv_std = gpu.scratch(c)?;
        let bufs = &store.buffers;
        let slices = bn_slices(c, n);
        let part = gpu.scratch(c * slices)?;
        let (gamma, beta) = (p.at(affine.0), p.at(affine.1));
        let (cc, nn, ss) = (int(c)?, Arg::L(n as i64), int(slices)?);
        let stats = |centre: u64| {
            gpu.launch(
                "bn_partial_stats",
                (c * slices) as u32,
                256,
                &[Arg::P(x.ptr()), Arg::P(part.ptr()), nn, ss, Arg::P(centre)],
            )
        };
        stats(0)?;
        gpu.launch_n(
            "bn_finish_mean",
            c,
            &[Arg::P(part.ptr()), Arg::P(mean.ptr()), cc, ss, nn],
        )?;
        stats(mean.ptr())?;
        gpu.launch_n(
            "bn_finish_var",
            c,
            &[
                Arg::P(part.ptr()),
                Arg::P(mean.ptr()),
                Arg::P(inv_std.ptr()),
                Arg::P(bufs.at(*running)),
                Arg::P(bufs.at(*running + c)),
                cc,
                ss,
                nn,
                Arg::F(*eps),
                Arg::F(*momentum),
                Arg::F((n as f64 / (n - 1) as f64) as f32),
            ],
        )?;
        gpu.launch_n(
            "bn_apply",
            c * n,
            &[
                Arg::P(x.ptr()),
                Arg::P(y.ptr()),
                Arg::P(gamma),
                Arg::P(beta),
                Arg::P(mean.ptr()),
                Arg::P(inv_std.ptr()),
                cc,
                nn,
                Arg::I(rect.is_some() as i32),
                Arg::F(rect.unwrap_or(0.0)),
            ],
        )?;
        let shape = x.shape;
        *kept = Some((x, mean, inv_std));
        Ok(Tensor::new(y, shape))
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
        let GpuBatchNorm2d {
            channels,
            rect,
            affine,
            kept,
            ..
        } = self;
        let (x, mean, inv_std) = kept.take().ok_or_else(missing)?;
        let Shape::Maps { b, h, w, .. } = x.shape else {
            return Err(missing());
        };
        let dy = dy.into_unique(gpu)?;
        let (c, n) = (*channels, b * h * w);
        let slices = bn_slices(c, n);
        let (part1, part2, sums) = (gpu.scratch(c * slices)?, gpu.scratch(c * slices)?, gpu.scratch(2 * c)?);
        let (gamma, beta) = (p.at(affine.0), p.at(affine.1));
        let (cc, nn, ss) = (int(c)?, Arg::L(n as i64), int(slices)?);
        let (r, slope) = (Arg::I(rect.is_some() as i32), Arg::F(rect.unwrap_or(0.0)));
        // What both gradient kernels read first: the input, dy and the statistics.
        let inputs = [
            Arg::P(x.ptr()),
            Arg::P(dy.ptr()),
            Arg::P(gamma),
            Arg::P(beta),
            Arg::P(mean.ptr()),
            Arg::P(inv_std.ptr()),
        ];
        gpu.launch(
            "bn_partial_grads",
            (c * slices) as u32,
            256,
            &[
                &inputs[..],
                &[Arg::P(part1.ptr()), Arg::P(part2.ptr()), nn, ss, r, slope],
            ]
            .concat(),
        )?;
        gpu.launch_n(
            "bn_finish_grads",
            c,
            &[
                Arg::P(part1.ptr()),
                Arg::P(part2.ptr()),
                Arg::P(inv_std.ptr()),
                Arg::P(g.at(affine.0)),
                Arg::P(g.at(affine.1)),
                Arg::P(sums.ptr()),
                cc,
                ss,
            ],
        )?;
        if need_dx {
            gpu.launch_n(
                "bn_apply_grad",
                c * n,
                &[&inputs[..], &[Arg::P(sums.ptr()), cc, nn, r, slope]].concat(),
            )?;
        }
        Ok(need_dx.then_some(dy))
    }
}
