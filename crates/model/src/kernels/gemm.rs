//! Row-major f32 matrix products through the `gemm` crate, on strided views (transposes are
//! free), shared by the conv and linear kernels.

use gemm::Parallelism;
use rayon::prelude::*;

use super::uninit_output;

/// A matrix view: `data[i·row_stride + j·col_stride]` for `i < rows`, `j < cols`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix.
    pub(super) fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A `rows × cols` matrix at `data[i·row_stride + j]` (one attention head of a token-major
    /// tensor).
    pub(super) fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> View<'a> {
        View {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// Rows `start..start + rows` (no copy).
    pub(super) fn row_block(self, start: usize, rows: usize) -> View<'a> {
        View {
            data: &self.data[(start * self.row_stride).min(self.data.len())..],
            rows,
            ..self
        }
    }

    /// The transpose (no copy).
    pub(super) fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Columns `range` (no copy).
    fn cols(self, range: std::ops::Range<usize>) -> View<'a> {
        View {
            data: &self.data[(range.start * self.col_stride).min(self.data.len())..],
            cols: range.len(),
            ..self
        }
    }

    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst = a · b` (row-major `dst`), or `dst += a · b` when `accumulate`.
pub(super) fn matmul(dst: &mut [f32], a: View, b: View, accumulate: bool, threads: usize) {
    assert!(dst.len() == a.rows * b.cols);
    // SAFETY: `dst` is exactly the `m × n` row-major block, borrowed mutably.
    unsafe { matmul_strided(dst.as_mut_ptr(), b.cols, a, b, accumulate, threads) }
}

/// [`matmul`] into `dst[i·row_stride + j]` (`i < a.rows`, `j < b.cols`): a block of columns of a
/// wider row-major matrix.
///
/// # Safety
/// Those elements of `dst` must be valid for writes and accessed by nothing else during the
/// call; `row_stride >= b.cols`.
pub(super) unsafe fn matmul_strided(
    dst: *mut f32,
    row_stride: usize,
    a: View,
    b: View,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && row_stride >= n && a.in_bounds() && b.in_bounds());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row `i` of the caller's m × n block at `row_stride`.
                unsafe { std::slice::from_raw_parts_mut(dst.add(i * row_stride), n) }.fill(0.0);
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every index gemm reads is inside `a` and `b` (checked above); every index it
    // writes is one of the caller's (m × n at `row_stride`), which nothing else accesses.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// This machine's f32 GEMM rate, GFLOP/s: the fastest of five `n × n × n` products (`n` = 1024)
/// through the `gemm` crate on candle's threads, called as the conv and linear kernels call it.
/// The roofline that `unetlab bench --profile` sets each kind of op against.
pub fn peak_gflops_per_s() -> f64 {
    const N: usize = 1024;
    let (a, b) = (vec![1.0f32; N * N], vec![0.5f32; N * N]);
    let mut c = vec![0f32; N * N];
    let threads = candle_core::utils::get_num_threads().max(1);
    let fastest = (0..5)
        .map(|_| {
            let start = std::time::Instant::now();
            matmul(
                &mut c,
                View::rows(&a, N, N),
                View::rows(&b, N, N),
                false,
                threads,
            );
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (N * N * N) as f64 / fastest / 1e9
}

/// `dst = a · b`; when the inner dimension is longer than the result's sides (a weight gradient
/// summed over many rows), it is split over the threads, each part a one-thread product
/// into its own buffer, and the parts are added. The `gemm` crate spreads a product over the
/// rows and columns of its result, which leaves threads idle when the result is small.
pub(super) fn matmul_long_inner(dst: &mut [f32], a: View, b: View, threads: usize) {
    let k = a.cols;
    let parts = threads.min(k / 64).max(1);
    if parts == 1 || k < a.rows.max(b.cols) {
        return matmul(dst, a, b, false, threads);
    }
    let per_part = k.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let range = p * per_part..((p + 1) * per_part).min(k);
            // SAFETY: a product that does not accumulate writes every element.
            let mut part = unsafe { uninit_output(dst.len()) };
            matmul(
                &mut part,
                a.cols(range.clone()),
                b.t().cols(range).t(),
                false,
                1,
            );
            part
        })
        .collect();
    dst.copy_from_slice(&partials[0]);
    for p in &partials[1..] {
        dst.iter_mut().zip(p).for_each(|(d, v)| *d += v);
    }
}
