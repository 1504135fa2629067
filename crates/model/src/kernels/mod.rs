//! CPU kernels that replace candle's slowest ops on the f32 path, as candle custom ops with
//! analytic backward (tested against candle's composite ops).

/// Runs the block compiled for the widest vector unit this CPU has (AVX-512, else AVX2 with FMA),
/// or for the baseline target: the elementwise loops of the kernels are built for baseline x86-64
/// (4 lanes, no FMA) unless they are inlined into a function with wider features. The block
/// becomes a closure marked `#[inline(always)]`: a plain closure of some size is compiled
/// separately, for the baseline, and called from the wide function, which then gains nothing.
/// Use it around the innermost loops of each parallel task.
macro_rules! vectorized {
    ($($body:tt)*) => {
        $crate::kernels::with_widest_vectors(
            #[inline(always)]
            || { $($body)* },
        )
    };
}

/// Evaluates `$body` with `$f` bound to the `(value, derivative)` function of the activation
/// `$op`: one copy of the body per activation, so that the choice is made once, outside the
/// loops, and each copy's loops call a known function.
macro_rules! with_activation {
    ($op:expr, $f:ident => $body:expr) => {
        match $op {
            unetlab_graph::Unary::Silu => {
                let $f = $crate::kernels::activation::silu;
                $body
            }
            unetlab_graph::Unary::GeluErf => {
                let $f = $crate::kernels::activation::gelu_erf;
                $body
            }
            unetlab_graph::Unary::Relu => {
                let $f = $crate::kernels::activation::relu;
                $body
            }
        }
    };
}

pub mod activation;
pub mod attention;
pub mod bias;
pub mod conv;
pub mod depthwise;
pub mod feed_forward;
mod frozen;
pub mod gated;
mod gemm;
pub mod inplace;
pub mod linear;
pub mod norm;
mod rows;
pub mod softmax;
mod winograd;

pub use frozen::FrozenWeights;
pub use gemm::peak_gflops_per_s;

#[cfg(test)]
mod testing;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};

/// Whether every tensor is f32 on the CPU: the condition every kernel here starts from.
fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// The f32 contents of a contiguous CPU storage.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("unetlab kernel: f32 only, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("unetlab kernel: the input must be contiguous"),
    }
}

/// Runs `f` on the f32 contents of a contiguous CPU tensor, without copying them.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(f(contiguous_f32(s, layout)?)),
        _ => bail!("unetlab kernel: CPU tensors only"),
    }
}

/// Runs `f` inside a function built for AVX-512 or AVX2 + FMA when the CPU has them (through
/// [`vectorized!`], which makes sure `f` is inlined there).
#[inline(always)]
fn with_widest_vectors<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// An output buffer that parallel tasks write at disjoint positions (planes of their own
/// channels, rows of their own attention heads), which safe slices cannot express when the
/// positions interleave.
pub(super) struct DisjointWrites {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: callers of `slice` promise that no two live slices overlap (see there).
unsafe impl Sync for DisjointWrites {}

impl DisjointWrites {
    pub(super) fn new(buffer: &mut [f32]) -> DisjointWrites {
        DisjointWrites {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
        }
    }

    /// The elements `[offset, offset + len)`.
    ///
    /// # Safety
    /// No two live slices may overlap, and the buffer must outlive them.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        assert!(offset + len <= self.len, "disjoint write out of bounds");
        // SAFETY: in bounds (asserted); disjointness and lifetime are the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    /// A pointer to the `rows × cols` block at `offset` whose rows are `row_stride` apart (a
    /// block of columns, whose rows interleave with other tasks' blocks).
    ///
    /// # Safety
    /// No two live blocks or slices may share an element, and the buffer must outlive them.
    pub(super) unsafe fn block(
        &self,
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> *mut f32 {
        assert!(
            rows == 0 || offset + (rows - 1) * row_stride + cols <= self.len,
            "disjoint write out of bounds"
        );
        // SAFETY: in bounds (asserted).
        unsafe { self.ptr.add(offset) }
    }
}

/// An output buffer of `len` f32 that is not zeroed first: zeroing is a full extra pass over
/// each output (a tenth of a small training step), and the kernels that use this write every
/// element before anything reads it. candle allocates its own outputs the same way.
///
/// Under test it is filled with NaN instead, so that an element a kernel fails to write shows in
/// the kernel's comparison with candle.
///
/// # Safety
/// The caller writes every element before reading any, and before the buffer leaves the kernel.
#[allow(clippy::uninit_vec)]
pub(super) unsafe fn uninit_output(len: usize) -> Vec<f32> {
    if cfg!(test) {
        return vec![f32::NAN; len];
    }
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; the caller writes every element before reading any.
    unsafe { v.set_len(len) };
    v
}
