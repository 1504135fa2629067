//! The forward of a 3×3 convolution of stride 1 and padding 1 by Winograd's minimal filtering
//! F(2×2, 3×3) (Lavin & Gray 2016): each 2×2 block of outputs from a 4×4 block of inputs with
//! 16 multiplies per input channel instead of 36, as 16 GEMMs of `O × C` by `C × tiles`, one
//! per position of the 4×4 transformed tile:
//!
//! - weights: `U = G·g·Gᵀ` per (output, input) channel pair;
//! - inputs: `V = Bᵀ·d·B` per channel and tile;
//! - products: `M[p] = U[p]·V[p]` for each of the 16 positions `p`;
//! - outputs: `Y = Aᵀ·M·A`, plus the bias.
//!
//! Work is split into blocks of tile rows per image, as the im2col forward splits output rows,
//! so that a block's transformed inputs and products stay in cache. The backward stays the
//! im2col one (`conv.rs`). Profiles count a conv's FLOPs as the direct conv's, so a conv done
//! this way shows a rate up to 2.25× the GEMM rate behind it.

use std::sync::Mutex;

use rayon::prelude::*;

use super::conv::{row_blocks, Geometry};
use super::gemm::{matmul, View};
use super::{uninit_output, DisjointWrites};

/// What [`super::frozen`] keeps the transformed weights under.
pub(super) const FROZEN_KIND: &str = "winograd weights";

/// Positions of a transformed 4×4 tile.
const POSITIONS: usize = 16;

/// Bytes of transformed inputs (and of products) one task holds at a time.
const BLOCK_BYTES: usize = 4 << 20;

/// Whether the forward of `g` runs here: a 3×3 kernel, stride 1, padding 1, at least one
/// channel in and out, and at least [`MIN_TILES`] tiles per image, or [`MIN_TILES_TRANSFORMED`]
/// when the weights come transformed already (`transformed`: they are frozen).
pub(super) fn applies(g: &Geometry, transformed: bool) -> bool {
    let min_tiles = if transformed {
        MIN_TILES_TRANSFORMED
    } else {
        MIN_TILES
    };
    g.kernel == 3
        && g.stride == 1
        && g.padding == 1
        && g.channels > 0
        && g.out_channels > 0
        && g.out_height.div_ceil(2) * g.out_width.div_ceil(2) >= min_tiles
}

/// Tiles per image from which the Winograd forward is used when it transforms the weights
/// itself (32 × 32 outputs): 16 values per channel pair, against 9 · tiles multiply-adds per
/// pair in the product, and with few tiles the 16 products are too thin to run fast. Measured
/// on 2 threads against the im2col forward, in interleaved rounds: from 64 × 64 outputs,
/// MobileDiffusion's forward 1.17× faster and SD 1.5's 1.04–1.08×; adding 32 × 32 outputs, a
/// further 1.02× (MobileDiffusion) and 1.03× (SD 1.5), and 1.03× more once
/// [`WEIGHT_BUFFERS`] keeps the transform from faulting in fresh pages; at 16 × 16 outputs
/// (64 tiles) slower than the im2col forward. Proxy training at 32 × 32 was unchanged.
const MIN_TILES: usize = 256;

/// Tiles per image from which the Winograd forward is used when the weights come transformed
/// (frozen weights, [`super::frozen`]): 16 × 16 outputs. Measured on 2 threads, a 3×3 conv of
/// 1,280 channels at 16 × 16: 20.5 ms by im2col, 14.8 ms by Winograd without the transform;
/// whole forwards in interleaved rounds: SD 1.5 1.04–1.07× faster than with 256 tiles
/// (MobileDiffusion within noise), and 8 × 8 outputs too (16 tiles) no faster.
const MIN_TILES_TRANSFORMED: usize = 64;

/// Buffers for transformed weights, kept between calls: a fresh allocation of tens of MB pays
/// its page faults on every call (measured: 3.3 ms of a 16 ms conv of 640 channels at 32 × 32,
/// 0.6 ms when the buffer is reused). One buffer per conv running at once, each as large as
/// the largest transform it has held (1.8× that conv's weights).
static WEIGHT_BUFFERS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// `U = G·g·Gᵀ` for every (output, input) channel pair, laid out `[O][16][C]`: position `p`'s
/// `O × C` matrix has rows `16·C` apart.
pub(super) fn transform_weights(g: &Geometry, w: &[f32]) -> Vec<f32> {
    // SAFETY: transform_weights_into writes every element.
    let mut u = unsafe { uninit_output(g.out_channels * POSITIONS * g.channels) };
    transform_weights_into(g, w, &mut u);
    u
}

/// [`transform_weights`] into a buffer from [`WEIGHT_BUFFERS`]; give it back with
/// [`release_weights`].
fn transform_weights_reused(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let len = g.out_channels * POSITIONS * g.channels;
    let reused = WEIGHT_BUFFERS.lock().ok().and_then(|mut free| free.pop());
    let mut u = match reused {
        // Under test, fresh buffers are NaN-filled, so that a missed element shows.
        Some(mut u) if !cfg!(test) => {
            u.resize(len, 0.0);
            u
        }
        // SAFETY: transform_weights_into writes every element.
        _ => unsafe { uninit_output(len) },
    };
    transform_weights_into(g, w, &mut u);
    u
}

/// Writes [`transform_weights`]'s `U` into `u`.
fn transform_weights_into(g: &Geometry, w: &[f32], u: &mut [f32]) {
    let c = g.channels;
    u.par_chunks_mut(POSITIONS * c)
        .zip(w.par_chunks(c * 9))
        .for_each(|(uo, wo)| {
            vectorized!(for (ci, k) in wo.chunks(9).enumerate() {
                // G·g: 4 × 3, then (G·g)·Gᵀ: 4 × 4.
                let mut gg = [[0f32; 3]; 4];
                for j in 0..3 {
                    let (a, b, d) = (k[j], k[3 + j], k[6 + j]);
                    gg[0][j] = a;
                    gg[1][j] = 0.5 * (a + b + d);
                    gg[2][j] = 0.5 * (a - b + d);
                    gg[3][j] = d;
                }
                for (i, row) in gg.iter().enumerate() {
                    let (a, b, d) = (row[0], row[1], row[2]);
                    let t = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                    for (j, &v) in t.iter().enumerate() {
                        uo[(i * 4 + j) * c + ci] = v;
                    }
                }
            })
        });
}

/// Gives a buffer from [`transform_weights_reused`] back for the next conv.
fn release_weights(u: Vec<f32>) {
    if let Ok(mut free) = WEIGHT_BUFFERS.lock() {
        free.push(u);
    }
}

/// Blocks of tile rows per image: enough that a block's transformed inputs and products fit
/// [`BLOCK_BYTES`], and a multiple of what keeps every thread busy when the batch is small.
fn blocks_per_image(g: &Geometry, tile_rows: usize, tiles_per_row: usize) -> usize {
    let row_bytes = 4 * POSITIONS * g.channels.max(g.out_channels) * tiles_per_row;
    row_blocks(g.batch, tile_rows, row_bytes, BLOCK_BYTES)
}

/// Writes `V = Bᵀ·d·B` of channel plane `plane` (H × W) for the tiles of tile rows `rows`, into
/// `v` laid out `[16][C][tiles]` (this channel's row of each position's matrix at `channel`).
/// Per tile row: the four input rows it reads, zero-padded, combined row-wise (`Bᵀ·d`), then
/// split into even and odd columns so that the column-wise step (`·B`) runs over every tile of
/// the row at once.
#[inline(always)]
fn transform_inputs(
    g: &Geometry,
    plane: &[f32],
    rows: std::ops::Range<usize>,
    tiles_per_row: usize,
    (v, channel): (&mut [f32], usize),
    scratch: &mut Scratch,
) {
    let tiles = rows.len() * tiles_per_row;
    let position_stride = g.channels * tiles;
    let tw = tiles_per_row;
    for (r, ty) in rows.enumerate() {
        // Input rows 2·ty − 1 .. 2·ty + 3, each as columns −1 .. 2·tw + 1 (zero outside).
        for (i, padded) in scratch.rows.iter_mut().enumerate() {
            padded.fill(0.0);
            let y = (2 * ty + i) as isize - 1;
            if (0..g.height as isize).contains(&y) {
                let src = &plane[y as usize * g.width..][..g.width];
                padded[1..1 + g.width].copy_from_slice(src);
            }
        }
        for i in 0..4 {
            let (d, even, odd) = (&scratch.rows, &mut scratch.even, &mut scratch.odd);
            match i {
                0 => split_columns(|a, _, c, _| a - c, d, even, odd),
                1 => split_columns(|_, b, c, _| b + c, d, even, odd),
                2 => split_columns(|_, b, c, _| c - b, d, even, odd),
                _ => split_columns(|_, b, _, e| b - e, d, even, odd),
            }
            let base = channel * tiles + r * tw;
            let at = |j: usize| (i * 4 + j) * position_stride + base;
            let steps: [(&[f32], &[f32], f32); 4] = [
                (&even[..tw], &even[1..], -1.0),
                (&odd[..tw], &even[1..], 1.0),
                (&even[1..], &odd[..tw], -1.0),
                (&odd[..tw], &odd[1..], -1.0),
            ];
            for (j, (a, b, sign)) in steps.into_iter().enumerate() {
                v[at(j)..][..tw]
                    .iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (&x, &y))| *o = x + sign * y);
            }
        }
    }
}

/// Row `i` of `Bᵀ·d` (`f` of the four input rows, elementwise), its even columns into `even`
/// and its odd ones into `odd`.
#[inline(always)]
fn split_columns(
    f: impl Fn(f32, f32, f32, f32) -> f32,
    [d0, d1, d2, d3]: &[Vec<f32>; 4],
    even: &mut [f32],
    odd: &mut [f32],
) {
    for (k, (e, o)) in even.iter_mut().zip(odd.iter_mut()).enumerate() {
        *e = f(d0[2 * k], d1[2 * k], d2[2 * k], d3[2 * k]);
        *o = f(d0[2 * k + 1], d1[2 * k + 1], d2[2 * k + 1], d3[2 * k + 1]);
    }
}

/// Row buffers of [`transform_inputs`], sized for one image width.
struct Scratch {
    rows: [Vec<f32>; 4],
    even: Vec<f32>,
    odd: Vec<f32>,
}

impl Scratch {
    fn new(tiles_per_row: usize) -> Scratch {
        let len = 2 * tiles_per_row + 2;
        Scratch {
            rows: std::array::from_fn(|_| vec![0f32; len]),
            even: vec![0f32; tiles_per_row + 1],
            odd: vec![0f32; tiles_per_row + 1],
        }
    }
}

/// Writes `Y = Aᵀ·M·A (+ bias)` of output channel `oc` for the tiles of a block into `plane`
/// (the block's output rows of that channel, `first_row` being its first): row by row of tiles,
/// each step over every tile of the row.
#[inline(always)]
fn transform_outputs(
    m: &[f32],
    (oc, out_channels): (usize, usize),
    (tiles, tiles_per_row): (usize, usize),
    (plane, rows_in_plane, width): (&mut [f32], usize, usize),
    bias: f32,
    scratch: &mut [Vec<f32>; 4],
) {
    let tw = tiles_per_row;
    let at = |p: usize, r: usize| &m[(p * out_channels + oc) * tiles + r * tw..][..tw];
    for r in 0..tiles / tw {
        // Aᵀ·M: two rows of four columns, each a vector over the row's tiles; then ·A.
        for (i, signs) in [[1f32, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]]
            .iter()
            .enumerate()
        {
            let yy = 2 * r + i;
            if yy >= rows_in_plane {
                break;
            }
            for (j, col) in scratch.iter_mut().enumerate() {
                col.iter_mut()
                    .zip(at(j, r))
                    .for_each(|(c, &a)| *c = signs[0] * a);
                for (k, &s) in signs.iter().enumerate().skip(1) {
                    if s != 0.0 {
                        col.iter_mut()
                            .zip(at(4 * k + j, r))
                            .for_each(|(c, &a)| *c += s * a);
                    }
                }
            }
            let row = &mut plane[yy * width..][..width];
            let [c0, c1, c2, c3] = &*scratch;
            for t in 0..tw {
                row[2 * t] = c0[t] + c1[t] + c2[t] + bias;
                if 2 * t + 1 < width {
                    row[2 * t + 1] = c1[t] - c2[t] - c3[t] + bias;
                }
            }
        }
    }
}

/// `y = conv(x, w) (+ b)` for a geometry that [`applies`].
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let u = transform_weights_reused(g, w);
    let y = forward_transformed(g, x, &u, b);
    release_weights(u);
    y
}

/// `y = conv(x, w) (+ b)` from `u`, `w` transformed by [`transform_weights`], for a geometry
/// that [`applies`].
pub(super) fn forward_transformed(
    g: &Geometry,
    x: &[f32],
    u: &[f32],
    b: Option<&[f32]>,
) -> Vec<f32> {
    let (c, o) = (g.channels, g.out_channels);
    let (ho, wo) = (g.out_height, g.out_width);
    let (tile_rows, tiles_per_row) = (ho.div_ceil(2), wo.div_ceil(2));
    // SAFETY: the tasks below write every output element (each tile's 2 × 2 block, clipped to
    // the image), and the tasks' tile rows tile the image.
    let mut y = unsafe { uninit_output(g.batch * o * ho * wo) };
    let blocks = blocks_per_image(g, tile_rows, tiles_per_row);
    let out = DisjointWrites::new(&mut y);
    (0..g.batch * blocks).into_par_iter().for_each(|task| {
        let (image, block) = (task / blocks, task % blocks);
        let row = |k: usize| k * tile_rows / blocks;
        let rows = row(block)..row(block + 1);
        let tiles = rows.len() * tiles_per_row;
        let xi = &x[image * c * g.in_pixels()..][..c * g.in_pixels()];
        // SAFETY: transform_inputs writes every element (each channel's row of each position).
        let mut v = unsafe { uninit_output(POSITIONS * c * tiles) };
        let mut scratch = Scratch::new(tiles_per_row);
        vectorized!(for (ci, plane) in xi.chunks(g.in_pixels()).enumerate() {
            transform_inputs(
                g,
                plane,
                rows.clone(),
                tiles_per_row,
                (&mut v, ci),
                &mut scratch,
            );
        });
        // SAFETY: each position's product (not accumulating) writes its O × tiles block.
        let mut m = unsafe { uninit_output(POSITIONS * o * tiles) };
        for (p, mp) in m.chunks_mut(o * tiles).enumerate() {
            let up = View::strided(&u[p * c..], o, c, POSITIONS * c);
            let vp = View::rows(&v[p * c * tiles..][..c * tiles], c, tiles);
            matmul(mp, up, vp, false, 1);
        }
        // The output rows of this block, one plane per output channel.
        let first = 2 * rows.start;
        let last = (2 * rows.end).min(ho);
        let offset = (image * o * ho + first) * wo;
        let mut columns: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0f32; tiles_per_row]);
        vectorized!(for oc in 0..o {
            // SAFETY: this task's rows of this image's plane `oc` belong to no other task.
            let plane = unsafe { out.slice(offset + oc * ho * wo, (last - first) * wo) };
            let bias = b.map_or(0.0, |b| b[oc]);
            transform_outputs(
                &m,
                (oc, o),
                (tiles, tiles_per_row),
                (plane, last - first, wo),
                bias,
                &mut columns,
            );
        });
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::random;

    /// Against candle's conv2d (plus the bias) on awkward geometries: odd heights and widths
    /// (tiles cut at the edge), one pixel, one channel, batch 1 and 3, blocks of tile rows that
    /// do not divide the image; and images large enough that the `conv2d` op dispatches here,
    /// with weights frozen (transformed once, then reused) and without.
    #[test]
    fn matches_candles_conv() {
        let cases: &[([usize; 4], usize)] = &[
            ([1, 1, 1, 1], 1),
            ([3, 2, 7, 5], 4),
            ([1, 5, 9, 12], 3),
            ([2, 33, 16, 16], 40),
            ([1, 8, 11, 3], 1),
            // Large enough that `conv2d` takes this path with frozen weights, and without.
            ([3, 4, 16, 15], 5),
            ([1, 2, 64, 63], 3),
        ];
        for (i, &(xs, o)) in cases.iter().enumerate() {
            let ws = [o, xs[1], 3, 3];
            let x = random(&xs, 3 * i as u64);
            let w = random(&ws, 3 * i as u64 + 1);
            let b = random(&[o], 3 * i as u64 + 2);
            let g = Geometry::new(&xs, &ws, 1, 1).unwrap();
            let candle = x.conv2d(&w, 1, 1, 1, 1).unwrap();
            let candle = candle
                .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            if applies(&g, false) {
                let through_op = crate::kernels::conv::conv2d(&x, &w, Some(&b), 1, 1).unwrap();
                let e = crate::kernels::testing::rel_err(&through_op, &candle);
                assert!(e <= 1e-5, "case {i}: conv2d rel err {e}");
            }
            if applies(&g, true) {
                // With frozen weights, through the kept transform (the second call reuses it).
                let _alone = crate::kernels::frozen::SCOPED_TESTS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let _frozen = crate::kernels::FrozenWeights::new();
                for call in 0..2 {
                    let ours = crate::kernels::conv::conv2d(&x, &w, Some(&b), 1, 1).unwrap();
                    let e = crate::kernels::testing::rel_err(&ours, &candle);
                    assert!(e <= 1e-5, "case {i}, frozen, call {call}: rel err {e}");
                    let kept = crate::kernels::frozen::derived(&w, FROZEN_KIND, || {
                        panic!("case {i}: the transform was not kept")
                    });
                    assert!(kept.unwrap().is_some());
                }
            }
            let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (xv, wv, bv) = (flat(&x), flat(&w), flat(&b));
            let reference = flat(&x.conv2d(&w, 1, 1, 1, 1).unwrap());
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            for bias in [None, Some(&bv[..])] {
                let ours = forward(&g, &xv, &wv, bias);
                assert_eq!(ours.len(), reference.len(), "case {i}");
                for (k, (a, r)) in ours.iter().zip(&reference).enumerate() {
                    let r = r + bias.map_or(0.0, |b| b[(k / g.out_pixels()) % o]);
                    assert!(
                        (a - r).abs() <= 1e-5 * scale.max(1.0),
                        "case {i}, bias {}: element {k}: {a} vs {r}",
                        bias.is_some()
                    );
                }
            }
        }
    }
}
