//! The gated activation of a feed-forward, `y = x[.., :n] · act(x[.., n:])` (GEGLU, SwiGLU), on
//! the CPU in f32, one pass each way: through candle it is two narrows, the activation of a
//! strided copy and a product, and its backward pads each half's gradient to the full width and
//! adds the two.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use unetlab_graph::Unary;

use super::{contiguous_f32, cpu_f32, uninit_output, with_f32};
use crate::profile::{self, Pass};

/// Output elements per parallel task (about).
const CHUNK: usize = 1 << 14;

/// `out = x[:n]·f(x[n:])` for one row `x` of `2n`.
#[inline(always)]
pub(super) fn gate_row(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> (f32, f32)) {
    let (hidden, gate) = x.split_at(out.len());
    for ((o, &h), &g) in out.iter_mut().zip(hidden).zip(gate) {
        *o = h * f(g).0;
    }
}

/// The gradient `dx` (a row of `2n`) of [`gate_row`] at `x` for the output gradient `dy`.
#[inline(always)]
pub(super) fn gate_row_grad(x: &[f32], dy: &[f32], dx: &mut [f32], f: impl Fn(f32) -> (f32, f32)) {
    let (hidden, gate) = x.split_at(dy.len());
    let (dh, dg) = dx.split_at_mut(dy.len());
    for (((dh, dg), (&h, &g)), &d) in dh.iter_mut().zip(dg).zip(hidden.iter().zip(gate)).zip(dy) {
        let (a, da) = f(g);
        *dh = d * a;
        *dg = d * h * da;
    }
}

/// `y` from `x` (rows of `2n`), or with `dy` the input gradient `dx`, for the activation `f`
/// (value and derivative).
fn run(x: &[f32], n: usize, dy: Option<&[f32]>, f: impl Fn(f32) -> (f32, f32) + Sync) -> Vec<f32> {
    let rows_per_task = (CHUNK / n.max(1)).max(1);
    let out_row = if dy.is_some() { 2 * n } else { n };
    // SAFETY: every row below writes each of its elements.
    let mut out = unsafe { uninit_output(x.len() / 2 * out_row / n.max(1)) };
    out.par_chunks_mut(rows_per_task * out_row)
        .enumerate()
        .for_each(|(t, task)| {
            let first = t * rows_per_task;
            vectorized!(for (i, o) in task.chunks_mut(out_row).enumerate() {
                let row = &x[(first + i) * 2 * n..][..2 * n];
                match dy {
                    None => gate_row(row, o, &f),
                    Some(dy) => gate_row_grad(row, &dy[(first + i) * n..][..n], o, &f),
                }
            })
        });
    out
}

fn map(op: Unary, x: &[f32], n: usize, dy: Option<&[f32]>) -> Vec<f32> {
    with_activation!(op, f => run(x, n, dy, f))
}

struct Gated(Unary);

impl CustomOp1 for Gated {
    fn name(&self) -> &'static str {
        "unetlab-gated"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = l.dims().to_vec();
        let last = dims.last_mut().expect("checked by gated()");
        let n = *last / 2;
        *last = n;
        Ok((
            CpuStorage::F32(map(self.0, contiguous_f32(s, l)?, n, None)),
            dims.into(),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = profile::span("activation", Pass::Backward);
        let dy = dy.contiguous()?;
        let n = x.dims().last().copied().unwrap_or(0) / 2;
        let dx = with_f32(x, |x| with_f32(&dy, |dy| map(self.0, x, n, Some(dy))))??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Whether [`gated`] takes `x` (f32 on the CPU, an even and non-zero last dimension).
pub fn supported(x: &Tensor) -> bool {
    cpu_f32(&[x]) && x.dims().last().is_some_and(|&d| d > 0 && d % 2 == 0) && x.elem_count() > 0
}

/// `x[.., :n] · op(x[.., n:])` for `x` `[.., 2n]`, differentiable.
pub fn gated(x: &Tensor, op: Unary) -> Result<Tensor> {
    if !supported(x) {
        bail!(
            "gated kernel: want f32 on the CPU with an even last dimension, got {:?}",
            x.dims()
        )
    }
    x.contiguous()?.apply_op1(Gated(op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::Var;

    /// Against candle's narrow, activation and product, on rows shorter and longer than a task,
    /// one row, and a half-width of 1.
    #[test]
    fn matches_narrow_activation_product() {
        for (i, dims) in [vec![3, 5, 14], vec![1, 2], vec![2, 700, 48], vec![4, 1, 6]]
            .into_iter()
            .enumerate()
        {
            for op in [Unary::Silu, Unary::GeluErf, Unary::Relu] {
                let x =
                    Var::from_tensor(&random(&dims, i as u64).affine(3.0, 0.1).unwrap()).unwrap();
                let ours = gated(&x, op).unwrap();
                let last = dims.len() - 1;
                let n = dims[last] / 2;
                let gate = x.narrow(last, n, n).unwrap();
                let gate = match op {
                    Unary::Silu => gate.silu().unwrap(),
                    Unary::GeluErf => gate.gelu_erf().unwrap(),
                    Unary::Relu => gate.relu().unwrap(),
                };
                let reference = x.narrow(last, 0, n).unwrap().mul(&gate).unwrap();
                let e = rel_err(&ours, &reference);
                assert!(e <= 1e-5, "{dims:?} {op:?}: forward rel err {e}");
                let (g1, g2) = backward_both(&ours, &reference, 10 + i as u64);
                let e = rel_err(g1.get(&x).unwrap(), g2.get(&x).unwrap());
                assert!(e <= 1e-4, "{dims:?} {op:?}: gradient rel err {e}");
            }
        }
    }
}
