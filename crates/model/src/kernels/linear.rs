//! A linear layer's product `y = x·Wᵀ` on the CPU in f32, with an analytic backward
//! (`dx = dy·W`, `dW = dyᵀ·x`), every product one GEMM on strided views: candle's matmul
//! backward goes through transposed copies, and it spreads even the smallest products (a
//! time-embedding projection of 8 rows) over every thread. Here a product uses the threads only
//! when it is large enough to pay for them.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::gemm::{matmul, View};
use super::{contiguous_f32, cpu_f32, with_f32};
use crate::profile::{self, Pass};

/// Products of fewer multiply-adds run on one thread.
const PARALLEL_MACS: usize = 1 << 21;

fn threads(m: usize, n: usize, k: usize) -> usize {
    if m * n * k >= PARALLEL_MACS {
        candle_core::utils::get_num_threads().max(1)
    } else {
        1
    }
}

/// `(rows, in, out)` of `x` (`[..., in]`) and `w` (`[out, in]`).
fn sizes(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    let (Some(&cin), &[cout, win]) = (x.last(), w) else {
        bail!("linear kernel: input {x:?}, weight {w:?}")
    };
    if win != cin {
        bail!("linear kernel: input {x:?} does not match weight {w:?}")
    }
    Ok((x.iter().product::<usize>() / cin.max(1), cin, cout))
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "unetlab-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, cin, cout) = sizes(xl.dims(), wl.dims())?;
        let (x, w) = (contiguous_f32(xs, xl)?, contiguous_f32(ws, wl)?);
        let mut y = vec![0f32; rows * cout];
        let wt = View::rows(w, cout, cin).t();
        matmul(
            &mut y,
            View::rows(x, rows, cin),
            wt,
            false,
            threads(rows, cout, cin),
        );
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = cout;
        Ok((CpuStorage::F32(y), dims.into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = profile::span("linear", Pass::Backward);
        let dy = dy.contiguous()?;
        let (rows, cin, cout) = sizes(x.dims(), w.dims())?;
        let (dx, dw) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(&dy, |dy| {
                    let dy_view = View::rows(dy, rows, cout);
                    let mut dx = vec![0f32; rows * cin];
                    let w_view = View::rows(w, cout, cin);
                    matmul(&mut dx, dy_view, w_view, false, threads(rows, cin, cout));
                    let mut dw = vec![0f32; cout * cin];
                    let x_view = View::rows(x, rows, cin);
                    matmul(
                        &mut dw,
                        dy_view.t(),
                        x_view,
                        false,
                        threads(cout, cin, rows),
                    );
                    (dx, dw)
                })
            })
        })???;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// Whether [`linear`] takes these operands (f32 on the CPU, a 2-D weight).
pub fn supported(x: &Tensor, w: &Tensor) -> bool {
    cpu_f32(&[x, w]) && w.rank() == 2 && x.rank() >= 1
}

/// `x·wᵀ` over the last dimension of `x` (`w` is `[out, in]`); differentiable in both.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::Var;

    #[test]
    fn matches_candles_matmul_and_its_gradients() {
        // Tiny (one thread) and large (threaded) products, 2-D and 3-D inputs, one row.
        for (i, (xs, cout)) in [
            (vec![8, 5], 3),
            (vec![2, 7, 9], 11),
            (vec![1, 4], 1),
            (vec![4, 256, 96], 160),
        ]
        .into_iter()
        .enumerate()
        {
            let cin = *xs.last().unwrap();
            let x = Var::from_tensor(&random(&xs, i as u64)).unwrap();
            let w = Var::from_tensor(&random(&[cout, cin], 10 + i as u64)).unwrap();
            let ours = linear(&x, &w).unwrap();
            let rows = x.elem_count() / cin;
            let mut dims = xs.clone();
            *dims.last_mut().unwrap() = cout;
            let reference = x
                .reshape((rows, cin))
                .unwrap()
                .matmul(&w.t().unwrap())
                .unwrap()
                .reshape(dims)
                .unwrap();
            let e = rel_err(&ours, &reference);
            assert!(e <= 1e-5, "{xs:?}: forward rel err {e}");
            let (g1, g2) = backward_both(&ours, &reference, 20 + i as u64);
            for (name, v) in [("input", &x), ("weight", &w)] {
                let e = rel_err(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(e <= 1e-5, "{xs:?}: {name} gradient rel err {e}");
            }
        }
    }
}
