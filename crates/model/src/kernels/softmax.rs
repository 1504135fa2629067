//! Softmax over the last dimension on the CPU in f32, with an analytic backward (candle 0.11's
//! fused `softmax_last_dim` records none, and the composite version takes five ops each way):
//! `y = exp(x − max) / Σ exp(x − max)`, `dx = y · (dy − Σ dy·y)`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, cpu_f32, rows, with_f32};
use crate::profile::{self, Pass};

fn forward(x: &[f32], len: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(len)
        .for_each(|row| vectorized!(rows::softmax_in_place(row, 1.0)));
    y
}

fn backward(y: &[f32], dy: &[f32], len: usize) -> Vec<f32> {
    let mut dx = dy.to_vec();
    dx.par_chunks_mut(len)
        .zip(y.par_chunks(len))
        .for_each(|(dxr, yr)| vectorized!(rows::softmax_grad_in_place(dxr, yr)));
    dx
}

struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "unetlab-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let len = l.dims().last().copied().unwrap_or(1).max(1);
        let y = forward(contiguous_f32(s, l)?, len);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = profile::span("softmax", Pass::Backward);
        let dy = dy.contiguous()?;
        let len = y.dims().last().copied().unwrap_or(1).max(1);
        let dx = with_f32(y, |y| with_f32(&dy, |dy| backward(y, dy, len)))??;
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

/// Whether [`softmax_last`] takes `x` (f32 on the CPU).
pub fn supported(x: &Tensor) -> bool {
    cpu_f32(&[x])
}

/// Softmax of `x` over its last dimension, differentiable.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    x.contiguous()?.apply_op1(SoftmaxLast)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::{Var, D};

    #[test]
    fn matches_the_composite_softmax() {
        for (i, dims) in [vec![2, 3, 7], vec![1, 1], vec![4, 9, 33], vec![2, 1, 5, 1]]
            .into_iter()
            .enumerate()
        {
            // Large logits: the max shift must keep exp finite.
            let x = Var::from_tensor(&random(&dims, i as u64).affine(40.0, 3.0).unwrap()).unwrap();
            let ours = softmax_last(&x).unwrap();
            let shifted = x
                .broadcast_sub(&x.max_keepdim(D::Minus1).unwrap().detach())
                .unwrap();
            let e = shifted.exp().unwrap();
            let reference = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
            let err = rel_err(&ours, &reference);
            assert!(err <= 1e-5, "{dims:?}: forward rel err {err}");
            let (g1, g2) = backward_both(&ours, &reference, 50 + i as u64);
            let (a, b) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
            // A row of length 1 has a zero gradient: compare absolutely there.
            let err = if b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                == 0.0
            {
                a.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            } else {
                rel_err(a, b)
            };
            assert!(err <= 1e-4, "{dims:?}: gradient rel err {err}");
        }
    }
}
