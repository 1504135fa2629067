//! Attention for narrow heads (a head width of at most [`MAX_WIDTH`], the proxies' 8) on CPUs
//! with AVX-512, in direct loops instead of matrix products: with `d` that small every product of
//! the blocked path has an inner or outer size of `d`, which the GEMM kernels pad and pack for
//! little arithmetic.
//!
//! Queries go in blocks of [`LANES`], one per vector lane, so that the scores, weights, output,
//! `dP`, `dS` and `dQ` are all lane-wise: a key's scores for the block are `d` multiply-adds of
//! the block's transposed queries by the key's (broadcast) elements; the softmax's max and sum
//! run down the keys; the output is `d` vectors accumulated over the keys. `dK` and `dV` are
//! sums over the queries instead, so each 16 × 16 tile of `P` and `dS` is transposed in
//! registers and they accumulate with one lane per key. Heads are padded with zeros to a width
//! of 8 or 16 (a constant the loops unroll for); the padding adds zero to every product and its
//! columns are never written. The loops are written with AVX-512 intrinsics: left to the
//! compiler, they vectorise across the head with gathers and shuffles.

use std::arch::x86_64::*;

use rayon::prelude::*;
use unetlab_graph::AttentionKernel;

use super::{Grads, Heads};
use crate::kernels::activation::fast_exp;
use crate::kernels::DisjointWrites;

/// The widest head this path takes.
pub(super) const MAX_WIDTH: usize = 16;

/// Queries per block (one per lane of an AVX-512 vector of f32).
const LANES: usize = 16;

/// One value per query of a block.
type Lanes = [f32; LANES];

/// Whether this CPU runs this path.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Rows of pair `p`'s head of `src` (a tensor of `tokens` rows), zero-padded to width `D`, into
/// `out`.
fn head_rows<const D: usize>(
    h: &Heads,
    src: &[f32],
    p: usize,
    tokens: usize,
    out: &mut Vec<[f32; D]>,
) {
    let base = h.offset(p, tokens);
    out.clear();
    let row = |j: usize| &src[base + j * h.width()..][..h.d];
    if h.d == D {
        // A copy of known length compiles to vector moves, not a call to memcpy per row.
        out.extend((0..tokens).map(|j| <[f32; D]>::try_from(row(j)).expect("a row of D values")));
    } else {
        out.extend((0..tokens).map(|j| {
            let mut padded = [0f32; D];
            padded[..h.d].copy_from_slice(row(j));
            padded
        }));
    }
}

/// A task's buffers, reused from one (image, head) pair to the next: the head's rows of q, k, v
/// and dO, the transposed gradients of k and v, and a block's weights and score gradients.
struct Scratch<const D: usize> {
    rows: [Vec<[f32; D]>; 4],
    grads: [Vec<f32>; 2],
    lanes: [Vec<Lanes>; 2],
}

impl<const D: usize> Scratch<D> {
    fn new() -> Self {
        Scratch {
            rows: Default::default(),
            grads: Default::default(),
            lanes: Default::default(),
        }
    }
}

/// Rows `start..start + LANES` of `rows` (zero past its end), and the same transposed.
fn block<const D: usize>(rows: &[[f32; D]], start: usize) -> ([[f32; D]; LANES], [Lanes; D]) {
    let (mut r, mut t) = ([[0f32; D]; LANES], [[0f32; LANES]; D]);
    for (l, row) in rows[start..].iter().take(LANES).enumerate() {
        r[l] = *row;
        for c in 0..D {
            t[c][l] = row[c];
        }
    }
    (r, t)
}

/// `x` as a vector.
#[inline]
#[target_feature(enable = "avx512f")]
fn load(x: &Lanes) -> __m512 {
    // SAFETY: `x` holds 16 f32.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

/// The 16 × 16 transpose of `rows` (`out[i][j] = rows[j][i]`), in registers: pairs of rows
/// interleaved, then pairs of pairs, then 128-bit quarters exchanged twice.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose(rows: &[Lanes]) -> [__m512; LANES] {
    let r: [__m512; LANES] = std::array::from_fn(|i| load(&rows[i]));
    let mut t = r;
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + k]: in each 128-bit quarter `q`, element `4q + k` of rows 4g..4g + 4.
    let mut u = t;
    for g in 0..4 {
        let b = 4 * g;
        u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        u[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    let mut out = u;
    for k in 0..4 {
        let (x, y, z, w) = (u[k], u[4 + k], u[8 + k], u[12 + k]);
        let (s0, s1) = (
            _mm512_shuffle_f32x4::<0x44>(x, y),
            _mm512_shuffle_f32x4::<0xEE>(x, y),
        );
        let (s2, s3) = (
            _mm512_shuffle_f32x4::<0x44>(z, w),
            _mm512_shuffle_f32x4::<0xEE>(z, w),
        );
        out[k] = _mm512_shuffle_f32x4::<0x88>(s0, s2);
        out[4 + k] = _mm512_shuffle_f32x4::<0xDD>(s0, s2);
        out[8 + k] = _mm512_shuffle_f32x4::<0x88>(s1, s3);
        out[12 + k] = _mm512_shuffle_f32x4::<0xDD>(s1, s3);
    }
    out
}

/// `out[j] = Σ_c a[j][c]·xt[c]`: for each row of `a`, its products with the block's queries.
#[inline]
#[target_feature(enable = "avx512f")]
fn products<const D: usize>(a: &[[f32; D]], xt: &[Lanes; D], out: &mut [Lanes]) {
    let x: [__m512; D] = std::array::from_fn(|c| load(&xt[c]));
    // Four rows at once: four independent chains of multiply-adds.
    let (mut a4, mut o4) = (a.chunks_exact(4), out.chunks_exact_mut(4));
    for (aj, oj) in (&mut a4).zip(&mut o4) {
        let mut acc = [_mm512_setzero_ps(); 4];
        for c in 0..D {
            for u in 0..4 {
                acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(aj[u][c]), x[c], acc[u]);
            }
        }
        for u in 0..4 {
            // SAFETY: `oj[u]` holds 16 f32.
            unsafe { _mm512_storeu_ps(oj[u].as_mut_ptr(), acc[u]) };
        }
    }
    for (aj, oj) in a4.remainder().iter().zip(o4.into_remainder()) {
        let mut acc = _mm512_setzero_ps();
        for c in 0..D {
            acc = _mm512_fmadd_ps(_mm512_set1_ps(aj[c]), x[c], acc);
        }
        // SAFETY: `oj` holds 16 f32.
        unsafe { _mm512_storeu_ps(oj.as_mut_ptr(), acc) };
    }
}

/// `out[c] = Σ_j a[j][c]·w[j]`: the block's rows of `wᵀ·a`, transposed.
#[inline]
#[target_feature(enable = "avx512f")]
fn weighted_sum<const D: usize>(a: &[[f32; D]], w: &[Lanes]) -> [Lanes; D] {
    let mut acc = [_mm512_setzero_ps(); D];
    for (aj, wj) in a.iter().zip(w) {
        let wv = load(wj);
        for c in 0..D {
            acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(aj[c]), wv, acc[c]);
        }
    }
    let mut out = [[0f32; LANES]; D];
    for c in 0..D {
        // SAFETY: `out[c]` holds 16 f32.
        unsafe { _mm512_storeu_ps(out[c].as_mut_ptr(), acc[c]) };
    }
    out
}

/// `gt[c·m + j] += Σ_l x[l][c]·w[j][l]` for the `d × m` matrix `gt` (`m` keys): each key's share
/// of a sum over the block's queries, 16 keys at a time through a transposed tile of `w`.
#[inline]
#[target_feature(enable = "avx512f")]
fn accumulate<const D: usize>(gt: &mut [f32], w: &[Lanes], x: &[[f32; D]; LANES]) {
    let m = w.len();
    let full = m - m % LANES;
    for start in (0..full).step_by(LANES) {
        let tile = transpose(&w[start..start + LANES]);
        for c in 0..D {
            let g = &mut gt[c * m + start..][..LANES];
            // SAFETY: `g` holds 16 f32.
            let mut acc = unsafe { _mm512_loadu_ps(g.as_ptr()) };
            for l in 0..LANES {
                acc = _mm512_fmadd_ps(_mm512_set1_ps(x[l][c]), tile[l], acc);
            }
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(g.as_mut_ptr(), acc) };
        }
    }
    for (j, wj) in w.iter().enumerate().skip(full) {
        for c in 0..D {
            gt[c * m + j] += (0..LANES).map(|l| x[l][c] * wj[l]).sum::<f32>();
        }
    }
}

/// Scores to weights in place, down the keys: softmax of `scale·S` per query, or
/// `relu(scale·S)`.
#[inline(always)]
fn weights(kernel: AttentionKernel, scale: f32, s: &mut [Lanes]) {
    match kernel {
        AttentionKernel::Softmax => {
            let mut shift = [f32::NEG_INFINITY; LANES];
            for sj in s.iter() {
                for l in 0..LANES {
                    shift[l] = if sj[l] > shift[l] { sj[l] } else { shift[l] };
                }
            }
            shift.iter_mut().for_each(|m| *m *= -scale);
            let mut sum = [0f32; LANES];
            for sj in s.iter_mut() {
                for l in 0..LANES {
                    sj[l] = fast_exp(scale.mul_add(sj[l], shift[l]));
                    sum[l] += sj[l];
                }
            }
            let inv = sum.map(|t| 1.0 / t);
            for sj in s.iter_mut() {
                for l in 0..LANES {
                    sj[l] *= inv[l];
                }
            }
        }
        AttentionKernel::Relu => {
            for v in s.iter_mut().flatten() {
                *v = (scale * *v).max(0.0);
            }
        }
    }
}

/// The weights' gradient to the scores' in place, from the weights `w`: `s·w ⊙ (dw − Σ dw ⊙ w)`
/// (softmax) or `s·dw ⊙ [w > 0]` (ReLU).
#[inline(always)]
fn weights_grad(kernel: AttentionKernel, scale: f32, dw: &mut [Lanes], w: &[Lanes]) {
    match kernel {
        AttentionKernel::Softmax => {
            let mut dot = [0f32; LANES];
            for (g, p) in dw.iter().zip(w) {
                for l in 0..LANES {
                    dot[l] = g[l].mul_add(p[l], dot[l]);
                }
            }
            for (g, p) in dw.iter_mut().zip(w) {
                for l in 0..LANES {
                    g[l] = scale * p[l] * (g[l] - dot[l]);
                }
            }
        }
        AttentionKernel::Relu => {
            for (g, p) in dw.iter_mut().zip(w) {
                for l in 0..LANES {
                    g[l] = if p[l] > 0.0 { scale * g[l] } else { 0.0 };
                }
            }
        }
    }
}

/// Writes rows `start..` (at most [`LANES`], as many as `tokens` allows) of pair `p`'s head of
/// `dst` from the transposed block `t`.
///
/// # Safety
/// Only pair `p`'s task writes pair `p`'s head.
unsafe fn write_block<const D: usize>(
    h: &Heads,
    dst: &DisjointWrites,
    p: usize,
    tokens: usize,
    start: usize,
    t: &[Lanes; D],
) {
    let base = h.offset(p, tokens);
    for (l, i) in (start..tokens).take(LANES).enumerate() {
        // SAFETY: the caller's contract (this head's rows are written by this task only).
        let row = unsafe { dst.slice(base + i * h.width(), h.d) };
        for (c, v) in row.iter_mut().enumerate() {
            *v = t[c][l];
        }
    }
}

/// Writes the transposed `d × tokens` matrix `t` (of padded width `D`) into pair `p`'s head of
/// `dst`.
///
/// # Safety
/// As [`write_block`].
unsafe fn write_transposed(h: &Heads, dst: &DisjointWrites, p: usize, tokens: usize, t: &[f32]) {
    let base = h.offset(p, tokens);
    for j in 0..tokens {
        // SAFETY: the caller's contract (this head's rows are written by this task only).
        let row = unsafe { dst.slice(base + j * h.width(), h.d) };
        for (c, v) in row.iter_mut().enumerate() {
            *v = t[c * tokens + j];
        }
    }
}

/// The forward, as [`super::forward`], into `out`.
///
/// # Safety
/// [`available`] must hold.
pub(super) unsafe fn forward(
    h: Heads,
    kernel: AttentionKernel,
    scale: f32,
    qkv: (&[f32], &[f32], &[f32]),
    out: &DisjointWrites,
) {
    if h.d <= 8 {
        forward_padded::<8>(h, kernel, scale, qkv, out)
    } else {
        forward_padded::<16>(h, kernel, scale, qkv, out)
    }
}

/// The backward, as [`super::backward`], into `grads`.
///
/// # Safety
/// [`available`] must hold.
pub(super) unsafe fn backward(
    h: Heads,
    kernel: AttentionKernel,
    scale: f32,
    qkv: (&[f32], &[f32], &[f32]),
    dout: &[f32],
    grads: &Grads,
) {
    if h.d <= 8 {
        backward_padded::<8>(h, kernel, scale, qkv, dout, grads)
    } else {
        backward_padded::<16>(h, kernel, scale, qkv, dout, grads)
    }
}

#[target_feature(enable = "avx512f,fma")]
fn forward_pair<const D: usize>(
    kernel: AttentionKernel,
    scale: f32,
    qt: &[Lanes; D],
    (kr, vr): (&[[f32; D]], &[[f32; D]]),
    w: &mut [Lanes],
) -> [Lanes; D] {
    products(kr, qt, w);
    weights(kernel, scale, w);
    weighted_sum(vr, w)
}

fn forward_padded<const D: usize>(
    h: Heads,
    kernel: AttentionKernel,
    scale: f32,
    (q, k, v): (&[f32], &[f32], &[f32]),
    out: &DisjointWrites,
) {
    (0..h.pairs())
        .into_par_iter()
        .for_each_init(Scratch::<D>::new, |scratch, p| {
            let [qr, kr, vr, _] = &mut scratch.rows;
            head_rows(&h, q, p, h.n, qr);
            head_rows(&h, k, p, h.m, kr);
            head_rows(&h, v, p, h.m, vr);
            let w = &mut scratch.lanes[0];
            w.resize(h.m, [0f32; LANES]);
            for start in (0..h.n).step_by(LANES) {
                let (_, qt) = block(qr, start);
                // SAFETY: the caller checked `available`.
                let ot = unsafe { forward_pair(kernel, scale, &qt, (kr, vr), w) };
                // SAFETY: pair `p`'s head is written by this task alone.
                unsafe { write_block(&h, out, p, h.n, start, &ot) };
            }
        });
}

/// One block's backward: `dQ` of the block (transposed), with its shares of `dKᵀ` and `dVᵀ`
/// added.
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
fn backward_block<const D: usize>(
    kernel: AttentionKernel,
    scale: f32,
    (qb, qt): (&[[f32; D]; LANES], &[Lanes; D]),
    (dob, dot): (&[[f32; D]; LANES], &[Lanes; D]),
    (kr, vr): (&[[f32; D]], &[[f32; D]]),
    (dkt, dvt): (&mut [f32], &mut [f32]),
    (w, ds): (&mut [Lanes], &mut [Lanes]),
) -> [Lanes; D] {
    products(kr, qt, w);
    weights(kernel, scale, w);
    // dV += Pᵀ·dO
    accumulate(dvt, w, dob);
    // dP = dO·Vᵀ, then dS in place.
    products(vr, dot, ds);
    weights_grad(kernel, scale, ds, w);
    // dK += dSᵀ·Q, dQ = dS·K
    accumulate(dkt, ds, qb);
    weighted_sum(kr, ds)
}

fn backward_padded<const D: usize>(
    h: Heads,
    kernel: AttentionKernel,
    scale: f32,
    (q, k, v): (&[f32], &[f32], &[f32]),
    dout: &[f32],
    grads: &Grads,
) {
    (0..h.pairs())
        .into_par_iter()
        .for_each_init(Scratch::<D>::new, |scratch, p| {
            let [qr, kr, vr, dor] = &mut scratch.rows;
            head_rows(&h, q, p, h.n, qr);
            head_rows(&h, k, p, h.m, kr);
            head_rows(&h, v, p, h.m, vr);
            head_rows(&h, dout, p, h.n, dor);
            let [dkt, dvt] = &mut scratch.grads;
            for g in [&mut *dkt, &mut *dvt] {
                g.clear();
                g.resize(D * h.m, 0.0);
            }
            let [w, ds] = &mut scratch.lanes;
            w.resize(h.m, [0f32; LANES]);
            ds.resize(h.m, [0f32; LANES]);
            for start in (0..h.n).step_by(LANES) {
                let ((qb, qt), (dob, dot)) = (block(qr, start), block(dor, start));
                // SAFETY: the caller checked `available`.
                let dqt = unsafe {
                    backward_block(
                        kernel,
                        scale,
                        (&qb, &qt),
                        (&dob, &dot),
                        (kr, vr),
                        (dkt, dvt),
                        (w, ds),
                    )
                };
                // SAFETY: pair `p`'s head is written by this task alone.
                unsafe { write_block(&h, &grads.dq, p, h.n, start, &dqt) };
            }
            // SAFETY: as above.
            unsafe {
                write_transposed(&h, &grads.dk, p, h.m, dkt);
                write_transposed(&h, &grads.dv, p, h.m, dvt);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_a_tile() {
        if !available() {
            return;
        }
        let rows: Vec<Lanes> = (0..LANES)
            .map(|i| std::array::from_fn(|j| (i * LANES + j) as f32))
            .collect();
        // SAFETY: the CPU has AVX-512 (checked above).
        let t = unsafe { transpose(&rows) };
        for (i, ti) in t.iter().enumerate() {
            let mut got = [0f32; LANES];
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), *ti) };
            for (j, &g) in got.iter().enumerate() {
                assert_eq!(g, rows[j][i], "element ({i}, {j})");
            }
        }
    }
}
