//! Depthwise convolution (one filter per channel, stride 1) on the CPU in f32, with an analytic
//! backward: candle runs a grouped conv as one conv per group, and the composite of shifted
//! multiply-adds allocates two tensors per tap, forward and backward. Planes are independent, so
//! channels are spread over the threads (each channel's weight gradient sums over the batch).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::Geometry;
use super::{contiguous_f32, cpu_f32, rows, with_f32, DisjointWrites};
use crate::profile::{self, Pass};

/// The geometry of one plane: `[1, 1, H, W]` by a `[1, 1, K, K]` filter.
fn plane(x: &[usize], w: &[usize], padding: usize) -> Result<(usize, usize, Geometry)> {
    let (&[batch, channels, height, width], &[wc, one, k, _]) = (x, w) else {
        bail!("depthwise kernel: want 4-D input and weight, got {x:?} and {w:?}")
    };
    if wc != channels || one != 1 {
        bail!("depthwise kernel: input {x:?} and weight {w:?} are not depthwise")
    }
    let g = Geometry::new(&[1, 1, height, width], &[1, 1, k, w[3]], 1, padding)?;
    Ok((batch, channels, g))
}

/// For every tap `ki·K + kj` that reads inside the image: `f(tap, out rows, in row of the first
/// out row, out columns, in column of the first out column)`.
fn for_each_tap(
    g: &Geometry,
    mut f: impl FnMut(usize, (usize, usize), usize, (usize, usize), usize),
) {
    let k = g.kernel;
    for ki in 0..k {
        let rows = g.valid(ki, g.height, g.out_height);
        for kj in 0..k {
            let cols = g.valid(kj, g.width, g.out_width);
            if rows.0 < rows.1 && cols.0 < cols.1 {
                f(
                    ki * k + kj,
                    rows,
                    rows.0 + ki - g.padding,
                    cols,
                    cols.0 + kj - g.padding,
                );
            }
        }
    }
}

/// Calls `f(channel, image)` for every plane, channels spread over the threads.
fn per_channel(batch: usize, channels: usize, f: impl Fn(usize, usize) + Sync) {
    (0..channels)
        .into_par_iter()
        .for_each(|c| (0..batch).for_each(|b| f(c, b)));
}

fn forward(batch: usize, channels: usize, g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (pin, pout, kk) = (g.in_pixels(), g.out_pixels(), g.kernel * g.kernel);
    let mut y = vec![0f32; batch * channels * pout];
    let out = DisjointWrites::new(&mut y);
    per_channel(batch, channels, |c, b| {
        let plane = b * channels + c;
        let xp = &x[plane * pin..(plane + 1) * pin];
        // SAFETY: plane `plane` of `y` belongs to channel `c`'s task alone.
        let yp = unsafe { out.slice(plane * pout, pout) };
        vectorized!(for_each_tap(g, |tap, (y0, y1), iy0, (x0, x1), ix0| {
            let wv = w[c * kk + tap];
            for (r, oy) in (y0..y1).enumerate() {
                let src = &xp[(iy0 + r) * g.width + ix0..][..x1 - x0];
                let dst = &mut yp[oy * g.out_width + x0..][..x1 - x0];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += wv * s);
            }
        }));
    });
    y
}

fn grad_input(batch: usize, channels: usize, g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (pin, pout, kk) = (g.in_pixels(), g.out_pixels(), g.kernel * g.kernel);
    let mut dx = vec![0f32; batch * channels * pin];
    let out = DisjointWrites::new(&mut dx);
    per_channel(batch, channels, |c, b| {
        let plane = b * channels + c;
        let dyp = &dy[plane * pout..(plane + 1) * pout];
        // SAFETY: plane `plane` of `dx` belongs to channel `c`'s task alone.
        let dxp = unsafe { out.slice(plane * pin, pin) };
        vectorized!(for_each_tap(g, |tap, (y0, y1), iy0, (x0, x1), ix0| {
            let wv = w[c * kk + tap];
            for (r, oy) in (y0..y1).enumerate() {
                let src = &dyp[oy * g.out_width + x0..][..x1 - x0];
                let dst = &mut dxp[(iy0 + r) * g.width + ix0..][..x1 - x0];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += wv * s);
            }
        }));
    });
    dx
}

fn grad_weight(batch: usize, channels: usize, g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (pin, pout, kk) = (g.in_pixels(), g.out_pixels(), g.kernel * g.kernel);
    let mut dw = vec![0f32; channels * kk];
    dw.par_chunks_mut(kk).enumerate().for_each(|(c, dwc)| {
        for b in 0..batch {
            let plane = b * channels + c;
            let xp = &x[plane * pin..(plane + 1) * pin];
            let dyp = &dy[plane * pout..(plane + 1) * pout];
            vectorized!(for_each_tap(g, |tap, (y0, y1), iy0, (x0, x1), ix0| {
                for (r, oy) in (y0..y1).enumerate() {
                    let xs = &xp[(iy0 + r) * g.width + ix0..][..x1 - x0];
                    let ds = &dyp[oy * g.out_width + x0..][..x1 - x0];
                    dwc[tap] += rows::dot(xs, ds);
                }
            }));
        }
    });
    dw
}

/// The depthwise convolution `y = dwconv(x, w)`, differentiable in both.
#[derive(Debug, Clone, Copy)]
struct Depthwise {
    padding: usize,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "unetlab-depthwise"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, channels, g) = plane(xl.dims(), wl.dims(), self.padding)?;
        let y = forward(
            batch,
            channels,
            &g,
            contiguous_f32(xs, xl)?,
            contiguous_f32(ws, wl)?,
        );
        let shape = (batch, channels, g.out_height, g.out_width);
        Ok((CpuStorage::F32(y), shape.into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = profile::span("depthwise conv", Pass::Backward);
        let dy = dy.contiguous()?;
        let (batch, channels, g) = plane(x.dims(), w.dims(), self.padding)?;
        let dx = with_f32(&dy, |dy| {
            with_f32(w, |w| grad_input(batch, channels, &g, dy, w))
        })??;
        let dw = with_f32(x, |x| {
            with_f32(&dy, |dy| grad_weight(batch, channels, &g, x, dy))
        })??;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// Whether [`depthwise`] takes these operands: f32 on the CPU, `w` of shape `[C, 1, K, K]` for
/// `x` of `C` channels, stride 1.
pub fn supported(x: &Tensor, w: &Tensor, stride: usize) -> bool {
    cpu_f32(&[x, w])
        && stride == 1
        && x.rank() == 4
        && plane(x.dims(), w.dims(), 0).is_ok()
        && w.dim(2).ok() == w.dim(3).ok()
}

/// Depthwise conv of `x` by `w` (`[C, 1, K, K]`), stride 1, `padding` on every side;
/// differentiable in both. Check [`supported`] first.
pub fn depthwise(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Depthwise { padding })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::Var;

    /// Forward against candle's grouped conv; both gradients against the composite of shifted
    /// multiply-adds (candle's own grouped-conv backward is the slow path this replaces).
    #[test]
    fn matches_candle_and_the_composite() {
        for (i, (xs, k, padding)) in [
            ([2, 3, 7, 5], 3, 1),
            ([1, 1, 4, 4], 3, 1),
            ([3, 4, 6, 9], 3, 0),
            ([1, 2, 2, 3], 3, 1),
            ([2, 5, 5, 5], 1, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let c = xs[1];
            let x = Var::from_tensor(&random(&xs, i as u64)).unwrap();
            let w = Var::from_tensor(&random(&[c, 1, k, k], 9 + i as u64)).unwrap();
            let ours = depthwise(&x, &w, padding).unwrap();
            let candle = x.conv2d(&w, padding, 1, 1, c).unwrap();
            let e = rel_err(&ours, &candle);
            assert!(e <= 1e-5, "case {i}: forward rel err {e}");
            let reference = crate::ops::depthwise(&x, &w, padding).unwrap();
            let (g1, g2) = backward_both(&ours, &reference, 70 + i as u64);
            for (name, v) in [("input", &x), ("weight", &w)] {
                let e = rel_err(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(e <= 1e-4, "case {i}: {name} gradient rel err {e}");
            }
        }
    }
}
