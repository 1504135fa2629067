//! In-place f32 updates for optimizers on the CPU: one pass over each tensor and no allocation,
//! where the same update through candle ops takes about ten ops and tensors per parameter (most
//! of a small training step's optimizer time). Every tensor must be f32, contiguous and on the
//! CPU; the one updated must not share its storage with a tensor that still needs old values.

use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, rows, with_f32};

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// The f32 contents of a contiguous CPU storage, mutably.
fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("in-place update: f32 only")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut v[start..end]),
        None => bail!("in-place update: the tensor must be contiguous"),
    }
}

/// Applies `f(target, source)` elementwise in parallel.
fn zip_update(
    dst: &mut CpuStorage,
    dst_l: &Layout,
    srcs: &[(&CpuStorage, &Layout)],
    f: impl Fn(&mut f32, &[f32; 2]) + Sync,
) -> Result<()> {
    let target = contiguous_f32_mut(dst, dst_l)?;
    let a = contiguous_f32(srcs[0].0, srcs[0].1)?;
    let b = match srcs.get(1) {
        Some((s, l)) => contiguous_f32(s, l)?,
        None => a,
    };
    if a.len() != target.len() || b.len() != target.len() {
        bail!(
            "in-place update: {} elements against {} and {}",
            target.len(),
            a.len(),
            b.len()
        );
    }
    let chunk = |(t, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        vectorized!(for ((t, &a), &b) in t.iter_mut().zip(a).zip(b) {
            f(t, &[a, b]);
        })
    };
    if target.len() <= CHUNK {
        chunk((target, (a, b)));
    } else {
        target
            .par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(chunk);
    }
    Ok(())
}

/// `target ← d·target + (1 − d)·s·source`, or with `square`, `… + (1 − d)·(s·source)²`.
struct Lerp {
    decay: f32,
    scale: f32,
    square: bool,
}

impl InplaceOp2 for Lerp {
    fn name(&self) -> &'static str {
        "unetlab-lerp"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let (d, s) = (self.decay, self.scale);
        let srcs = [(src, src_l)];
        if self.square {
            zip_update(dst, dst_l, &srcs, |t, [x, _]| {
                *t = d * *t + (1.0 - d) * (s * x) * (s * x)
            })
        } else {
            zip_update(dst, dst_l, &srcs, |t, [x, _]| {
                *t = d * *t + (1.0 - d) * (s * x)
            })
        }
    }
}

/// `target ← decay·target + (1 − decay)·scale·source`, in place (EMA weights, Adam's first
/// moment).
pub fn lerp_into(target: &Tensor, source: &Tensor, decay: f64, scale: f64) -> Result<()> {
    lerp(target, source, decay, scale, false)
}

/// `target ← decay·target + (1 − decay)·(scale·source)²`, in place (Adam's second moment).
pub fn lerp_square_into(target: &Tensor, source: &Tensor, decay: f64, scale: f64) -> Result<()> {
    lerp(target, source, decay, scale, true)
}

fn lerp(target: &Tensor, source: &Tensor, decay: f64, scale: f64, square: bool) -> Result<()> {
    let op = Lerp {
        decay: decay as f32,
        scale: scale as f32,
        square,
    };
    target.inplace_op2(source, &op)
}

/// One AdamW step on a weight from its moments.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// `1 − β₁ᵗ`.
    pub bias1: f64,
    /// `1 − β₂ᵗ`.
    pub bias2: f64,
    /// Denominator epsilon.
    pub eps: f64,
}

impl InplaceOp3 for AdamStep {
    fn name(&self) -> &'static str {
        "unetlab-adam-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<()> {
        let srcs = [(m, m_l), (v, v_l)];
        let keep = (1.0 - self.lr * self.weight_decay) as f32;
        let (lr, eps) = (self.lr as f32, self.eps as f32);
        let (b1, b2) = (self.bias1 as f32, self.bias2 as f32);
        zip_update(dst, dst_l, &srcs, |w, [m, v]| {
            *w = *w * keep - lr * (m / b1) / ((v / b2).sqrt() + eps)
        })
    }
}

/// `w ← w·(1 − lr·wd) − lr·m̂ / (√v̂ + eps)` with `m̂ = m / bias1`, `v̂ = v / bias2`, in place.
pub fn adam_step(w: &Tensor, m: &Tensor, v: &Tensor, step: AdamStep) -> Result<()> {
    w.inplace_op3(m, v, &step)
}

/// `Σ x²`: lane-wise in f32 within chunks of [`CHUNK`], in f64 across them.
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    let sum = |c: &[f32]| vectorized!(rows::sum_sq_dev(c, 0.0) as f64);
    with_f32(&x.contiguous()?, |x| {
        if x.len() <= CHUNK {
            sum(x)
        } else {
            x.par_chunks(CHUNK).map(sum).sum()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::random;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn updates_match_the_formulas() {
        let n = 3 * CHUNK + 17;
        let (t, s) = (random(&[n], 1), random(&[n], 2));
        let (t0, s0) = (values(&t), values(&s));
        lerp_into(&t, &s, 0.9, 0.5).unwrap();
        for ((a, x), y) in values(&t).iter().zip(&t0).zip(&s0) {
            assert!((a - (0.9 * x + 0.1 * 0.5 * y)).abs() < 1e-6);
        }
        let v = random(&[n], 3).abs().unwrap();
        let v0 = values(&v);
        lerp_square_into(&v, &s, 0.99, 2.0).unwrap();
        for ((a, x), y) in values(&v).iter().zip(&v0).zip(&s0) {
            assert!((a - (0.99 * x + 0.01 * (2.0 * y) * (2.0 * y))).abs() < 1e-6);
        }
        let (w, w0, m0) = (random(&[n], 4), values(&random(&[n], 4)), values(&t));
        let v1 = values(&v);
        let step = AdamStep {
            lr: 0.01,
            weight_decay: 0.1,
            bias1: 0.1,
            bias2: 0.01,
            eps: 1e-8,
        };
        adam_step(&w, &t, &v, step).unwrap();
        for (i, a) in values(&w).iter().enumerate() {
            let want = w0[i] as f64 * (1.0 - 0.001)
                - 0.01 * (m0[i] as f64 / 0.1) / ((v1[i] as f64 / 0.01).sqrt() + 1e-8);
            assert!((*a as f64 - want).abs() < 1e-5, "{i}: {a} vs {want}");
        }
        let want: f64 = s0.iter().map(|&x| x as f64 * x as f64).sum();
        // f32 lanes within a chunk: about 1e-7 relative.
        assert!((sum_squares(&s).unwrap() - want).abs() < 1e-6 * want);
    }

    #[test]
    fn mismatched_or_strided_tensors_are_errors() {
        let t = random(&[4, 3], 1);
        assert!(lerp_into(&t, &random(&[5], 2), 0.5, 1.0).is_err());
        assert!(lerp_into(&t.t().unwrap(), &random(&[3, 4], 2), 0.5, 1.0).is_err());
    }
}
