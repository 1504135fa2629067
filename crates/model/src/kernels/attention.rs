//! Multi-head attention on token-major tensors, `O_h = φ(s·Q_h·K_hᵀ)·V_h` for every head `h` of
//! q `[B, n, H·d]`, k and v `[B, m, H·d]` (φ: row softmax, or ReLU; `s` the score scale), on the
//! CPU in f32. Each (image, head) pair is a task that reads its head's columns in place and
//! writes its own columns of the output, so no reshape, permute or copy splits the heads (through
//! candle each of those is a node whose gradient is a further copy); queries go in blocks of
//! rows, so the score matrix is never whole in memory, and the backward recomputes each block's
//! scores instead of keeping them (FlashAttention's trade). On CPUs with AVX-512, heads of at
//! most 16 go through `narrow`'s direct loops instead of matrix products.
//!
//! Per block, with `S = Q·Kᵀ` and `P = φ(s·S)`: `dV += Pᵀ·dO`, `dP = dO·Vᵀ`,
//! `dS = s·P ⊙ (dP − rowsum(dP ⊙ P))` (softmax) or `s·dP ⊙ [S > 0]` (ReLU, `P = s·relu(S)`),
//! `dQ = dS·K`, `dK += dSᵀ·Q`.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use unetlab_graph::AttentionKernel;

use super::gemm::{matmul, View};
use super::{contiguous_f32, cpu_f32, rows, uninit_output, with_f32, DisjointWrites};
use crate::profile::{self, Pass};

#[cfg(target_arch = "x86_64")]
mod narrow;

/// Query rows per block.
const BLOCK: usize = 64;

/// The sizes of one call: `batch × heads` pairs, `n` queries, `m` keys, head width `d`.
#[derive(Debug, Clone, Copy)]
struct Heads {
    batch: usize,
    heads: usize,
    n: usize,
    m: usize,
    d: usize,
}

impl Heads {
    fn new(q: &[usize], k: &[usize], v: &[usize], heads: usize) -> Result<Heads> {
        let (&[batch, n, width], &[kb, m, kw]) = (q, k) else {
            bail!("attention kernel: q {q:?}, k {k:?}: want [batch, tokens, width]")
        };
        // No keys or an empty head has no attention to compute (and no rows to split).
        if heads == 0
            || width % heads != 0
            || width == 0
            || m == 0
            || kb != batch
            || kw != width
            || v != k
        {
            bail!("attention kernel: q {q:?}, k {k:?}, v {v:?}, {heads} heads")
        }
        Ok(Heads {
            batch,
            heads,
            n,
            m,
            d: width / heads,
        })
    }

    fn width(&self) -> usize {
        self.heads * self.d
    }

    fn pairs(&self) -> usize {
        self.batch * self.heads
    }

    /// Where pair `p`'s head starts in a tensor of `tokens` rows.
    fn offset(&self, p: usize, tokens: usize) -> usize {
        (p / self.heads) * tokens * self.width() + (p % self.heads) * self.d
    }

    /// Pair `p`'s head of a tensor of `tokens` rows, as `tokens × d`.
    fn head<'a>(&self, t: &'a [f32], p: usize, tokens: usize) -> View<'a> {
        View::strided(&t[self.offset(p, tokens)..], tokens, self.d, self.width())
    }

    /// Writes `src` (`rows × d`) into pair `p`'s head of `dst` (a tensor of `tokens` rows) from
    /// row `start` on.
    ///
    /// # Safety
    /// Only pair `p`'s task writes pair `p`'s head.
    unsafe fn scatter(
        &self,
        dst: &DisjointWrites,
        p: usize,
        tokens: usize,
        start: usize,
        src: &[f32],
    ) {
        let base = self.offset(p, tokens) + start * self.width();
        for (r, row) in src.chunks(self.d).enumerate() {
            // SAFETY: the caller's contract (this head's rows are written by this task only).
            unsafe { dst.slice(base + r * self.width(), self.d) }.copy_from_slice(row);
        }
    }
}

/// Raw scores of one block of rows to weights, in place: softmax or ReLU of `scale·S` per row.
fn weights(kernel: AttentionKernel, scale: f32, s: &mut [f32], m: usize) {
    vectorized!(for row in s.chunks_mut(m) {
        match kernel {
            AttentionKernel::Softmax => rows::softmax_in_place(row, scale),
            AttentionKernel::Relu => row.iter_mut().for_each(|v| *v = (scale * *v).max(0.0)),
        }
    })
}

fn forward(
    h: Heads,
    kernel: AttentionKernel,
    scale: f32,
    qkv: (&[f32], &[f32], &[f32]),
) -> Vec<f32> {
    // SAFETY: both paths write every row of every head (each (image, head) task its own).
    let mut o = unsafe { uninit_output(qkv.0.len()) };
    let out = DisjointWrites::new(&mut o);
    #[cfg(target_arch = "x86_64")]
    if h.d <= narrow::MAX_WIDTH && narrow::available() {
        // SAFETY: the CPU has what the narrow path needs (checked just above).
        unsafe { narrow::forward(h, kernel, scale, qkv, &out) };
        return o;
    }
    blocked_forward(h, kernel, scale, qkv, &out);
    o
}

/// The gradients of q, k and v as parallel tasks write them.
struct Grads {
    dq: DisjointWrites,
    dk: DisjointWrites,
    dv: DisjointWrites,
}

/// `(dq, dk, dv)`.
fn backward(
    h: Heads,
    kernel: AttentionKernel,
    scale: f32,
    qkv: (&[f32], &[f32], &[f32]),
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (q, k, v) = qkv;
    // SAFETY: both paths write every row of every head of each (each (image, head) task its
    // own).
    let (mut dq, mut dk, mut dv) = unsafe {
        (
            uninit_output(q.len()),
            uninit_output(k.len()),
            uninit_output(v.len()),
        )
    };
    let grads = Grads {
        dq: DisjointWrites::new(&mut dq),
        dk: DisjointWrites::new(&mut dk),
        dv: DisjointWrites::new(&mut dv),
    };
    #[cfg(target_arch = "x86_64")]
    if h.d <= narrow::MAX_WIDTH && narrow::available() {
        // SAFETY: the CPU has what the narrow path needs (checked just above).
        unsafe { narrow::backward(h, kernel, scale, qkv, dout, &grads) };
        return (dq, dk, dv);
    }
    blocked_backward(h, kernel, scale, qkv, dout, &grads);
    (dq, dk, dv)
}

/// The forward in blocks of queries through matrix products.
fn blocked_forward(
    h: Heads,
    kernel: AttentionKernel,
    scale: f32,
    (q, k, v): (&[f32], &[f32], &[f32]),
    out: &DisjointWrites,
) {
    (0..h.pairs()).into_par_iter().for_each(|p| {
        let (qp, kp, vp) = (h.head(q, p, h.n), h.head(k, p, h.m), h.head(v, p, h.m));
        let block = BLOCK.min(h.n);
        let (mut s, mut ob) = (vec![0f32; block * h.m], vec![0f32; block * h.d]);
        for start in (0..h.n).step_by(BLOCK) {
            let rows = BLOCK.min(h.n - start);
            let (s, ob) = (&mut s[..rows * h.m], &mut ob[..rows * h.d]);
            matmul(s, qp.row_block(start, rows), kp.t(), false, 1);
            weights(kernel, scale, s, h.m);
            matmul(ob, View::rows(s, rows, h.m), vp, false, 1);
            // SAFETY: pair `p`'s head is written by this task alone.
            unsafe { h.scatter(out, p, h.n, start, ob) };
        }
    });
}

/// The backward in blocks of queries through matrix products.
fn blocked_backward(
    h: Heads,
    kernel: AttentionKernel,
    scale: f32,
    (q, k, v): (&[f32], &[f32], &[f32]),
    dout: &[f32],
    grads: &Grads,
) {
    (0..h.pairs()).into_par_iter().for_each(|p| {
        let (qp, kp, vp) = (h.head(q, p, h.n), h.head(k, p, h.m), h.head(v, p, h.m));
        let dop = h.head(dout, p, h.n);
        let block = BLOCK.min(h.n);
        let (mut s, mut w, mut ds) = (
            vec![0f32; block * h.m],
            vec![0f32; block * h.m],
            vec![0f32; block * h.m],
        );
        let mut dqb = vec![0f32; block * h.d];
        let (mut dkp, mut dvp) = (vec![0f32; h.m * h.d], vec![0f32; h.m * h.d]);
        for (b, start) in (0..h.n).step_by(BLOCK).enumerate() {
            let rows = BLOCK.min(h.n - start);
            let (s, w, ds) = (
                &mut s[..rows * h.m],
                &mut w[..rows * h.m],
                &mut ds[..rows * h.m],
            );
            let (qb, dob) = (qp.row_block(start, rows), dop.row_block(start, rows));
            matmul(s, qb, kp.t(), false, 1);
            w.copy_from_slice(s);
            weights(kernel, scale, w, h.m);
            // dV += Pᵀ·dO
            matmul(&mut dvp, View::rows(w, rows, h.m).t(), dob, b > 0, 1);
            // dP = dO·Vᵀ, then dS in place.
            matmul(ds, dob, vp.t(), false, 1);
            vectorized!(match kernel {
                AttentionKernel::Softmax => {
                    for (dsr, wr) in ds.chunks_mut(h.m).zip(w.chunks(h.m)) {
                        rows::softmax_grad_in_place(dsr, wr);
                        dsr.iter_mut().for_each(|g| *g *= scale);
                    }
                }
                AttentionKernel::Relu => {
                    for (g, &sv) in ds.iter_mut().zip(s.iter()) {
                        *g = if sv > 0.0 { *g * scale } else { 0.0 };
                    }
                }
            });
            let dsb = View::rows(ds, rows, h.m);
            // dQ = dS·K, dK += dSᵀ·Q
            let dqb = &mut dqb[..rows * h.d];
            matmul(dqb, dsb, kp, false, 1);
            // SAFETY: pair `p`'s head is written by this task alone.
            unsafe { h.scatter(&grads.dq, p, h.n, start, dqb) };
            matmul(&mut dkp, dsb.t(), qb, b > 0, 1);
        }
        // SAFETY: as above.
        unsafe {
            h.scatter(&grads.dk, p, h.m, 0, &dkp);
            h.scatter(&grads.dv, p, h.m, 0, &dvp);
        }
    });
}

struct Attend {
    heads: usize,
    scale: f32,
    kernel: AttentionKernel,
}

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
        let h = Heads::new(ql.dims(), kl.dims(), vl.dims(), self.heads)?;
        let (q, k, v) = (
            contiguous_f32(qs, ql)?,
            contiguous_f32(ks, kl)?,
            contiguous_f32(vs, vl)?,
        );
        let o = forward(h, self.kernel, self.scale, (q, k, v));
        Ok((CpuStorage::F32(o), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = profile::span("attention core", Pass::Backward);
        let dout = dout.contiguous()?;
        let h = Heads::new(q.dims(), k.dims(), v.dims(), self.heads)?;
        let (dq, dk, dv) = with_f32(q, |qd| {
            with_f32(k, |kd| {
                with_f32(v, |vd| {
                    with_f32(&dout, |dod| {
                        backward(h, self.kernel, self.scale, (qd, kd, vd), dod)
                    })
                })
            })
        })????;
        let device = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), device)?),
            Some(Tensor::from_vec(dk, k.shape(), device)?),
            Some(Tensor::from_vec(dv, v.shape(), device)?),
        ))
    }
}

/// Whether [`attend_heads`] takes these operands (f32 on the CPU, `[B, tokens, width]` with
/// `width` a multiple of `heads`, k and v alike).
pub fn supported(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> bool {
    cpu_f32(&[q, k, v]) && Heads::new(q.dims(), k.dims(), v.dims(), heads).is_ok()
}

/// Multi-head attention, `φ(scale·q_h·k_hᵀ)·v_h` for each of `heads` heads of q `[B, n, H·d]`,
/// k and v `[B, m, H·d]` → `[B, n, H·d]` (φ: softmax or ReLU, `scale > 0`); differentiable in
/// all three.
pub fn attend_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    if scale <= 0.0 {
        bail!("attention kernel: the score scale must be positive, got {scale}")
    }
    let op = Attend {
        heads,
        scale: scale as f32,
        kernel,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::{Var, D};

    /// The heads split by reshape and permute, scaled scores, candle's matmuls and composite
    /// softmax or ReLU: the path the kernel replaces.
    fn composite(
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        heads: usize,
        scale: f64,
        kernel: AttentionKernel,
    ) -> Tensor {
        let split = |t: &Tensor| {
            let (b, n, w) = t.dims3().unwrap();
            t.reshape((b, n, heads, w / heads))
                .unwrap()
                .permute((0, 2, 1, 3))
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (qh, kh, vh) = (split(q), split(k), split(v));
        let s = qh
            .matmul(&kh.transpose(2, 3).unwrap().contiguous().unwrap())
            .unwrap()
            .affine(scale, 0.0)
            .unwrap();
        let w = match kernel {
            AttentionKernel::Softmax => {
                let e = s
                    .broadcast_sub(&s.max_keepdim(D::Minus1).unwrap().detach())
                    .unwrap()
                    .exp()
                    .unwrap();
                e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
            }
            AttentionKernel::Relu => s.relu().unwrap(),
        };
        let o = w.matmul(&vh).unwrap();
        let (b, n, w) = q.dims3().unwrap();
        o.permute((0, 2, 1, 3)).unwrap().reshape((b, n, w)).unwrap()
    }

    /// Forward and all three gradients against the composite, on more query rows than a block
    /// (a remainder block), one key, one head, one query, odd head widths, key counts that are
    /// not a multiple of the narrow path's vectors, heads for both paths (narrow and blocked),
    /// and shared K/V (one tensor as both k and v, as `shared_kv` passes it).
    #[test]
    fn matches_the_composite_attention() {
        for kernel in [AttentionKernel::Softmax, AttentionKernel::Relu] {
            for (i, &(batch, heads, n, m, d, shared)) in [
                (2, 3, 70, 77, 8, false),
                (1, 1, 1, 1, 4, false),
                (3, 2, 130, 16, 5, false),
                (1, 4, 64, 64, 16, true),
                (2, 2, 70, 33, 24, false),
                (1, 1, 3, 5, 17, true),
                (1, 3, 1, 1, 32, false),
            ]
            .iter()
            .enumerate()
            {
                let seed = 10 * i as u64;
                let q = Var::from_tensor(&random(&[batch, n, heads * d], seed)).unwrap();
                let k = Var::from_tensor(&random(&[batch, m, heads * d], seed + 1)).unwrap();
                let v = if shared {
                    k.clone()
                } else {
                    Var::from_tensor(&random(&[batch, m, heads * d], seed + 2)).unwrap()
                };
                let scale = 0.7 / (d as f64).sqrt();
                let ours = attend_heads(&q, &k, &v, heads, scale, kernel).unwrap();
                let reference = composite((&q, &k, &v), heads, scale, kernel);
                let e = rel_err(&ours, &reference);
                assert!(e <= 1e-5, "{kernel:?} case {i}: forward rel err {e}");
                let (g1, g2) = backward_both(&ours, &reference, seed + 3);
                for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
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
