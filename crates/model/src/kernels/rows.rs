//! Row reductions and the row softmax that the kernels share, written so that the compiler
//! vectorises them: a plain `iter().sum()` over f32 is one serial chain of additions (IEEE order
//! forbids reassociating it), four cycles an element; here each of [`LANES`] lanes keeps its own
//! partial result, and the lanes are combined once at the end. Call them inside
//! `vectorized!` so they are built for the CPU's widest vectors.

use super::activation::fast_exp;

/// Independent partial results per reduction (one AVX-512 register of f32).
const LANES: usize = 16;

/// Combines `xs` (and `ys`, as long) lane-wise with `f`, starting from `init`, then the lanes
/// with `combine`.
#[inline(always)]
fn reduce2(
    xs: &[f32],
    ys: &[f32],
    init: f32,
    f: impl Fn(f32, f32, f32) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    debug_assert_eq!(xs.len(), ys.len());
    let mut acc = [init; LANES];
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (x, y) in xc.zip(yc) {
        for l in 0..LANES {
            acc[l] = f(acc[l], x[l], y[l]);
        }
    }
    for (l, (&x, &y)) in xr.iter().zip(yr).enumerate() {
        acc[l] = f(acc[l], x, y);
    }
    acc.into_iter().fold(init, combine)
}

/// `Σ xᵢ`.
#[inline(always)]
pub(super) fn sum(xs: &[f32]) -> f32 {
    reduce2(xs, xs, 0.0, |a, x, _| a + x, |a, b| a + b)
}

/// `Σ xᵢ·yᵢ`.
#[inline(always)]
pub(super) fn dot(xs: &[f32], ys: &[f32]) -> f32 {
    reduce2(xs, ys, 0.0, |a, x, y| a + x * y, |a, b| a + b)
}

/// `Σ xᵢ·(yᵢ − c)`.
#[inline(always)]
pub(super) fn dot_centered(xs: &[f32], ys: &[f32], c: f32) -> f32 {
    reduce2(xs, ys, 0.0, |a, x, y| a + x * (y - c), |a, b| a + b)
}

/// `Σ (xᵢ − c)²`.
#[inline(always)]
pub(super) fn sum_sq_dev(xs: &[f32], c: f32) -> f32 {
    reduce2(xs, xs, 0.0, |a, x, _| a + (x - c) * (x - c), |a, b| a + b)
}

/// `max xᵢ` (−∞ for an empty row; NaNs are skipped unless first).
#[inline(always)]
pub(super) fn max(xs: &[f32]) -> f32 {
    // A compare-and-select is one `max` instruction; `f32::max` also orders NaNs, which costs a
    // compare and a blend per vector.
    let bigger = |a: f32, b: f32| if b > a { b } else { a };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for x in chunks {
        for l in 0..LANES {
            acc[l] = bigger(acc[l], x[l]);
        }
    }
    rest.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |a, &b| bigger(a, b))
}

/// The softmax of `scale·row` (`scale > 0`), in place: `exp(scale·(row − max)) / Σ …`, the
/// exponentials and their sum in one pass.
#[inline(always)]
pub(super) fn softmax_in_place(row: &mut [f32], scale: f32) {
    let shift = -scale * max(row);
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for x in &mut chunks {
        for l in 0..LANES {
            x[l] = fast_exp(scale.mul_add(x[l], shift));
            acc[l] += x[l];
        }
    }
    let rest = chunks.into_remainder();
    for x in rest.iter_mut() {
        *x = fast_exp(scale.mul_add(*x, shift));
    }
    let inv = 1.0 / (sum(rest) + acc.iter().sum::<f32>());
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The softmax's input gradient from its output `y` and output gradient `dy`, written over `dy`:
/// `dx = y·(dy − Σ dy·y)`.
#[inline(always)]
pub(super) fn softmax_grad_in_place(dy: &mut [f32], y: &[f32]) {
    let d = dot(dy, y);
    dy.iter_mut().zip(y).for_each(|(g, &p)| *g = p * (*g - d));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reduction against a serial f64 loop, on lengths below, at and around the lane count.
    #[test]
    fn reductions_match_serial_sums() {
        for len in [0, 1, 5, 16, 17, 40, 1000] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let ys: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 9.0)
                .collect();
            let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0);
            let s: f64 = xs.iter().map(|&x| x as f64).sum();
            assert!(close(sum(&xs), s), "sum {len}");
            let d: f64 = xs.iter().zip(&ys).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!(close(dot(&xs, &ys), d), "dot {len}");
            let q: f64 = xs.iter().map(|&x| (x as f64 - 0.5).powi(2)).sum();
            assert!(close(sum_sq_dev(&xs, 0.5), q), "sum_sq_dev {len}");
            let c: f64 = xs
                .iter()
                .zip(&ys)
                .map(|(&x, &y)| x as f64 * (y as f64 - 0.5))
                .sum();
            assert!(close(dot_centered(&xs, &ys, 0.5), c), "dot_centered {len}");
            let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), m, "max {len}");
        }
    }
}
