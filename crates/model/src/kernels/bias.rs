//! A per-channel bias on the CPU in f32: its gradient (the sum of the output gradient over every
//! dimension but the channels; candle's broadcast add reduces it with a strided, single-threaded
//! sum), and adding it where no kernel takes it into its own output (the depthwise conv).
//! Tensors are seen as `outer × C × inner` (a conv's `[B, C, H, W]` has `inner = H·W`, a
//! linear's `[rows, C]` has `inner = 1`).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, cpu_f32, rows, uninit_output, with_f32};
use crate::profile::{self, Pass};

/// Whether `b` can be a fused bias of a product with weight `w` (`[out, ...]`): none, or an f32
/// CPU vector of `out` elements.
pub(super) fn fits(b: Option<&Tensor>, w: &Tensor) -> bool {
    b.is_none_or(|b| cpu_f32(&[b]) && b.rank() == 1 && w.dim(0).ok() == Some(b.elem_count()))
}

/// `b` written over every `outer × C × inner` block of `y`, to start a product that adds to it.
pub(super) fn fill(y: &mut [f32], b: &[f32], inner: usize) {
    if b.is_empty() || inner == 0 {
        return;
    }
    if inner == 1 {
        y.chunks_mut(b.len()).for_each(|row| row.copy_from_slice(b));
        return;
    }
    for block in y.chunks_mut(b.len() * inner) {
        for (plane, &bv) in block.chunks_mut(inner).zip(b) {
            plane.fill(bv);
        }
    }
}

/// `Σ dy` over every dimension but the channels (`dy` as `outer × channels × inner`), accumulated
/// in f64 per thread.
pub(super) fn channel_sums(dy: &[f32], channels: usize, inner: usize) -> Vec<f32> {
    let block = (channels * inner).max(1);
    let outer = dy.len() / block;
    let threads = candle_core::utils::get_num_threads().max(1);
    let per_task = outer.div_ceil(threads).max(1);
    let partials: Vec<Vec<f64>> = dy
        .par_chunks(block * per_task)
        .map(|task| {
            let mut acc = vec![0f64; channels];
            vectorized!(for blk in task.chunks(block) {
                if inner == 1 {
                    acc.iter_mut().zip(blk).for_each(|(a, &v)| *a += v as f64);
                } else {
                    for (a, plane) in acc.iter_mut().zip(blk.chunks(inner)) {
                        *a += rows::sum(plane) as f64;
                    }
                }
            });
            acc
        })
        .collect();
    let mut sums = vec![0f64; channels];
    for p in partials {
        sums.iter_mut().zip(p).for_each(|(s, v)| *s += v);
    }
    sums.into_iter().map(|s| s as f32).collect()
}

/// `y = x + b` along dimension `dim` of `x`.
struct AddBias {
    dim: usize,
}

impl AddBias {
    /// `(C, inner)` for `x`'s dims.
    fn split(&self, dims: &[usize]) -> (usize, usize) {
        (dims[self.dim], dims[self.dim + 1..].iter().product())
    }
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "unetlab-add-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (contiguous_f32(xs, xl)?, contiguous_f32(bs, bl)?);
        let (c, inner) = self.split(xl.dims());
        // SAFETY: every block below writes each of its elements.
        let mut y = unsafe { uninit_output(x.len()) };
        let per_block = |(yb, xb): (&mut [f32], &[f32])| {
            for ((yr, xr), &bv) in yb.chunks_mut(inner).zip(xb.chunks(inner)).zip(b) {
                yr.iter_mut().zip(xr).for_each(|(y, &x)| *y = x + bv);
            }
        };
        if y.len() > 1 << 15 {
            y.par_chunks_mut(c * inner)
                .zip(x.par_chunks(c * inner))
                .for_each(per_block);
        } else {
            y.chunks_mut(c * inner)
                .zip(x.chunks(c * inner))
                .for_each(per_block);
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = profile::span("bias add", Pass::Backward);
        let dy = dy.contiguous()?;
        let (c, inner) = self.split(x.dims());
        let db = with_f32(&dy, |dy| channel_sums(dy, c, inner))?;
        Ok((Some(dy), Some(Tensor::from_vec(db, b.shape(), b.device())?)))
    }
}

/// Whether [`add_bias`] takes these operands: f32 on the CPU, a 1-D bias as long as `x`'s
/// dimension `dim`.
pub fn supported(x: &Tensor, b: &Tensor, dim: usize) -> bool {
    cpu_f32(&[x, b]) && b.rank() == 1 && dim < x.rank() && x.dim(dim).ok() == Some(b.elem_count())
}

/// `x + b` with `b` broadcast along every dimension but `dim`; differentiable in both.
pub fn add_bias(x: &Tensor, b: &Tensor, dim: usize) -> Result<Tensor> {
    if x.elem_count() == 0 {
        bail!("add_bias: empty input {:?}", x.dims());
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, AddBias { dim })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::Var;

    #[test]
    fn matches_broadcast_add() {
        for (i, (dims, dim)) in [
            (vec![2, 5, 3, 7], 1),
            (vec![9, 6], 1),
            (vec![1, 3, 1, 1], 1),
            (vec![2, 4, 33], 2),
            (vec![4, 64, 16, 16], 1),
        ]
        .into_iter()
        .enumerate()
        {
            let x = Var::from_tensor(&random(&dims, i as u64)).unwrap();
            let b = Var::from_tensor(&random(&[dims[dim]], 10 + i as u64)).unwrap();
            let ours = add_bias(&x, &b, dim).unwrap();
            let mut shape = vec![1; dims.len()];
            shape[dim] = dims[dim];
            let reference = x.broadcast_add(&b.reshape(shape).unwrap()).unwrap();
            assert!(rel_err(&ours, &reference) <= 1e-6, "{dims:?}");
            let (g1, g2) = backward_both(&ours, &reference, 20 + i as u64);
            for (name, v) in [("input", &x), ("bias", &b)] {
                let e = rel_err(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(e <= 1e-5, "{dims:?}: {name} gradient rel err {e}");
            }
        }
    }
}
