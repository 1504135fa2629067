//! A linear layer's product `y = x·Wᵀ` on the CPU in f32, with an analytic backward
//! (`dx = dy·W`, `dW = dyᵀ·x`), every product one GEMM on strided views: candle's matmul
//! backward goes through transposed copies, and it spreads even the smallest products (a
//! time-embedding projection of 8 rows) over every thread. Here a product uses the threads only
//! when it is large enough to pay for them.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, matmul_long_inner, View};
use super::{bias, contiguous_f32, cpu_f32, uninit_output, with_f32};
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

/// `y = x·Wᵀ`, plus the bias `b` when there is one.
///
/// With fewer rows than inputs (a transformer at low resolution, text projections) it computes
/// `yᵀ = W·xᵀ` and transposes that, adding the bias: the `gemm` crate lays out a row-major `x·Wᵀ`
/// so that every thread packs (transposing) the whole weight, which then costs more than the
/// product's small share per weight element. Measured on 2 threads, 256 rows of 1,024 → 1,024:
/// 1.4× faster; 1,024 rows of 640 → 640: 10 % slower, hence the rule.
fn forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    (rows, cin, cout): (usize, usize, usize),
) -> Vec<f32> {
    let threads = threads(rows, cout, cin);
    // SAFETY: the product or the transpose (below), or the bias fill or the product (not
    // accumulating), writes every element.
    let mut y = unsafe { uninit_output(rows * cout) };
    let (x, w) = (View::rows(x, rows, cin), View::rows(w, cout, cin));
    if 0 < rows && rows < cin && cout > 0 {
        // SAFETY: as above.
        let mut yt = unsafe { uninit_output(rows * cout) };
        // Each thread multiplies its own share of the weight's rows on one thread: measured, 4 to
        // 11 % faster than the `gemm` crate's own threading, which forks and joins per block.
        let per_part = cout.div_ceil(threads).max(1);
        yt.par_chunks_mut(per_part * rows)
            .enumerate()
            .for_each(|(part, ytp)| {
                let outputs = ytp.len() / rows;
                let wp = w.row_block(part * per_part, outputs);
                matmul(ytp, wp, x.t(), false, 1);
            });
        transpose_adding_bias(&yt, &mut y, cout, b);
        return y;
    }
    if let Some(b) = b {
        bias::fill(&mut y, b, 1);
    }
    matmul(&mut y, x, w.t(), b.is_some(), threads);
    y
}

/// `y = ytᵀ (+ b)`, `yt` being `cout × rows` and `y` `rows × cout`: tiles of [`TILE`]² so that
/// reads and writes both stay in cache, blocks of rows over the threads.
fn transpose_adding_bias(yt: &[f32], y: &mut [f32], cout: usize, b: Option<&[f32]>) {
    const TILE: usize = 16;
    let rows = yt.len() / cout.max(1);
    y.par_chunks_mut(TILE * cout)
        .enumerate()
        .for_each(|(block, out)| {
            let (r0, nr) = (block * TILE, out.len() / cout);
            vectorized!(for c0 in (0..cout).step_by(TILE) {
                let nc = TILE.min(cout - c0);
                for r in 0..nr {
                    let dst = &mut out[r * cout + c0..][..nc];
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = yt[(c0 + i) * rows + r0 + r];
                    }
                    if let Some(b) = b {
                        dst.iter_mut()
                            .zip(&b[c0..c0 + nc])
                            .for_each(|(d, &v)| *d += v);
                    }
                }
            })
        });
}

/// `(dx, dW, db)` (`db` when `bias`).
fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    bias: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let _span = profile::span("linear", Pass::Backward);
    let dy = dy.contiguous()?;
    let (rows, cin, cout) = sizes(x.dims(), w.dims())?;
    let (dx, dw, db) = with_f32(x, |x| {
        with_f32(w, |w| {
            with_f32(&dy, |dy| {
                let dy_view = View::rows(dy, rows, cout);
                // SAFETY: products that do not accumulate write every element.
                let mut dx = unsafe { uninit_output(rows * cin) };
                let w_view = View::rows(w, cout, cin);
                matmul(&mut dx, dy_view, w_view, false, threads(rows, cin, cout));
                // SAFETY: as above.
                let mut dw = unsafe { uninit_output(cout * cin) };
                let x_view = View::rows(x, rows, cin);
                matmul_long_inner(&mut dw, dy_view.t(), x_view, threads(cout, cin, rows));
                let db = bias.then(|| bias::channel_sums(dy, cout, 1));
                (dx, dw, db)
            })
        })
    })???;
    let device = x.device();
    Ok((
        Tensor::from_vec(dx, x.shape(), device)?,
        Tensor::from_vec(dw, w.shape(), device)?,
        db.map(|db| Tensor::from_vec(db, cout, device))
            .transpose()?,
    ))
}

fn output_shape(x: &Layout, cout: usize) -> Shape {
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = cout;
    dims.into()
}

/// The linear layer as a candle op: `(x, W)` without a bias, `(x, W, b)` with one.
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
        let sizes = sizes(xl.dims(), wl.dims())?;
        let (x, w) = (contiguous_f32(xs, xl)?, contiguous_f32(ws, wl)?);
        let y = forward(x, w, None, sizes);
        Ok((CpuStorage::F32(y), output_shape(xl, sizes.2)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, w, dy, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "unetlab-linear-bias"
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
        let sizes = sizes(xl.dims(), wl.dims())?;
        let (x, w, b) = (
            contiguous_f32(xs, xl)?,
            contiguous_f32(ws, wl)?,
            contiguous_f32(bs, bl)?,
        );
        if b.len() != sizes.2 {
            bail!("linear kernel: bias of {} for {} outputs", b.len(), sizes.2)
        }
        let y = forward(x, w, Some(b), sizes);
        Ok((CpuStorage::F32(y), output_shape(xl, sizes.2)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = backward(x, w, dy, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// Whether [`linear`] takes these operands (f32 on the CPU, a 2-D weight, a 1-D bias as long as
/// the weight's rows).
pub fn supported(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> bool {
    cpu_f32(&[x, w]) && w.rank() == 2 && x.rank() >= 1 && bias::fits(b, w)
}

/// `x·wᵀ (+ b)` over the last dimension of `x` (`w` is `[out, in]`, `b` is `[out]`);
/// differentiable in all of them.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, Linear),
        None => x.apply_op2(&w, Linear),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::Var;

    #[test]
    fn matches_candles_matmul_and_its_gradients() {
        // Tiny (one thread) and large (threaded) products, 2-D and 3-D inputs, one row, fewer
        // rows than inputs (the transposed product, tiles cut short); each without and with a
        // bias.
        for (i, (xs, cout)) in [
            (vec![8, 5], 3),
            (vec![2, 7, 9], 11),
            (vec![1, 4], 1),
            (vec![4, 256, 96], 160),
            (vec![3, 37, 130], 45),
            (vec![1, 200, 1030], 70),
        ]
        .into_iter()
        .enumerate()
        {
            for with_bias in [false, true] {
                let cin = *xs.last().unwrap();
                let x = Var::from_tensor(&random(&xs, i as u64)).unwrap();
                let w = Var::from_tensor(&random(&[cout, cin], 10 + i as u64)).unwrap();
                let b = Var::from_tensor(&random(&[cout], 30 + i as u64)).unwrap();
                let bias = with_bias.then_some(b.as_tensor());
                let ours = linear(&x, &w, bias).unwrap();
                let rows = x.elem_count() / cin;
                let mut dims = xs.clone();
                *dims.last_mut().unwrap() = cout;
                let mut reference = x
                    .reshape((rows, cin))
                    .unwrap()
                    .matmul(&w.t().unwrap())
                    .unwrap();
                if let Some(b) = bias {
                    reference = reference.broadcast_add(b).unwrap();
                }
                let reference = reference.reshape(dims).unwrap();
                let e = rel_err(&ours, &reference);
                assert!(e <= 1e-5, "{xs:?} bias {with_bias}: forward rel err {e}");
                let (g1, g2) = backward_both(&ours, &reference, 20 + i as u64);
                let mut vars = vec![("input", &x), ("weight", &w)];
                if with_bias {
                    vars.push(("bias", &b));
                }
                for (name, v) in vars {
                    let e = rel_err(g1.get(v).unwrap(), g2.get(v).unwrap());
                    assert!(e <= 1e-5, "{xs:?}: {name} gradient rel err {e}");
                }
                if !with_bias {
                    assert!(g1.get(&b).is_none());
                }
            }
        }
    }
}
