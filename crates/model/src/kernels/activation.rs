//! Elementwise activations (SiLU, exact GELU, ReLU) on the CPU in f32, spread over the threads,
//! with an analytic backward in one pass: candle runs unary ops on one thread and builds SiLU's
//! gradient from seven further ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use unetlab_graph::Unary;

use super::{contiguous_f32, cpu_f32, uninit_output, with_f32};
use crate::profile::{self, Pass};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `eˣ` to about 2e-7 relative error, in straight-line arithmetic that the compiler vectorises
/// (the standard library's `exp` is a call per element): `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`,
/// Cephes' degree-5 minimax polynomial for `(eʳ − 1 − r) / r²`, and `2ⁿ` put into the exponent
/// bits. Flushes to 0 below -87 and saturates above 88.
///
/// Written with `mul_add`: inside `vectorized!` (AVX-512 or AVX2 + FMA) each is one fused
/// instruction, half the arithmetic of separate products and sums; outside it, a libm call.
#[inline(always)]
pub(super) fn fast_exp(x: f32) -> f32 {
    // `ln 2` split in two so that `n·ln 2` is exact in the first part.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to an integer in plain arithmetic (`round` is a
    // library call without SSE4.1, which stops vectorisation).
    const ROUND: f32 = 12_582_912.0;
    const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ];
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let p = POLY[1..].iter().fold(POLY[0], |p, &c| p.mul_add(r, c));
    let p = p.mul_add(r * r, r) + 1.0;
    // `t`'s low mantissa bits hold `n` as an integer (offset by ROUND's own bits): integer
    // arithmetic on the bits avoids a float-to-int conversion, which does not vectorise.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// `erf(x)` to under 1e-6 absolute error (Abramowitz & Stegun 7.1.26 with [`fast_exp`]).
#[inline(always)]
fn fast_erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * fast_exp(-a * a)).copysign(x)
}

/// `(f(x), f'(x))` of each activation.
#[inline(always)]
pub(super) fn silu(x: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + fast_exp(-x));
    (x * s, s * (1.0 + x * (1.0 - s)))
}

#[inline(always)]
pub(super) fn gelu_erf(x: f32) -> (f32, f32) {
    let cdf = 0.5 * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = fast_exp(-0.5 * x * x)
        * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
    (x * cdf, cdf + x * pdf)
}

#[inline(always)]
pub(super) fn relu(x: f32) -> (f32, f32) {
    if x > 0.0 {
        (x, 1.0)
    } else {
        (0.0, 0.0)
    }
}

/// `row ← op(row)`, in place.
#[inline(always)]
pub(super) fn apply_in_place(op: Unary, row: &mut [f32]) {
    with_activation!(op, f => row.iter_mut().for_each(|v| *v = f(*v).0))
}

/// `z ← dy · op'(z)`, in place: the gradient through the activation at its inputs `z`.
#[inline(always)]
pub(super) fn chain_in_place(op: Unary, z: &mut [f32], dy: &[f32]) {
    with_activation!(op, f => z.iter_mut().zip(dy).for_each(|(v, &g)| *v = g * f(*v).1))
}

/// `out[i] = pick(f(x[i]))` over the threads, with the activation chosen once, outside the loop.
fn map(op: Unary, x: &[f32], dy: Option<&[f32]>) -> Vec<f32> {
    fn run(x: &[f32], dy: Option<&[f32]>, f: impl Fn(f32) -> (f32, f32) + Sync) -> Vec<f32> {
        // SAFETY: every chunk below writes each of its elements.
        let mut out = unsafe { uninit_output(x.len()) };
        let chunk = |(i, o): (usize, &mut [f32])| {
            let xs = &x[i * CHUNK..][..o.len()];
            vectorized!(match dy {
                None => o.iter_mut().zip(xs).for_each(|(o, &v)| *o = f(v).0),
                Some(dy) => {
                    let gs = &dy[i * CHUNK..][..o.len()];
                    for ((o, &v), &g) in o.iter_mut().zip(xs).zip(gs) {
                        *o = g * f(v).1;
                    }
                }
            })
        };
        if x.len() > CHUNK {
            out.par_chunks_mut(CHUNK).enumerate().for_each(chunk);
        } else {
            chunk((0, &mut out));
        }
        out
    }
    with_activation!(op, f => run(x, dy, f))
}

struct Activation(Unary);

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        "unetlab-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = map(self.0, contiguous_f32(s, l)?, None);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = profile::span("activation", Pass::Backward);
        let dy = dy.contiguous()?;
        let dx = with_f32(x, |x| with_f32(&dy, |dy| map(self.0, x, Some(dy))))??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Whether [`activation`] takes `x` (f32 on the CPU).
pub fn supported(x: &Tensor) -> bool {
    cpu_f32(&[x])
}

/// `op(x)` elementwise, differentiable.
pub fn activation(x: &Tensor, op: Unary) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    x.contiguous()?.apply_op1(Activation(op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::Var;

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        let mut worst = (0f32, 0f32);
        for i in -8699..=8795 {
            let x = i as f32 * 0.01 + 0.003;
            let rel = (fast_exp(x) - x.exp()).abs() / x.exp();
            worst.0 = worst.0.max(rel);
            let erf = candle_core::cpu::erf::erf_f32(x / 10.0);
            worst.1 = worst.1.max((fast_erf(x / 10.0) - erf).abs());
        }
        assert!(worst.0 < 5e-7, "exp rel err {}", worst.0);
        assert!(worst.1 < 1e-6, "erf abs err {}", worst.1);
        assert!(fast_exp(-200.0) < 1e-37 && fast_exp(200.0).is_finite());
    }

    #[test]
    fn matches_candles_ops_and_their_gradients() {
        for (i, op) in [Unary::Silu, Unary::GeluErf, Unary::Relu]
            .into_iter()
            .enumerate()
        {
            // Odd length, both signs, large magnitudes (the tails of sigmoid and erf).
            let x =
                Var::from_tensor(&random(&[3, 7, 33], i as u64).affine(8.0, 0.3).unwrap()).unwrap();
            let ours = activation(&x, op).unwrap();
            let reference = match op {
                Unary::Silu => x.silu().unwrap(),
                Unary::GeluErf => x.gelu_erf().unwrap(),
                Unary::Relu => x.relu().unwrap(),
            };
            let e = rel_err(&ours, &reference);
            assert!(e <= 1e-5, "{op:?}: forward rel err {e}");
            let (g1, g2) = backward_both(&ours, &reference, 20 + i as u64);
            let e = rel_err(g1.get(&x).unwrap(), g2.get(&x).unwrap());
            assert!(e <= 1e-4, "{op:?}: gradient rel err {e}");
        }
    }
}
