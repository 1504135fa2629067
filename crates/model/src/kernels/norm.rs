//! GroupNorm and LayerNorm on the CPU in f32, one pass each way, as candle custom ops with an
//! analytic backward (candle 0.11's fused `layer_norm` records no backward, and the composite
//! version allocates a tensor for each of its ten ops, forward and backward).
//!
//! Both normalise rows of contiguous elements and then apply a per-channel affine: a GroupNorm
//! row is one sample's group (`C/G` channels × the spatial size), a LayerNorm row is one vector.
//! Row statistics are lane-wise f32 sums; the affine gradients are accumulated in f64. With `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)` and `g = dy·w`:
//! `dx = r·(g − mean(g) − x̂·mean(g·x̂))`, `dw = Σ dy·x̂`, `db = Σ dy`.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use unetlab_graph::Unary;

use super::{activation, contiguous_f32, cpu_f32, rows, uninit_output, with_f32};
use crate::profile::{self, Pass};

/// How a tensor splits into normalised rows and which affine channel each element uses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rows {
    /// Elements per row.
    len: usize,
    /// Rows per sample (GroupNorm's groups; 1 for LayerNorm).
    groups: usize,
    /// Consecutive elements sharing one affine channel (the spatial size; 1 for LayerNorm).
    spatial: usize,
    /// Affine channels.
    channels: usize,
    eps: f64,
}

impl Rows {
    /// The affine channel of element `j` of row `r`.
    fn channel(&self, r: usize, j: usize) -> usize {
        (r % self.groups) * (self.len / self.spatial) + j / self.spatial
    }

    /// Mean and reciprocal standard deviation of one row (two passes, lane-wise sums).
    #[inline(always)]
    fn stats(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = rows::sum(row) / n;
        let var = rows::sum_sq_dev(row, mean) as f64 / n as f64;
        (mean, (1.0 / (var + self.eps).sqrt()) as f32)
    }
}

/// One row of `norm(x)·w + b`, written to `yr`.
#[inline(always)]
fn normalize_row(rows: &Rows, r: usize, xr: &[f32], (w, b): (&[f32], &[f32]), yr: &mut [f32]) {
    let (mean, rstd) = rows.stats(xr);
    if rows.spatial == 1 {
        // One element per channel (LayerNorm): the affine varies along the row.
        let first = rows.channel(r, 0);
        let (w, b) = (&w[first..][..rows.len], &b[first..][..rows.len]);
        for ((yv, &xv), (&wv, &bv)) in yr.iter_mut().zip(xr).zip(w.iter().zip(b)) {
            *yv = (xv - mean) * rstd * wv + bv;
        }
        return;
    }
    for (c, (ys, xs)) in yr
        .chunks_mut(rows.spatial)
        .zip(xr.chunks(rows.spatial))
        .enumerate()
    {
        let ch = rows.channel(r, c * rows.spatial);
        let (scale, shift) = (rstd * w[ch], b[ch] - mean * rstd * w[ch]);
        for (yv, &xv) in ys.iter_mut().zip(xs) {
            *yv = xv * scale + shift;
        }
    }
}

/// `act(norm(x)·w + b)` (no activation when `act` is `None`).
fn forward(rows: &Rows, act: Option<Unary>, x: &[f32], (w, b): (&[f32], &[f32])) -> Vec<f32> {
    // SAFETY: every row below writes each of its elements.
    let mut y = unsafe { uninit_output(x.len()) };
    y.par_chunks_mut(rows.len)
        .zip(x.par_chunks(rows.len))
        .enumerate()
        .for_each(|(r, (yr, xr))| {
            vectorized!({
                normalize_row(rows, r, xr, (w, b), yr);
                if let Some(op) = act {
                    activation::apply_in_place(op, yr);
                }
            })
        });
    y
}

/// One row's input gradient (written to `dxr`) and its share of the affine gradients (added to
/// `dw`, `db`).
#[inline(always)]
fn backward_row(
    rows: &Rows,
    r: usize,
    (xr, dyr, dxr): (&[f32], &[f32], &mut [f32]),
    w: &[f32],
    (dw, db): (&mut [f64], &mut [f64]),
) {
    let (mean, rstd) = rows.stats(xr);
    let n = rows.len as f32;
    if rows.spatial == 1 {
        // One channel per element (LayerNorm); `dxr` holds g = dy·w first.
        let first = rows.channel(r, 0);
        let (w, dw, db) = (
            &w[first..][..rows.len],
            &mut dw[first..][..rows.len],
            &mut db[first..][..rows.len],
        );
        dxr.iter_mut()
            .zip(dyr.iter().zip(w))
            .for_each(|(g, (&d, &wv))| *g = d * wv);
        let mean_g = rows::sum(dxr) / n;
        let mean_gx = rows::dot_centered(dxr, xr, mean) * rstd / n;
        for ((dwv, dbv), (&d, &xv)) in dw.iter_mut().zip(db.iter_mut()).zip(dyr.iter().zip(xr)) {
            *dbv += d as f64;
            *dwv += (d * (xv - mean) * rstd) as f64;
        }
        for (g, &xv) in dxr.iter_mut().zip(xr) {
            *g = rstd * (*g - mean_g - (xv - mean) * rstd * mean_gx);
        }
        return;
    }
    let (mut sum_g, mut sum_gx) = (0f64, 0f64);
    for (c, (xs, dys)) in xr
        .chunks(rows.spatial)
        .zip(dyr.chunks(rows.spatial))
        .enumerate()
    {
        let ch = rows.channel(r, c * rows.spatial);
        let s_dy = rows::sum(dys) as f64;
        let s_dyx = (rows::dot_centered(dys, xs, mean) * rstd) as f64;
        db[ch] += s_dy;
        dw[ch] += s_dyx;
        sum_g += s_dy * w[ch] as f64;
        sum_gx += s_dyx * w[ch] as f64;
    }
    let (mean_g, mean_gx) = ((sum_g / n as f64) as f32, (sum_gx / n as f64) as f32);
    for (c, ((dxs, xs), dys)) in dxr
        .chunks_mut(rows.spatial)
        .zip(xr.chunks(rows.spatial))
        .zip(dyr.chunks(rows.spatial))
        .enumerate()
    {
        let wc = w[rows.channel(r, c * rows.spatial)];
        for ((dv, &xv), &d) in dxs.iter_mut().zip(xs).zip(dys) {
            let xhat = (xv - mean) * rstd;
            *dv = rstd * (d * wc - mean_g - xhat * mean_gx);
        }
    }
}

/// `(dx, dw, db)`. With an activation, each row's pre-activation `z` is recomputed and the
/// gradient taken through it first (`dz = dy·act'(z)`).
fn backward(
    rows: &Rows,
    act: Option<Unary>,
    x: &[f32],
    (w, b): (&[f32], &[f32]),
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // SAFETY: every row below writes each of its elements.
    let mut dx = unsafe { uninit_output(x.len()) };
    let threads = candle_core::utils::get_num_threads().max(1);
    let n_rows = x.len() / rows.len.max(1);
    let per_task = n_rows.div_ceil(threads).max(1);
    // Each task keeps its own affine gradients; they are added last.
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(rows.len * per_task)
        .enumerate()
        .map(|(t, dx_task)| {
            let (mut dw, mut db) = (vec![0f64; rows.channels], vec![0f64; rows.channels]);
            let mut dz = vec![0f32; if act.is_some() { rows.len } else { 0 }];
            vectorized!(for (i, dxr) in dx_task.chunks_mut(rows.len).enumerate() {
                let r = t * per_task + i;
                let span = r * rows.len..(r + 1) * rows.len;
                let (xr, dyr) = (&x[span.clone()], &dy[span]);
                let dyr = match act {
                    Some(op) => {
                        normalize_row(rows, r, xr, (w, b), &mut dz);
                        activation::chain_in_place(op, &mut dz, dyr);
                        &dz[..]
                    }
                    None => dyr,
                };
                backward_row(rows, r, (xr, dyr, dxr), w, (&mut dw, &mut db));
            });
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f64; rows.channels], vec![0f64; rows.channels]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (dx, to_f32(dw), to_f32(db))
}

/// `act(norm(x)·w + b)` over [`Rows`]; differentiable in all three.
#[derive(Debug, Clone, Copy)]
struct Normalize {
    rows: Rows,
    act: Option<Unary>,
    /// The profile's kind.
    kind: &'static str,
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "unetlab-normalize"
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
        let (x, w, b) = (
            contiguous_f32(xs, xl)?,
            contiguous_f32(ws, wl)?,
            contiguous_f32(bs, bl)?,
        );
        let y = forward(&self.rows, self.act, x, (w, b));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _span = profile::span(self.kind, Pass::Backward);
        let dy = dy.contiguous()?;
        let (dx, dw, db) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(b, |b| {
                    with_f32(&dy, |dy| backward(&self.rows, self.act, x, (w, b), dy))
                })
            })
        })????;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, w.shape(), device)?),
            Some(Tensor::from_vec(db, w.shape(), device)?),
        ))
    }
}

/// Whether the norm kernels take these operands (f32 on the CPU).
pub fn supported(x: &Tensor) -> bool {
    cpu_f32(&[x])
}

/// GroupNorm of `x` (`[B, C, ...]`) in `groups` groups with per-channel `w` and `b`, followed
/// by the activation `act` when there is one.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    eps: f64,
    (w, b): (&Tensor, &Tensor),
    act: Option<Unary>,
) -> Result<Tensor> {
    let dims = x.dims();
    let (batch, channels) = (dims[0], dims[1]);
    if groups == 0 || channels % groups != 0 || w.elem_count() != channels {
        bail!(
            "group_norm: {channels} channels, {groups} groups, weight {:?}",
            w.dims()
        );
    }
    let spatial = x.elem_count() / (batch * channels).max(1);
    let rows = Rows {
        len: channels / groups * spatial,
        groups,
        spatial,
        channels,
        eps,
    };
    let kind = if act.is_some() {
        "group norm + activation"
    } else {
        "group norm"
    };
    apply(x, w, b, Normalize { rows, act, kind })
}

/// LayerNorm of `x` over its last dimension with per-element `w` and `b`.
pub fn layer_norm(x: &Tensor, eps: f64, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    if w.elem_count() != d {
        bail!("layer_norm: last dimension {d}, weight {:?}", w.dims());
    }
    let rows = Rows {
        len: d,
        groups: 1,
        spatial: 1,
        channels: d,
        eps,
    };
    let op = Normalize {
        rows,
        act: None,
        kind: "layer norm",
    };
    apply(x, w, b, op)
}

fn apply(x: &Tensor, w: &Tensor, b: &Tensor, op: Normalize) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Ok(x.clone());
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::{Var, D};

    /// The composite norm the training path used before: standardise, then affine.
    fn composite(
        x: &Tensor,
        rows_of: &[usize],
        eps: f64,
        w: &Tensor,
        b: &Tensor,
        dim: usize,
    ) -> Tensor {
        let grouped = x.reshape(rows_of).unwrap();
        let centered = grouped
            .broadcast_sub(&grouped.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = centered
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .reshape(x.dims())
            .unwrap();
        let mut shape = vec![1; x.rank()];
        shape[dim] = x.dim(dim).unwrap();
        normed
            .broadcast_mul(&w.reshape(shape.as_slice()).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape(shape.as_slice()).unwrap())
            .unwrap()
    }

    fn check(ours: &Tensor, reference: &Tensor, vars: [&Var; 3], what: &str) {
        let e = rel_err(ours, reference);
        assert!(e <= 1e-5, "{what}: forward rel err {e}");
        let (g1, g2) = backward_both(ours, reference, 7);
        for (name, v) in ["input", "weight", "bias"].iter().zip(vars) {
            let e = rel_err(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(e <= 1e-4, "{what}: {name} gradient rel err {e}");
        }
    }

    /// Forward and every gradient against the composite ops: odd sizes, batch 1 and 3, one
    /// group, one channel per group, 3-D inputs, a spatial size of 1.
    #[test]
    fn group_norm_matches_the_composite() {
        for (i, (dims, groups)) in [
            (vec![2, 6, 5, 3], 3),
            (vec![1, 4, 7, 7], 1),
            (vec![3, 8, 4, 5], 8),
            (vec![2, 32, 3, 3], 4),
            (vec![3, 6, 1, 1], 2),
            (vec![2, 6, 9], 3),
        ]
        .into_iter()
        .enumerate()
        {
            let c = dims[1];
            let x = Var::from_tensor(&random(&dims, i as u64).affine(3.0, 0.5).unwrap()).unwrap();
            let w = Var::from_tensor(&random(&[c], 10 + i as u64)).unwrap();
            let b = Var::from_tensor(&random(&[c], 20 + i as u64)).unwrap();
            let rows = [dims[0], groups, x.elem_count() / (dims[0] * groups)];
            let reference = composite(&x, &rows, 1e-5, &w, &b, 1);
            // Plain, and followed by each activation (the fused res-block norm).
            let ours = group_norm(&x, groups, 1e-5, (&w, &b), None).unwrap();
            check(
                &ours,
                &reference,
                [&x, &w, &b],
                &format!("{dims:?}/{groups}"),
            );
            for op in [Unary::Silu, Unary::GeluErf, Unary::Relu] {
                let ours = group_norm(&x, groups, 1e-5, (&w, &b), Some(op)).unwrap();
                let reference = match op {
                    Unary::Silu => reference.silu().unwrap(),
                    Unary::GeluErf => reference.gelu_erf().unwrap(),
                    Unary::Relu => reference.relu().unwrap(),
                };
                check(
                    &ours,
                    &reference,
                    [&x, &w, &b],
                    &format!("{dims:?}/{groups} {op:?}"),
                );
            }
        }
    }

    #[test]
    fn layer_norm_matches_the_composite() {
        for (i, dims) in [vec![2, 7, 10], vec![1, 1, 3], vec![3, 5], vec![2, 3, 4, 16]]
            .into_iter()
            .enumerate()
        {
            let d = *dims.last().unwrap();
            let x = Var::from_tensor(&random(&dims, 30 + i as u64)).unwrap();
            let w = Var::from_tensor(&random(&[d], 40 + i as u64)).unwrap();
            let b = Var::from_tensor(&random(&[d], 50 + i as u64)).unwrap();
            let ours = layer_norm(&x, 1e-6, &w, &b).unwrap();
            let rows = [x.elem_count() / d, d];
            let reference = composite(&x, &rows, 1e-6, &w, &b, dims.len() - 1);
            check(&ours, &reference, [&x, &w, &b], &format!("{dims:?}"));
        }
    }
}
