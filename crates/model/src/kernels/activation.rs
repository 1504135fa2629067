//! Elementwise activations (SiLU, exact GELU, ReLU) on the CPU in f32, spread over the threads,
//! with an analytic backward in one pass: candle runs unary ops on one thread and builds SiLU's
//! gradient from seven further ops.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use unetlab_graph::Unary;

use super::{contiguous_f32, with_f32};
use crate::profile::{self, Pass};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `(f(x), f'(x))`.
fn value_and_slope(op: Unary, x: f32) -> (f32, f32) {
    match op {
        Unary::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
        Unary::GeluErf => {
            let cdf =
                0.5 * (1.0 + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp()
                * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
            (x * cdf, cdf + x * pdf)
        }
        Unary::Relu => {
            if x > 0.0 {
                (x, 1.0)
            } else {
                (0.0, 0.0)
            }
        }
    }
}

struct Activation(Unary);

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        "unetlab-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(ys, xs)| {
                for (yv, &xv) in ys.iter_mut().zip(xs) {
                    *yv = value_and_slope(self.0, xv).0;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _span = profile::span("activation", Pass::Backward);
        let dy = dy.contiguous()?;
        let dx = with_f32(x, |x| {
            with_f32(&dy, |dy| {
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
                    .for_each(|(ds, (xs, gs))| {
                        for ((d, &xv), &g) in ds.iter_mut().zip(xs).zip(gs) {
                            *d = g * value_and_slope(self.0, xv).1;
                        }
                    });
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Whether [`activation`] takes `x` (f32 on the CPU).
pub fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
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
    use crate::kernels::testing::{random, rel_err};
    use candle_core::Var;

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
            let upstream = random(x.dims(), 20 + i as u64);
            let loss = |y: &Tensor| (y * &upstream).unwrap().sum_all().unwrap();
            let (g1, g2) = (
                loss(&ours).backward().unwrap(),
                loss(&reference).backward().unwrap(),
            );
            let e = rel_err(g1.get(&x).unwrap(), g2.get(&x).unwrap());
            assert!(e <= 1e-4, "{op:?}: gradient rel err {e}");
        }
    }
}
