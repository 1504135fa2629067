//! Dense 2-D convolution (one group) on the CPU in f32, as GEMMs through the `gemm` crate, with
//! an analytic backward: candle 0.11 computes a CPU conv as dot products and its gradients through
//! further convs, several times slower than its own matmul.
//!
//! Per image, with `cols` the im2col matrix (C·K·K × Ho·Wo; a 1×1 conv of stride 1 uses the image
//! itself):
//! - forward: `y = W · cols` (W as O × C·K·K);
//! - input gradient: `dcols = Wᵀ · dy`, scattered back by col2im;
//! - weight gradient: `dW = Σ_images dy · colsᵀ`.
//!
//! Work is split over images when the batch can keep every thread busy, else each GEMM uses every
//! thread.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::gemm::{matmul, matmul_long_inner, matmul_strided, View};
use super::{
    bias, contiguous_f32, cpu_f32, frozen, uninit_output, winograd, with_f32, DisjointWrites,
};
use crate::profile::{self, Pass};

/// Input, kernel and output sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) batch: usize,
    pub(super) channels: usize,
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) out_channels: usize,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) out_height: usize,
    pub(super) out_width: usize,
}

impl Geometry {
    pub(super) fn new(x: &[usize], w: &[usize], stride: usize, padding: usize) -> Result<Geometry> {
        let (&[batch, channels, height, width], &[out_channels, wc, kh, kw]) = (x, w) else {
            bail!("conv2d kernel: want 4-D input and weight, got {x:?} and {w:?}")
        };
        if wc != channels || kh != kw || stride == 0 {
            bail!("conv2d kernel: input {x:?}, weight {w:?}, stride {stride}: unsupported")
        }
        let span = |n: usize| (n + 2 * padding).checked_sub(kh).map(|d| d / stride + 1);
        let (Some(out_height), Some(out_width)) = (span(height), span(width)) else {
            bail!("conv2d kernel: kernel {kh} larger than the padded input {x:?}")
        };
        Ok(Geometry {
            batch,
            channels,
            height,
            width,
            out_channels,
            kernel: kh,
            stride,
            padding,
            out_height,
            out_width,
        })
    }

    /// Rows of the im2col matrix: C·K·K.
    fn patch(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    pub(super) fn in_pixels(&self) -> usize {
        self.height * self.width
    }

    pub(super) fn out_pixels(&self) -> usize {
        self.out_height * self.out_width
    }

    /// A 1×1 conv of stride 1 without padding: the image is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// For each kernel offset, the range of outputs along an axis of `size` inputs whose tap
    /// falls inside the image: `(first, end)` with `in = out·stride + offset - padding`.
    pub(super) fn valid(&self, offset: usize, size: usize, outputs: usize) -> (usize, usize) {
        let (s, shift) = (
            self.stride as isize,
            offset as isize - self.padding as isize,
        );
        let first = (-shift).max(0).div_ceil_positive(s);
        let last = ((size as isize - 1 - shift).div_floor_nonneg(s) + 1).min(outputs as isize);
        (first as usize, last.max(first) as usize)
    }
}

trait IntDiv {
    fn div_ceil_positive(self, d: isize) -> isize;
    fn div_floor_nonneg(self, d: isize) -> isize;
}

impl IntDiv for isize {
    /// `ceil(self / d)` for `self >= 0`, `d > 0`.
    fn div_ceil_positive(self, d: isize) -> isize {
        (self + d - 1) / d
    }
    /// `floor(self / d)` for `d > 0`, -1 for negative `self` (no valid output).
    fn div_floor_nonneg(self, d: isize) -> isize {
        if self < 0 {
            -1
        } else {
            self / d
        }
    }
}

/// Writes channel `c` of `n` images `x` (N × C × H × W) as its K·K rows of an im2col matrix
/// whose rows are `row_stride` long, for the output rows `out_rows` only: image `i` in columns
/// `i·len..(i + 1)·len`, `len` being those rows' pixels; padding reads as zero.
fn im2col_channel(
    g: &Geometry,
    x: &[f32],
    (n, c): (usize, usize),
    out_rows: std::ops::Range<usize>,
    rows: &mut [f32],
    row_stride: usize,
) {
    let (k, wo) = (g.kernel, g.out_width);
    let len = out_rows.len() * wo;
    for i in 0..n {
        let plane = &x[(i * g.channels + c) * g.in_pixels()..][..g.in_pixels()];
        for ki in 0..k {
            let (y0, y1) = g.valid(ki, g.height, g.out_height);
            for kj in 0..k {
                let (x0, x1) = g.valid(kj, g.width, wo);
                let out = &mut rows[(ki * k + kj) * row_stride + i * len..][..len];
                out.fill(0.0);
                for oy in y0.max(out_rows.start)..y1.min(out_rows.end) {
                    let iy = oy * g.stride + ki - g.padding;
                    let src = &plane[iy * g.width..(iy + 1) * g.width];
                    let dst = &mut out[(oy - out_rows.start) * wo..][..wo];
                    if g.stride == 1 {
                        let ix0 = x0 + kj - g.padding;
                        dst[x0..x1].copy_from_slice(&src[ix0..ix0 + (x1 - x0)]);
                    } else {
                        for ox in x0..x1 {
                            dst[ox] = src[ox * g.stride + kj - g.padding];
                        }
                    }
                }
            }
        }
    }
}

/// Writes image `x` (C × H × W) as the im2col matrix (C·K·K × pixels) of the output rows
/// `out_rows`.
fn im2col(g: &Geometry, x: &[f32], out_rows: std::ops::Range<usize>, cols: &mut [f32]) {
    let (kk, len) = (g.kernel * g.kernel, out_rows.len() * g.out_width);
    for (c, rows) in cols.chunks_mut(kk * len).enumerate() {
        im2col_channel(g, x, (1, c), out_rows.clone(), rows, len);
    }
}

/// Adds image `offset`'s columns of an im2col-shaped gradient (C·K·K rows of `row_stride`) back
/// onto its image gradient `dx` (C × H × W).
fn col2im(g: &Geometry, cols: &[f32], row_stride: usize, offset: usize, dx: &mut [f32]) {
    let (k, (ho, wo)) = (g.kernel, (g.out_height, g.out_width));
    for c in 0..g.channels {
        let plane = &mut dx[c * g.in_pixels()..(c + 1) * g.in_pixels()];
        for ki in 0..k {
            let (y0, y1) = g.valid(ki, g.height, ho);
            for kj in 0..k {
                let (x0, x1) = g.valid(kj, g.width, wo);
                let row = (c * k + ki) * k + kj;
                let src = &cols[row * row_stride + offset * g.out_pixels()..][..g.out_pixels()];
                for oy in y0..y1 {
                    let iy = oy * g.stride + ki - g.padding;
                    let dst = &mut plane[iy * g.width..(iy + 1) * g.width];
                    let from = &src[oy * wo..(oy + 1) * wo];
                    if g.stride == 1 {
                        let ix0 = x0 + kj - g.padding;
                        dst[ix0..ix0 + (x1 - x0)]
                            .iter_mut()
                            .zip(&from[x0..x1])
                            .for_each(|(d, &v)| *d += v);
                    } else {
                        for ox in x0..x1 {
                            dst[ox * g.stride + kj - g.padding] += from[ox];
                        }
                    }
                }
            }
        }
    }
}

/// Output pixels per image below which the batch's images become the columns of one product
/// (`W · [cols₀ cols₁ …]`) instead of one product per image, too narrow to run fast. Measured
/// on 2 threads: at 4 × 4 outputs and above, gathering the batch costs more than it gains.
const BATCHED_BELOW: usize = 16;

/// The whole batch's im2col matrix (C·K·K × N·Ho·Wo), built over the threads by channel.
fn im2col_batch(g: &Geometry, x: &[f32]) -> Vec<f32> {
    let (kk, stride) = (g.kernel * g.kernel, g.batch * g.out_pixels());
    let mut cols = vec![0f32; g.patch() * stride];
    cols.par_chunks_mut(kk * stride)
        .enumerate()
        .for_each(|(c, rows)| im2col_channel(g, x, (g.batch, c), 0..g.out_height, rows, stride));
    cols
}

/// `[N, C, P]` ↔ `[C, N·P]`: a batch of per-image matrices and one matrix with the images side
/// by side (`to_columns` says which way).
fn swap_batch(
    src: &[f32],
    batch: usize,
    channels: usize,
    pixels: usize,
    to_columns: bool,
) -> Vec<f32> {
    // SAFETY: the segments below tile `dst`.
    let mut dst = unsafe { uninit_output(src.len()) };
    if to_columns {
        dst.par_chunks_mut(batch * pixels)
            .enumerate()
            .for_each(|(c, row)| {
                for (i, seg) in row.chunks_mut(pixels).enumerate() {
                    seg.copy_from_slice(&src[(i * channels + c) * pixels..][..pixels]);
                }
            });
    } else {
        dst.par_chunks_mut(channels * pixels)
            .enumerate()
            .for_each(|(i, image)| {
                for (c, seg) in image.chunks_mut(pixels).enumerate() {
                    seg.copy_from_slice(&src[(c * batch + i) * pixels..][..pixels]);
                }
            });
    }
    dst
}

fn forward_batched(g: &Geometry, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let stride = g.batch * g.out_pixels();
    let cols = im2col_batch(g, x);
    // SAFETY: the bias fill or the product (not accumulating) writes every element.
    let mut y = unsafe { uninit_output(g.out_channels * stride) };
    if let Some(b) = b {
        bias::fill(&mut y, b, stride);
    }
    let threads = candle_core::utils::get_num_threads().max(1);
    let weights = View::rows(w, g.out_channels, g.patch());
    matmul(
        &mut y,
        weights,
        View::rows(&cols, g.patch(), stride),
        b.is_some(),
        threads,
    );
    swap_batch(&y, g.batch, g.out_channels, g.out_pixels(), false)
}

fn grad_input_batched(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let stride = g.batch * g.out_pixels();
    let dy = swap_batch(dy, g.batch, g.out_channels, g.out_pixels(), true);
    let mut dcols = vec![0f32; g.patch() * stride];
    let threads = candle_core::utils::get_num_threads().max(1);
    let weights_t = View::rows(w, g.out_channels, g.patch()).t();
    matmul(
        &mut dcols,
        weights_t,
        View::rows(&dy, g.out_channels, stride),
        false,
        threads,
    );
    let mut dx = vec![0f32; g.batch * g.channels * g.in_pixels()];
    dx.par_chunks_mut(g.channels * g.in_pixels())
        .enumerate()
        .for_each(|(i, dxi)| vectorized!(col2im(g, &dcols, stride, i, dxi)));
    dx
}

fn grad_weight_batched(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let stride = g.batch * g.out_pixels();
    let dy = swap_batch(dy, g.batch, g.out_channels, g.out_pixels(), true);
    let cols = im2col_batch(g, x);
    let mut dw = vec![0f32; g.out_channels * g.patch()];
    let threads = candle_core::utils::get_num_threads().max(1);
    matmul_long_inner(
        &mut dw,
        View::rows(&dy, g.out_channels, stride),
        View::rows(&cols, g.patch(), stride).t(),
        threads,
    );
    dw
}

/// How to spread `images` over the threads: `(images per task, GEMM threads)`. Whole images per
/// thread when there are enough of them (one task of every image on one thread), else one image
/// at a time with threaded GEMMs.
fn split(images: usize) -> (usize, usize) {
    let threads = candle_core::utils::get_num_threads().max(1);
    if images >= threads {
        (images.div_ceil(threads), 1)
    } else {
        (1, threads)
    }
}

/// `y = conv(x, w)`, plus the bias `b` when there is one: the output starts as the bias planes
/// and the product adds to it.
fn forward(g: &Geometry, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    if winograd::applies(g, false) {
        winograd::forward(g, x, w, b)
    } else if g.out_pixels() < BATCHED_BELOW {
        forward_batched(g, x, w, b)
    } else {
        forward_per_image(g, x, w, b)
    }
}

/// Bytes of im2col matrix that one task of a conv's forward builds and multiplies at a time: a
/// block of output rows whose columns stay in cache between the copy and the product, instead
/// of a matrix of every output pixel (47 MB for a 3 × 3 conv of 320 channels at 64 × 64).
/// Measured on 2 threads (MobileDiffusion's forward 1.2× faster): 2 to 8 MiB are as fast.
const BLOCK_BYTES: usize = 4 << 20;

/// Blocks of output rows per image in [`forward_per_image`]: enough that each block's im2col
/// matrix fits [`BLOCK_BYTES`], and when the batch is smaller than the threads, a multiple of
/// the blocks each image needs so that every thread has the same share (a 16-row image in
/// blocks of 7, 7 and 2 rows leaves one of two threads idle for a ninth of the conv).
fn blocks_per_image(g: &Geometry) -> usize {
    let row_bytes = 4 * g.patch() * g.out_width;
    row_blocks(g.batch, g.out_height, row_bytes, BLOCK_BYTES)
}

/// Blocks to cut an image's `rows` into when each row holds `row_bytes` of work buffers: enough
/// that a block fits `budget`, and with a batch smaller than the threads a multiple of the
/// blocks each image needs to give every thread a share. Shared with the Winograd forward.
pub(super) fn row_blocks(batch: usize, rows: usize, row_bytes: usize, budget: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().max(1);
    let per_image = threads.div_ceil(batch.max(1));
    let fit = (budget / row_bytes.max(1)).max(1);
    rows.div_ceil(fit)
        .div_ceil(per_image)
        .saturating_mul(per_image)
        .clamp(1, rows.max(1))
}

fn forward_per_image(g: &Geometry, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    forward_in_row_blocks(g, x, w, b, blocks_per_image(g))
}

/// Each task takes one of `blocks` blocks of output rows of one image (their heights differ by
/// at most one row): builds its im2col columns (a 1×1 conv of stride 1 reads the image itself)
/// and multiplies them on one thread into its block of the output's columns, which starts as
/// the bias when there is one.
fn forward_in_row_blocks(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    blocks: usize,
) -> Vec<f32> {
    let (patch, pin, pout, wo) = (g.patch(), g.in_pixels(), g.out_pixels(), g.out_width);
    // SAFETY: the blocks below tile the output, and each one's bias fill or product (not
    // accumulating) writes all of it.
    let mut y = unsafe { uninit_output(g.batch * g.out_channels * pout) };
    let weights = View::rows(w, g.out_channels, patch);
    let blocks = blocks.clamp(1, g.out_height.max(1));
    let tasks = g.batch * blocks;
    let threads = candle_core::utils::get_num_threads().max(1);
    let gemm_threads = (threads / tasks).max(1);
    let out = DisjointWrites::new(&mut y);
    (0..tasks)
        .into_par_iter()
        .for_each_init(Vec::new, |cols, task| {
            let (image, block) = (task / blocks, task % blocks);
            let row = |b: usize| b * g.out_height / blocks;
            let out_rows = row(block)..row(block + 1);
            let (first, len) = (out_rows.start * wo, out_rows.len() * wo);
            let xi = &x[image * g.channels * pin..][..g.channels * pin];
            let rhs = if g.pointwise() {
                View::strided(&xi[first..], patch, len, pin)
            } else {
                if cols.len() < patch * len {
                    // SAFETY: im2col writes every element it is asked for before the product reads.
                    *cols = unsafe { uninit_output(patch * len) };
                }
                let cols = &mut cols[..patch * len];
                im2col(g, xi, out_rows, cols);
                View::rows(cols, patch, len)
            };
            let offset = image * g.out_channels * pout + first;
            // SAFETY: the tasks' blocks (an image's output channels × a range of its pixels) are
            // disjoint, and `y` outlives the loop.
            unsafe {
                let dst = out.block(offset, g.out_channels, len, pout);
                if let Some(b) = b {
                    for (o, &bv) in b.iter().enumerate() {
                        std::slice::from_raw_parts_mut(dst.add(o * pout), len).fill(bv);
                    }
                }
                matmul_strided(dst, pout, weights, rhs, b.is_some(), gemm_threads);
            }
        });
    y
}

/// The input gradient. For a stride of 1 it is itself a convolution, of `dy` with the kernel
/// flipped in space and its channels swapped, at padding `K − 1 − p`: a product over `O·K·K`
/// into `C × H·W` per image, instead of one over only `O` into a `C·K·K × H·W` buffer that
/// col2im then folds. Measured on 2 threads, that is faster when the conv narrows the channels
/// (`C > O`, as in the decoder) and not otherwise.
fn grad_input(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if g.stride == 1 && g.kernel > 1 && g.padding < g.kernel && g.channels > g.out_channels {
        let (o, c, k) = (g.out_channels, g.channels, g.kernel);
        let mut flipped = vec![0f32; w.len()];
        for (oc, taps) in w.chunks(k * k).enumerate() {
            let (oi, ci) = (oc / c, oc % c);
            let dst = &mut flipped[(ci * o + oi) * k * k..][..k * k];
            dst.iter_mut()
                .zip(taps.iter().rev())
                .for_each(|(d, &t)| *d = t);
        }
        let transposed = Geometry::new(
            &[g.batch, o, g.out_height, g.out_width],
            &[c, o, k, k],
            1,
            k - 1 - g.padding,
        )
        .expect("the transposed geometry of a valid stride-1 convolution is valid");
        return forward(&transposed, dy, &flipped, None);
    }
    if g.out_pixels() < BATCHED_BELOW {
        grad_input_batched(g, dy, w)
    } else {
        grad_input_per_image(g, dy, w)
    }
}

fn grad_input_per_image(g: &Geometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (patch, pin, pout) = (g.patch(), g.in_pixels(), g.out_pixels());
    let mut dx = vec![0f32; g.batch * g.channels * pin];
    let weights_t = View::rows(w, g.out_channels, patch).t();
    let (per_task, threads) = split(g.batch);
    let images: Vec<_> = dy
        .chunks(g.out_channels * pout)
        .zip(dx.chunks_mut(g.channels * pin))
        .collect();
    images.into_par_iter().with_min_len(per_task).for_each_init(
        || vec![0f32; if g.pointwise() { 0 } else { patch * pout }],
        |cols, (dyi, dxi)| {
            let rhs = View::rows(dyi, g.out_channels, pout);
            if g.pointwise() {
                matmul(dxi, weights_t, rhs, false, threads);
            } else {
                matmul(cols, weights_t, rhs, false, threads);
                vectorized!(col2im(g, cols, pout, 0, dxi));
            }
        },
    );
    dx
}

fn grad_weight(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if g.out_pixels() < BATCHED_BELOW {
        grad_weight_batched(g, x, dy)
    } else {
        grad_weight_per_image(g, x, dy)
    }
}

fn grad_weight_per_image(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (patch, pin, pout) = (g.patch(), g.in_pixels(), g.out_pixels());
    let (per_task, threads) = split(g.batch);
    let images: Vec<_> = x
        .chunks(g.channels * pin)
        .zip(dy.chunks(g.out_channels * pout))
        .collect();
    // Each task sums its images' gradients into its own buffer; the buffers are added last.
    let partials: Vec<Vec<f32>> = images
        .par_chunks(per_task)
        .map(|chunk| {
            let mut dw = vec![0f32; g.out_channels * patch];
            let mut cols = vec![0f32; if g.pointwise() { 0 } else { patch * pout }];
            for (i, (xi, dyi)) in chunk.iter().enumerate() {
                let lhs = View::rows(dyi, g.out_channels, pout);
                let rhs = if g.pointwise() {
                    View::rows(xi, patch, pout).t()
                } else {
                    im2col(g, xi, 0..g.out_height, &mut cols);
                    View::rows(&cols, patch, pout).t()
                };
                matmul(&mut dw, lhs, rhs, i > 0, threads);
            }
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials
        .next()
        .unwrap_or_else(|| vec![0f32; g.out_channels * patch]);
    for p in partials {
        dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    dw
}

/// The convolution as a candle op: `(x, w)` without a bias, `(x, w, b)` with one.
#[derive(Debug, Clone)]
struct Conv2d {
    stride: usize,
    padding: usize,
    /// The weights transformed for the Winograd forward, kept while they are frozen.
    winograd_weights: Option<Arc<Vec<f32>>>,
}

impl Conv2d {
    fn forward(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        b: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(xl.dims(), wl.dims(), self.stride, self.padding)?;
        if b.is_some_and(|b| b.len() != g.out_channels) {
            bail!(
                "conv2d kernel: bias does not match {} outputs",
                g.out_channels
            )
        }
        let (x, w) = (contiguous_f32(xs, xl)?, contiguous_f32(ws, wl)?);
        let y = match &self.winograd_weights {
            Some(u) => winograd::forward_transformed(&g, x, u, b),
            None => forward(&g, x, w, b),
        };
        let shape = (g.batch, g.out_channels, g.out_height, g.out_width);
        Ok((CpuStorage::F32(y), shape.into()))
    }

    /// `(dx, dw, db)` (`db` when `bias`).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        bias: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let g = Geometry::new(x.dims(), w.dims(), self.stride, self.padding)?;
        let _span = profile::span(
            if g.kernel == 1 {
                "conv 1x1"
            } else {
                "conv 3x3"
            },
            Pass::Backward,
        );
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &GradInput(g))?;
        let dw = x.apply_op2_no_bwd(&dy, &GradWeight(g))?;
        let db = if bias {
            let sums = with_f32(&dy, |dy| {
                bias::channel_sums(dy, g.out_channels, g.out_pixels())
            })?;
            Some(Tensor::from_vec(sums, g.out_channels, dy.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "unetlab-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((xs, xl), (ws, wl), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, dy, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "unetlab-conv2d-bias"
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
        self.forward((xs, xl), (ws, wl), Some(contiguous_f32(bs, bl)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, dy, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

/// `dx` from `(dy, w)`.
struct GradInput(Geometry);

impl CustomOp2 for GradInput {
    fn name(&self) -> &'static str {
        "unetlab-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        dys: &CpuStorage,
        dyl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let dx = grad_input(g, contiguous_f32(dys, dyl)?, contiguous_f32(ws, wl)?);
        let shape = (g.batch, g.channels, g.height, g.width);
        Ok((CpuStorage::F32(dx), shape.into()))
    }
}

/// `dw` from `(x, dy)`.
struct GradWeight(Geometry);

impl CustomOp2 for GradWeight {
    fn name(&self) -> &'static str {
        "unetlab-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let dw = grad_weight(g, contiguous_f32(xs, xl)?, contiguous_f32(dys, dyl)?);
        let shape = (g.out_channels, g.channels, g.kernel, g.kernel);
        Ok((CpuStorage::F32(dw), shape.into()))
    }
}

/// Whether [`conv2d`] takes the GEMM kernel for these operands (f32 on the CPU, square kernel,
/// one group, a 1-D bias as long as the output channels); otherwise callers use candle's conv.
pub fn supported(x: &Tensor, w: &Tensor, b: Option<&Tensor>, groups: usize) -> bool {
    cpu_f32(&[x, w])
        && groups == 1
        && x.rank() == 4
        && w.rank() == 4
        && w.dim(2).ok() == w.dim(3).ok()
        && bias::fits(b, w)
}

/// `conv2d(x, w) (+ b)` with one group, square kernel, equal padding on every side;
/// differentiable in all of them. Check [`supported`] first.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let g = Geometry::new(x.dims(), w.dims(), stride, padding)?;
    let winograd_weights = if winograd::applies(&g, true) {
        frozen::derived(&w, winograd::FROZEN_KIND, || {
            with_f32(&w, |w| winograd::transform_weights(&g, w))
        })?
    } else {
        None
    };
    let op = Conv2d {
        stride,
        padding,
        winograd_weights,
    };
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{backward_both, random, rel_err};
    use candle_core::{Device, Var};

    /// The convolution from differentiable candle primitives, independent of any conv kernel:
    /// for each tap, the strided input pixels it reads (`index_select` on the padded input)
    /// multiplied by that tap's weights. (candle's own conv backward fails on stride 2 when the
    /// stride does not divide the padded size, so it cannot serve as the reference there.)
    fn composite_conv(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Tensor {
        let (b, c, h, wd) = x.dims4().unwrap();
        let (o, _, k, _) = w.dims4().unwrap();
        let (ho, wo) = (
            (h + 2 * padding - k) / stride + 1,
            (wd + 2 * padding - k) / stride + 1,
        );
        let padded = x
            .pad_with_zeros(2, padding, padding)
            .unwrap()
            .pad_with_zeros(3, padding, padding)
            .unwrap();
        let taps = |offset: usize, n: usize| {
            let idx: Vec<u32> = (0..n).map(|i| (i * stride + offset) as u32).collect();
            Tensor::new(idx.as_slice(), &Device::Cpu).unwrap()
        };
        let mut y = Tensor::zeros((b, o, ho * wo), candle_core::DType::F32, &Device::Cpu).unwrap();
        for ki in 0..k {
            for kj in 0..k {
                let pixels = padded
                    .index_select(&taps(ki, ho), 2)
                    .unwrap()
                    .index_select(&taps(kj, wo), 3)
                    .unwrap()
                    .reshape((b, c, ho * wo))
                    .unwrap();
                let tap = w
                    .narrow(2, ki, 1)
                    .unwrap()
                    .narrow(3, kj, 1)
                    .unwrap()
                    .reshape((1, o, c))
                    .unwrap()
                    .broadcast_as((b, o, c))
                    .unwrap();
                y = (y + tap.matmul(&pixels).unwrap()).unwrap();
            }
        }
        y.reshape((b, o, ho, wo)).unwrap()
    }

    /// Awkward geometries `(input, weight, stride, padding)`: odd sizes, batch 1 and 3, one
    /// channel, stride 2 with and without a remainder, non-square inputs, 1×1 with and without
    /// padding and stride, kernels that overhang the input, outputs below 4×4.
    const AWKWARD: &[([usize; 4], [usize; 4], usize, usize)] = &[
        ([2, 3, 7, 5], [4, 3, 3, 3], 1, 1),
        ([1, 1, 9, 9], [1, 1, 3, 3], 1, 1),
        ([3, 5, 8, 11], [6, 5, 3, 3], 2, 1),
        ([3, 5, 7, 7], [2, 5, 3, 3], 2, 1),
        ([2, 4, 6, 3], [5, 4, 1, 1], 1, 0),
        ([1, 6, 5, 5], [3, 6, 1, 1], 2, 0),
        ([2, 3, 4, 4], [2, 3, 1, 1], 1, 1),
        ([1, 2, 5, 6], [3, 2, 3, 3], 1, 0),
        ([2, 2, 2, 2], [3, 2, 3, 3], 1, 1),
        ([4, 3, 16, 16], [8, 3, 3, 3], 1, 1),
        // Narrowing stride-1 convs: the input gradient as a transposed convolution.
        ([2, 6, 5, 7], [4, 6, 3, 3], 1, 1),
        ([1, 5, 6, 6], [2, 5, 3, 3], 1, 0),
        ([3, 8, 2, 2], [4, 8, 3, 3], 1, 1),
    ];

    /// Forward against candle's conv2d, and forward and both gradients against the composite
    /// conv, on [`AWKWARD`] geometries, every other one with a bias.
    #[test]
    fn matches_candle_forward_and_backward() {
        let cases = AWKWARD;
        for (i, &(xs, ws, stride, padding)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&random(&xs, 2 * i as u64)).unwrap();
            let w = Var::from_tensor(&random(&ws, 2 * i as u64 + 1)).unwrap();
            // Every other case with a bias.
            let b = Var::from_tensor(&random(&[ws[0]], 50 + i as u64)).unwrap();
            let bias = (i % 2 == 1).then_some(b.as_tensor());
            let ours = conv2d(&x, &w, bias, stride, padding).unwrap();
            let mut candle = x.conv2d(&w, padding, stride, 1, 1).unwrap();
            let mut reference = composite_conv(&x, &w, stride, padding);
            if let Some(b) = bias {
                let b = b.reshape((1, ws[0], 1, 1)).unwrap();
                candle = candle.broadcast_add(&b).unwrap();
                reference = reference.broadcast_add(&b).unwrap();
            }
            assert_eq!(ours.dims(), candle.dims(), "case {i}");
            for (name, other) in [("candle", &candle), ("composite", &reference)] {
                let e = rel_err(&ours, other);
                assert!(e <= 1e-5, "case {i}: forward rel err {e} against {name}");
            }
            // A non-uniform upstream gradient: the loss weighs every output differently.
            let (g1, g2) = backward_both(&ours, &reference, 100 + i as u64);
            let mut vars = vec![("input", &x), ("weight", &w)];
            if bias.is_some() {
                vars.push(("bias", &b));
            }
            for (name, v) in vars {
                let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                let e = rel_err(a, b);
                assert!(e <= 1e-4, "case {i}: {name} gradient rel err {e}");
            }
        }
    }

    /// A forward in blocks of output rows (blocks that do not divide the image, one row each)
    /// equals the forward of whole images, with and without a bias.
    #[test]
    fn row_blocks_of_any_height_agree() {
        for (i, &(xs, ws, stride, padding)) in AWKWARD.iter().enumerate() {
            let g = Geometry::new(&xs, &ws, stride, padding).unwrap();
            let x = random(&xs, 7 * i as u64).flatten_all().unwrap();
            let w = random(&ws, 7 * i as u64 + 1).flatten_all().unwrap();
            let b = random(&[ws[0]], 7 * i as u64 + 2).to_vec1::<f32>().unwrap();
            let (x, w) = (x.to_vec1::<f32>().unwrap(), w.to_vec1::<f32>().unwrap());
            for bias in [None, Some(&b[..])] {
                let whole = forward_in_row_blocks(&g, &x, &w, bias, 1);
                assert!(
                    whole.iter().all(|v| v.is_finite()),
                    "case {i}: unwritten output"
                );
                for blocks in [2, 3, g.out_height] {
                    let parts = forward_in_row_blocks(&g, &x, &w, bias, blocks);
                    let same = parts
                        .iter()
                        .zip(&whole)
                        .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0));
                    assert!(same, "case {i}: {blocks} blocks differ, bias {bias:?}");
                }
            }
        }
    }

    /// The two layouts of the products (one per image; the batch's images side by side) agree,
    /// forward and both gradients, with and without a bias.
    #[test]
    fn per_image_and_batched_products_agree() {
        let cases = AWKWARD;
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * scale)
        };
        for (i, &(xs, ws, stride, padding)) in cases.iter().enumerate() {
            let g = Geometry::new(&xs, &ws, stride, padding).unwrap();
            let x = values(random(&xs, i as u64));
            let w = values(random(&ws, 10 + i as u64));
            let b = values(random(&[ws[0]], 20 + i as u64));
            let dy_dims = [g.batch, g.out_channels, g.out_height, g.out_width];
            let dy = values(random(&dy_dims, 30 + i as u64));
            for bias in [None, Some(b.as_slice())] {
                let (a, c) = (
                    forward_per_image(&g, &x, &w, bias),
                    forward_batched(&g, &x, &w, bias),
                );
                assert!(close(&c, &a), "case {i}: forward");
            }
            let (a, c) = (
                grad_input_per_image(&g, &dy, &w),
                grad_input_batched(&g, &dy, &w),
            );
            assert!(close(&c, &a), "case {i}: input gradient");
            let (a, c) = (
                grad_weight_per_image(&g, &x, &dy),
                grad_weight_batched(&g, &x, &dy),
            );
            assert!(close(&c, &a), "case {i}: weight gradient");
        }
    }

    #[test]
    fn valid_ranges_match_a_direct_scan() {
        for (size, kernel, stride, padding) in
            [(7, 3, 1, 1), (8, 3, 2, 1), (5, 1, 2, 0), (2, 3, 1, 1)]
        {
            let g = Geometry::new(
                &[1, 1, size, size],
                &[1, 1, kernel, kernel],
                stride,
                padding,
            )
            .unwrap();
            for offset in 0..kernel {
                let inside: Vec<usize> = (0..g.out_height)
                    .filter(|&o| {
                        let i = (o * stride + offset) as isize - padding as isize;
                        i >= 0 && i < size as isize
                    })
                    .collect();
                let (a, b) = g.valid(offset, size, g.out_height);
                assert_eq!((a..b).collect::<Vec<_>>(), inside);
            }
        }
    }
}
