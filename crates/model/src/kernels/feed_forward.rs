//! A feed-forward's input projection fused with its gate, `y = gated(x·Wᵀ + b)` (GEGLU,
//! SwiGLU), on the CPU in f32: the projection's output, twice as wide as `y` and the widest
//! tensor of a transformer block, is made and used a block of rows at a time while it is in
//! cache, and never exists whole. Through the separate linear and gated ops it is written, read,
//! and in the backward written, read twice and added into candle's gradient store, at full size.
//!
//! The backward recomputes each block's projection (one more product of the forward's size)
//! instead of keeping it. Blocks go to the threads in a fixed partition, and each thread sums its
//! blocks' weight and bias gradients in order, so the gradients do not depend on scheduling.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use unetlab_graph::Unary;

use super::gated::{gate_row, gate_row_grad};
use super::gemm::{matmul, View};
use super::{bias, contiguous_f32, cpu_f32, uninit_output, with_f32, DisjointWrites};
use crate::profile::{self, Pass};

/// Elements of a block's projection (rows × `2n`): 128 KiB, a share of L2.
const BLOCK_ELEMENTS: usize = 1 << 15;
/// The largest weight (elements) fused: each block's product packs the whole weight again, which
/// pays for a proxy's (at most 65 K elements) but not for a full-size model's (640 × 5,120 in
/// MobileDiffusion, 2.2× slower in its forward), whose separate ops thread their products well.
const MAX_WEIGHT: usize = 1 << 18;

/// The sizes of one call: `rows` of `cin` in, `n` out (the projection is `2n` wide).
#[derive(Debug, Clone, Copy)]
struct Sizes {
    rows: usize,
    cin: usize,
    n: usize,
}

impl Sizes {
    fn new(x: &[usize], w: &[usize], b: &[usize]) -> Result<Sizes> {
        let (Some(&cin), &[wide, win], &[bn]) = (x.last(), w, b) else {
            bail!("feed-forward kernel: x {x:?}, w {w:?}, b {b:?}")
        };
        if win != cin || bn != wide || wide == 0 || wide % 2 != 0 || cin == 0 {
            bail!("feed-forward kernel: x {x:?}, w {w:?}, b {b:?}")
        }
        Ok(Sizes {
            rows: x.iter().product::<usize>() / cin,
            cin,
            n: wide / 2,
        })
    }

    /// Rows per block.
    fn block(&self) -> usize {
        (BLOCK_ELEMENTS / (2 * self.n)).max(1)
    }

    /// `pre = x_rows·Wᵀ + b` for the `rows` rows of `x` starting at `first`.
    fn project(&self, x: &[f32], w: &[f32], b: &[f32], first: usize, pre: &mut [f32]) {
        let r = pre.len() / (2 * self.n);
        bias::fill(pre, b, 1);
        let xb = View::rows(&x[first * self.cin..][..r * self.cin], r, self.cin);
        matmul(pre, xb, View::rows(w, 2 * self.n, self.cin).t(), true, 1);
    }
}

fn forward(s: Sizes, op: Unary, (x, w, b): (&[f32], &[f32], &[f32])) -> Vec<f32> {
    let block = s.block();
    // SAFETY: every block below writes all of its rows.
    let mut y = unsafe { uninit_output(s.rows * s.n) };
    y.par_chunks_mut(block * s.n).enumerate().for_each_init(
        || vec![0f32; block * 2 * s.n],
        |pre, (i, yb)| {
            let pre = &mut pre[..yb.len() * 2];
            s.project(x, w, b, i * block, pre);
            with_activation!(op, f => vectorized!(
                for (p, o) in pre.chunks(2 * s.n).zip(yb.chunks_mut(s.n)) {
                    gate_row(p, o, f)
                }
            ))
        },
    );
    y
}

/// `(dx, dW, db)`.
fn backward(
    s: Sizes,
    op: Unary,
    (x, w, b): (&[f32], &[f32], &[f32]),
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (block, wide) = (s.block(), 2 * s.n);
    let blocks = s.rows.div_ceil(block);
    let parts = candle_core::utils::get_num_threads().clamp(1, blocks.max(1));
    let per_part = blocks.div_ceil(parts);
    // SAFETY: every block writes all of its rows of dx.
    let mut dx = unsafe { uninit_output(s.rows * s.cin) };
    let dx_out = DisjointWrites::new(&mut dx);
    let partials: Vec<(Vec<f32>, Vec<f64>)> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let (mut dw, mut db) = (vec![0f32; wide * s.cin], vec![0f64; wide]);
            let (mut pre, mut dpre) = (vec![0f32; block * wide], vec![0f32; block * wide]);
            let first_block = part * per_part;
            for i in first_block..(first_block + per_part).min(blocks) {
                let first = i * block;
                let r = block.min(s.rows - first);
                let (pre, dpre) = (&mut pre[..r * wide], &mut dpre[..r * wide]);
                s.project(x, w, b, first, pre);
                let dyb = &dy[first * s.n..][..r * s.n];
                with_activation!(op, f => vectorized!(
                    for ((p, d), g) in pre.chunks(wide).zip(dyb.chunks(s.n)).zip(dpre.chunks_mut(wide)) {
                        gate_row_grad(p, d, g, f)
                    }
                ));
                let dpre_view = View::rows(dpre, r, wide);
                // SAFETY: block `i`'s rows of dx are written by this block alone.
                let dxb = unsafe { dx_out.slice(first * s.cin, r * s.cin) };
                matmul(dxb, dpre_view, View::rows(w, wide, s.cin), false, 1);
                let xb = View::rows(&x[first * s.cin..][..r * s.cin], r, s.cin);
                matmul(&mut dw, dpre_view.t(), xb, i > first_block, 1);
                for row in dpre.chunks(wide) {
                    db.iter_mut().zip(row).for_each(|(a, &g)| *a += g as f64);
                }
            }
            (dw, db)
        })
        .collect();
    let mut partials = partials.into_iter();
    let (mut dw, mut db) = partials
        .next()
        .unwrap_or_else(|| (vec![0f32; wide * s.cin], vec![0f64; wide]));
    for (pw, pb) in partials {
        dw.iter_mut().zip(&pw).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&pb).for_each(|(a, v)| *a += v);
    }
    (dx, dw, db.into_iter().map(|v| v as f32).collect())
}

struct FeedForwardIn(Unary);

impl CustomOp3 for FeedForwardIn {
    fn name(&self) -> &'static str {
        "unetlab-feed-forward-in"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = Sizes::new(xl.dims(), wl.dims(), bl.dims())?;
        let operands = (
            contiguous_f32(xs, xl)?,
            contiguous_f32(ws, wl)?,
            contiguous_f32(bs, bl)?,
        );
        let y = forward(s, self.0, operands);
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = s.n;
        Ok((CpuStorage::F32(y), dims.into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = profile::span("feed-forward in", Pass::Backward);
        let dy = dy.contiguous()?;
        let s = Sizes::new(x.dims(), w.dims(), b.dims())?;
        let (dx, dw, db) = with_f32(x, |xd| {
            with_f32(w, |wd| {
                with_f32(b, |bd| {
                    with_f32(&dy, |dyd| backward(s, self.0, (xd, wd, bd), dyd))
                })
            })
        })????;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, w.shape(), device)?),
            Some(Tensor::from_vec(db, b.shape(), device)?),
        ))
    }
}

/// Whether [`feed_forward_in`] takes these operands (f32 on the CPU; `w` `[2n, in]` of at most
/// `MAX_WEIGHT` elements and `b` `[2n]` for `x` `[.., in]`, with rows).
pub fn supported(x: &Tensor, w: &Tensor, b: &Tensor) -> bool {
    cpu_f32(&[x, w, b])
        && x.elem_count() > 0
        && w.elem_count() <= MAX_WEIGHT
        && Sizes::new(x.dims(), w.dims(), b.dims()).is_ok()
}

/// `gated(x·wᵀ + b, op)`: `h[.., :n]·op(h[.., n:])` for the projection `h` `[.., 2n]` of `x`;
/// differentiable in `x`, `w` and `b`.
pub fn feed_forward_in(x: &Tensor, w: &Tensor, b: &Tensor, op: Unary) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, FeedForwardIn(op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::Var;

    /// Forward and the three gradients against candle's matmul, bias add and the narrow /
    /// activation / product gate, on several blocks with a remainder, one block, one row and a
    /// half-width of 1, for each activation.
    #[test]
    fn matches_the_linear_then_gate() {
        for (i, (xs, n)) in [
            (vec![2, 300, 12], 40),
            (vec![7, 5], 3),
            (vec![1, 9], 1),
            (vec![3, 130, 32], 128),
        ]
        .into_iter()
        .enumerate()
        {
            for op in [Unary::Silu, Unary::GeluErf, Unary::Relu] {
                let seed = 10 * i as u64;
                let cin = xs[xs.len() - 1];
                let x = Var::from_tensor(&random(&xs, seed)).unwrap();
                let w = Var::from_tensor(&random(&[2 * n, cin], seed + 1)).unwrap();
                let b = Var::from_tensor(&random(&[2 * n], seed + 2)).unwrap();
                let ours = feed_forward_in(&x, &w, &b, op).unwrap();
                let h = x
                    .broadcast_matmul(&w.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap();
                let last = xs.len() - 1;
                let gate = h.narrow(last, n, n).unwrap();
                let gate = match op {
                    Unary::Silu => gate.silu().unwrap(),
                    Unary::GeluErf => gate.gelu_erf().unwrap(),
                    Unary::Relu => gate.relu().unwrap(),
                };
                let reference = h.narrow(last, 0, n).unwrap().mul(&gate).unwrap();
                let e = rel_err(&ours, &reference);
                assert!(e <= 1e-5, "{xs:?} {op:?}: forward rel err {e}");
                let (g1, g2) = backward_both(&ours, &reference, seed + 3);
                for (name, var) in [("x", &x), ("w", &w), ("b", &b)] {
                    let e = rel_err(g1.get(var).unwrap(), g2.get(var).unwrap());
                    assert!(e <= 1e-4, "{xs:?} {op:?}: {name} gradient rel err {e}");
                }
            }
        }
    }
}
