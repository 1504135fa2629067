//! The attention core `O = φ(Q·Kᵀ)·V` (φ: row softmax, or ReLU) on the CPU in f32, one
//! (batch, head) pair per task and blocks of query rows within it, so the score matrix is never
//! whole in memory; the backward recomputes each block's scores instead of keeping them
//! (FlashAttention's trade). Through candle, attention allocates and keeps the full score and
//! weight maps, and its backward adds transposed copies of each.
//!
//! Per block, with `S = Q·Kᵀ` and `P = φ(S)`: `dV += Pᵀ·dO`, `dP = dO·Vᵀ`,
//! `dS = P ⊙ (dP − rowsum(dP ⊙ P))` (softmax) or `dP ⊙ [S > 0]` (ReLU), `dQ = dS·K`,
//! `dKᵀ += Qᵀ·dS`.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use unetlab_graph::AttentionKernel;

use super::gemm::{matmul, View};
use super::{contiguous_f32, cpu_f32, rows, with_f32};
use crate::profile::{self, Pass};

/// Query rows per block.
const BLOCK: usize = 64;

/// `(pairs, n, m, d)` from `q` `[..., n, d]`, `kt` `[..., d, m]`, `v` `[..., m, d]`.
fn sizes(q: &[usize], kt: &[usize], v: &[usize]) -> Result<(usize, usize, usize, usize)> {
    let r = q.len();
    if r < 2
        || kt.len() != r
        || v.len() != r
        || q[..r - 2] != kt[..r - 2]
        || q[..r - 2] != v[..r - 2]
    {
        bail!("attention kernel: q {q:?}, kᵀ {kt:?}, v {v:?}")
    }
    let (n, d, m) = (q[r - 2], q[r - 1], kt[r - 1]);
    if kt[r - 2] != d || v[r - 2] != m || v[r - 1] != d {
        bail!("attention kernel: q {q:?}, kᵀ {kt:?}, v {v:?}")
    }
    Ok((q[..r - 2].iter().product(), n, m, d))
}

/// Scores of one block of rows to weights, in place: softmax or ReLU per row of `m`.
fn weights(kernel: AttentionKernel, s: &mut [f32], m: usize) {
    vectorized!({
        for row in s.chunks_mut(m) {
            match kernel {
                AttentionKernel::Softmax => rows::softmax_in_place(row),
                AttentionKernel::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
            }
        }
    })
}

fn forward(
    kernel: AttentionKernel,
    (n, m, d): (usize, usize, usize),
    q: &[f32],
    kt: &[f32],
    v: &[f32],
) -> Vec<f32> {
    let mut o = vec![0f32; q.len()];
    o.par_chunks_mut(n * d).enumerate().for_each(|(p, op)| {
        let (qp, ktp, vp) = (
            &q[p * n * d..][..n * d],
            &kt[p * d * m..][..d * m],
            &v[p * m * d..][..m * d],
        );
        let mut s = vec![0f32; BLOCK.min(n) * m];
        for start in (0..n).step_by(BLOCK) {
            let rows = BLOCK.min(n - start);
            let s = &mut s[..rows * m];
            let qb = View::rows(&qp[start * d..][..rows * d], rows, d);
            matmul(s, qb, View::rows(ktp, d, m), false, 1);
            weights(kernel, s, m);
            matmul(
                &mut op[start * d..][..rows * d],
                View::rows(s, rows, m),
                View::rows(vp, m, d),
                false,
                1,
            );
        }
    });
    o
}

/// `(dq, dkt, dv)`.
fn backward(
    kernel: AttentionKernel,
    (n, m, d): (usize, usize, usize),
    (q, kt, v): (&[f32], &[f32], &[f32]),
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut dq, mut dkt, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; kt.len()],
        vec![0f32; v.len()],
    );
    dq.par_chunks_mut(n * d)
        .zip(dkt.par_chunks_mut(d * m))
        .zip(dv.par_chunks_mut(m * d))
        .enumerate()
        .for_each(|(p, ((dqp, dktp), dvp))| {
            let (qp, ktp, vp) = (
                &q[p * n * d..][..n * d],
                &kt[p * d * m..][..d * m],
                &v[p * m * d..][..m * d],
            );
            let dop = &dout[p * n * d..][..n * d];
            let block = BLOCK.min(n);
            let (mut s, mut w, mut ds) = (
                vec![0f32; block * m],
                vec![0f32; block * m],
                vec![0f32; block * m],
            );
            for (b, start) in (0..n).step_by(BLOCK).enumerate() {
                let rows = BLOCK.min(n - start);
                let (s, w, ds) = (&mut s[..rows * m], &mut w[..rows * m], &mut ds[..rows * m]);
                let qb = View::rows(&qp[start * d..][..rows * d], rows, d);
                let dob = View::rows(&dop[start * d..][..rows * d], rows, d);
                matmul(s, qb, View::rows(ktp, d, m), false, 1);
                w.copy_from_slice(s);
                weights(kernel, w, m);
                // dV += Pᵀ·dO
                matmul(dvp, View::rows(w, rows, m).t(), dob, b > 0, 1);
                // dP = dO·Vᵀ, then dS in place.
                matmul(ds, dob, View::rows(vp, m, d).t(), false, 1);
                vectorized!(match kernel {
                    AttentionKernel::Softmax => {
                        for (dsr, wr) in ds.chunks_mut(m).zip(w.chunks(m)) {
                            rows::softmax_grad_in_place(dsr, wr);
                        }
                    }
                    AttentionKernel::Relu => {
                        for (g, &sv) in ds.iter_mut().zip(s.iter()) {
                            if sv <= 0.0 {
                                *g = 0.0;
                            }
                        }
                    }
                });
                let dsb = View::rows(ds, rows, m);
                // dQ = dS·K (K = (Kᵀ)ᵀ), dKᵀ += Qᵀ·dS
                matmul(
                    &mut dqp[start * d..][..rows * d],
                    dsb,
                    View::rows(ktp, d, m).t(),
                    false,
                    1,
                );
                matmul(dktp, qb.t(), dsb, b > 0, 1);
            }
        });
    (dq, dkt, dv)
}

struct Attend(AttentionKernel);

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "unetlab-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, n, m, d) = sizes(ql.dims(), kl.dims(), vl.dims())?;
        let (q, kt, v) = (
            contiguous_f32(qs, ql)?,
            contiguous_f32(ks, kl)?,
            contiguous_f32(vs, vl)?,
        );
        Ok((
            CpuStorage::F32(forward(self.0, (n, m, d), q, kt, v)),
            ql.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        kt: &Tensor,
        v: &Tensor,
        _o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = profile::span("attention core", Pass::Backward);
        let dout = dout.contiguous()?;
        let (_, n, m, d) = sizes(q.dims(), kt.dims(), v.dims())?;
        let (dq, dkt, dv) = with_f32(q, |qd| {
            with_f32(kt, |ktd| {
                with_f32(v, |vd| {
                    with_f32(&dout, |dod| backward(self.0, (n, m, d), (qd, ktd, vd), dod))
                })
            })
        })????;
        let device = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), device)?),
            Some(Tensor::from_vec(dkt, kt.shape(), device)?),
            Some(Tensor::from_vec(dv, v.shape(), device)?),
        ))
    }
}

/// Whether [`attend`] takes these operands (f32 on the CPU).
pub fn supported(q: &Tensor, kt: &Tensor, v: &Tensor) -> bool {
    cpu_f32(&[q, kt, v]) && sizes(q.dims(), kt.dims(), v.dims()).is_ok()
}

/// `φ(q·kt)·v` over the last two dimensions (`q` `[..., n, d]`, `kt` `[..., d, m]`, `v`
/// `[..., m, d]`), φ the row softmax or ReLU; differentiable in all three.
pub fn attend(q: &Tensor, kt: &Tensor, v: &Tensor, kernel: AttentionKernel) -> Result<Tensor> {
    q.contiguous()?
        .apply_op3(&kt.contiguous()?, &v.contiguous()?, Attend(kernel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::Var;

    /// Forward and all three gradients against candle's matmuls and composite softmax / ReLU, on
    /// more query rows than a block (a remainder block), one key, one head, one row; and with Q
    /// and V views into permuted tensors, as the UNet passes them.
    #[test]
    fn matches_the_composite_attention() {
        for kernel in [AttentionKernel::Softmax, AttentionKernel::Relu] {
            for (i, (pairs, n, m, d)) in [
                (vec![2, 3], 70, 77, 8),
                (vec![1, 1], 1, 1, 4),
                (vec![3, 2], 130, 16, 5),
                (vec![1, 4], 64, 64, 16),
            ]
            .into_iter()
            .enumerate()
            {
                let dims = |a: usize, b: usize| [pairs.clone(), vec![a, b]].concat();
                // Q as a view of a [batch, n, heads, d] tensor, as the UNet passes it.
                let q_src = random(&[pairs[0], n, pairs[1], d], i as u64);
                let q_src = Var::from_tensor(&q_src.affine(2.0, 0.0).unwrap()).unwrap();
                let kt = Var::from_tensor(&random(&dims(d, m), 10 + i as u64)).unwrap();
                let v = Var::from_tensor(&random(&dims(m, d), 20 + i as u64)).unwrap();
                let q = q_src.transpose(1, 2).unwrap();
                assert!(!q.is_contiguous() || pairs[1] == 1 || n == 1);
                let ours = attend(&q, &kt, &v, kernel).unwrap();
                let s = q.contiguous().unwrap().matmul(&kt).unwrap();
                let w = match kernel {
                    AttentionKernel::Softmax => {
                        let e = s
                            .broadcast_sub(&s.max_keepdim(candle_core::D::Minus1).unwrap().detach())
                            .unwrap()
                            .exp()
                            .unwrap();
                        e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1).unwrap())
                            .unwrap()
                    }
                    AttentionKernel::Relu => s.relu().unwrap(),
                };
                let reference = w.matmul(&v).unwrap();
                let e = rel_err(&ours, &reference);
                assert!(e <= 1e-5, "{kernel:?} case {i}: forward rel err {e}");
                let (g1, g2) = backward_both(&ours, &reference, 30 + i as u64);
                for (name, var) in [("q", &q_src), ("kᵀ", &kt), ("v", &v)] {
                    let e = rel_err(g1.get(var).unwrap(), g2.get(var).unwrap());
                    assert!(
                        e <= 1e-4,
                        "{kernel:?} case {i}: {name} gradient rel err {e}"
                    );
                }
            }
        }
    }
}
