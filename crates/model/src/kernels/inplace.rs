//! In-place f32 updates for optimizers on the CPU: one pass over each tensor and no allocation,
//! where the same update through candle ops takes about ten ops and tensors per parameter (most
//! of a small training step's optimizer time). Every tensor must be f32, contiguous and on the
//! CPU; the one updated must not share its storage with a tensor that still needs old values.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, InplaceOp2, Layout, Result, Tensor};
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
    (src, src_l): (&CpuStorage, &Layout),
    f: impl Fn(&mut f32, f32) + Sync,
) -> Result<()> {
    let target = contiguous_f32_mut(dst, dst_l)?;
    let source = contiguous_f32(src, src_l)?;
    if source.len() != target.len() {
        bail!(
            "in-place update: {} elements against {}",
            target.len(),
            source.len()
        );
    }
    let chunk = |(t, s): (&mut [f32], &[f32])| {
        vectorized!(for (t, &s) in t.iter_mut().zip(s) {
            f(t, s);
        })
    };
    if target.len() <= CHUNK {
        chunk((target, source));
    } else {
        target
            .par_chunks_mut(CHUNK)
            .zip(source.par_chunks(CHUNK))
            .for_each(chunk);
    }
    Ok(())
}

/// `target ← d·target + (1 − d)·source`.
struct Lerp {
    decay: f32,
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
        let d = self.decay;
        zip_update(dst, dst_l, (src, src_l), |t, x| *t = d * *t + (1.0 - d) * x)
    }
}

/// `target ← decay·target + (1 − decay)·source`, in place (EMA weights).
pub fn lerp_into(target: &Tensor, source: &Tensor, decay: f64) -> Result<()> {
    target.inplace_op2(
        source,
        &Lerp {
            decay: decay as f32,
        },
    )
}

/// One AdamW step's settings.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// `1 − β₁ᵗ`.
    pub bias1: f64,
    /// `1 − β₂ᵗ`.
    pub bias2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Factor on the gradient (the clipping factor).
    pub grad_scale: f64,
}

/// [`adam_update`] as a candle op on the weight, the moments held beside it.
struct AdamUpdate<'a> {
    step: AdamStep,
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for AdamUpdate<'_> {
    fn name(&self) -> &'static str {
        "unetlab-adam-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let w = contiguous_f32_mut(dst, dst_l)?;
        let g = contiguous_f32(src, src_l)?;
        let mut moments = self
            .moments
            .lock()
            .expect("not poisoned: nothing panics under it");
        let (m, v) = &mut *moments;
        if [g.len(), m.len(), v.len()].iter().any(|&n| n != w.len()) {
            bail!(
                "AdamW update: {} weights against {} gradients and moments of {} and {}",
                w.len(),
                g.len(),
                m.len(),
                v.len()
            );
        }
        let c = self.step;
        let f = |x: f64| x as f32;
        let (keep, lr, eps, scale) = (
            f(1.0 - c.lr * c.weight_decay),
            f(c.lr),
            f(c.eps),
            f(c.grad_scale),
        );
        let (b1, b2, bias1, bias2) = (f(c.beta1), f(c.beta2), f(c.bias1), f(c.bias2));
        let chunk = |w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            vectorized!(for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
                let g = scale * g;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *w = *w * keep - lr * (*m / bias1) / ((*v / bias2).sqrt() + eps);
            })
        };
        if w.len() <= CHUNK {
            chunk(w, g, m, v);
        } else {
            w.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((w, g), m), v)| chunk(w, g, m, v));
        }
        Ok(())
    }
}

/// One AdamW step of weight `w` with gradient `g` and moments `m`, `v`, in one pass over the
/// four: `g' = s·g`, `m ← β₁m + (1 − β₁)g'`, `v ← β₂v + (1 − β₂)g'²`, then
/// `w ← w·(1 − lr·wd) − lr·m̂ / (√v̂ + eps)` with `m̂ = m / bias1`, `v̂ = v / bias2`.
pub fn adam_update(
    w: &Tensor,
    g: &Tensor,
    (m, v): (&mut [f32], &mut [f32]),
    step: AdamStep,
) -> Result<()> {
    let op = AdamUpdate {
        step,
        moments: Mutex::new((m, v)),
    };
    w.inplace_op2(g, &op)
}

/// `Σ x²`: lane-wise in f32 within chunks of `CHUNK`, in f64 across them.
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
        lerp_into(&t, &s, 0.9).unwrap();
        for ((a, x), y) in values(&t).iter().zip(&t0).zip(&s0) {
            assert!((a - (0.9 * x + 0.1 * y)).abs() < 1e-6);
        }
        // Two AdamW steps (state carried between them), at sizes on both sides of a chunk.
        for n in [5, 3 * CHUNK + 17] {
            let w = random(&[n], 4);
            let (mut w0, mut m0, mut v0) = (values(&w), values(&random(&[n], 5)), vec![0f32; n]);
            v0.iter_mut()
                .zip(values(&random(&[n], 6)))
                .for_each(|(v, x)| *v = x * x);
            let (mut m, mut v) = (m0.clone(), v0.clone());
            for t in 1..=2 {
                let g = random(&[n], 6 + t);
                let step = AdamStep {
                    lr: 0.01,
                    weight_decay: 0.1,
                    beta1: 0.9,
                    beta2: 0.99,
                    bias1: 1.0 - 0.9f64.powi(t as i32),
                    bias2: 1.0 - 0.99f64.powi(t as i32),
                    eps: 1e-8,
                    grad_scale: 0.5,
                };
                adam_update(&w, &g, (&mut m, &mut v), step).unwrap();
                let got = values(&w);
                for (i, g) in values(&g).iter().enumerate() {
                    let g = 0.5 * *g as f64;
                    let mi = 0.9 * m0[i] as f64 + 0.1 * g;
                    let vi = 0.99 * v0[i] as f64 + 0.01 * g * g;
                    let want = w0[i] as f64 * (1.0 - 0.001)
                        - 0.01 * (mi / step.bias1) / ((vi / step.bias2).sqrt() + 1e-8);
                    assert!((m[i] as f64 - mi).abs() < 1e-6, "{i}: m {} vs {mi}", m[i]);
                    assert!((v[i] as f64 - vi).abs() < 1e-6, "{i}: v {} vs {vi}", v[i]);
                    assert!(
                        (got[i] as f64 - want).abs() < 1e-5,
                        "{i}: {} vs {want}",
                        got[i]
                    );
                }
                (w0, m0, v0) = (got, m.clone(), v.clone());
            }
        }
        let want: f64 = s0.iter().map(|&x| x as f64 * x as f64).sum();
        // f32 lanes within a chunk: about 1e-7 relative.
        assert!((sum_squares(&s).unwrap() - want).abs() < 1e-6 * want);
    }

    #[test]
    fn mismatched_or_strided_tensors_are_errors() {
        let t = random(&[4, 3], 1);
        assert!(lerp_into(&t, &random(&[5], 2), 0.5).is_err());
        assert!(lerp_into(&t.t().unwrap(), &random(&[3, 4], 2), 0.5).is_err());
        let step = AdamStep {
            lr: 0.1,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.99,
            bias1: 0.1,
            bias2: 0.01,
            eps: 1e-8,
            grad_scale: 1.0,
        };
        let (mut m, mut v) = (vec![0f32; 12], vec![0f32; 11]);
        assert!(adam_update(&t, &random(&[4, 3], 2), (&mut m, &mut v), step).is_err());
    }
}
