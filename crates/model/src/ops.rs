//! [`CandleOps`]: the [`Ops`] implementation over real candle tensors.
//!
//! In f32 on the CPU, convs, norms, softmax and activations run on unetlab's own kernels
//! ([`crate::kernels`]), differentiable for training and inference alike. Elsewhere every op on
//! the training path is differentiable with candle's autograd: norms and softmax are written out
//! from primitive ops, because candle 0.11's fused `layer_norm` and `softmax_last_dim` record no
//! backward; inference in f32 uses those fused kernels. Norms and softmax always compute in f32,
//! whatever the model dtype.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor, D};
use unetlab_graph::{
    attend, sinusoid_frequencies, AttentionKernel, Conv2dParams, Init, Ops, Place, Role,
    ScopeStack, Unary,
};

use crate::error::ModelError;
use crate::kernels;
use crate::params::ParamStore;
use crate::profile::{self, Pass};

/// Runs the forward on real tensors, taking parameters from a [`ParamStore`].
pub struct CandleOps<'a> {
    store: &'a ParamStore,
    scope: ScopeStack,
    accessed: Vec<String>,
    track_gradients: bool,
    block_timer: Option<BlockTimer>,
}

/// Wall time per block (each scope entered with a `Role::Block`: `conv_in`,
/// `down_blocks.1.resnets.0`, `down_blocks.1.attentions.0`, ...), measured by synchronising the
/// device when the forward enters and leaves each one.
#[derive(Debug, Default)]
struct BlockTimer {
    /// The blocks entered and not yet left: scope depth, path, place, start.
    entered: Vec<(usize, String, Place, Instant)>,
    times: Vec<(String, Place, Duration)>,
}

impl<'a> CandleOps<'a> {
    /// An inference interpreter reading parameters from `store`: no autograd graph is kept, so
    /// activations are freed as soon as the forward is done with them.
    pub fn new(store: &'a ParamStore) -> Self {
        CandleOps {
            store,
            scope: ScopeStack::default(),
            accessed: Vec::new(),
            track_gradients: false,
            block_timer: None,
        }
    }

    /// An inference interpreter that also times each block (see [`Self::block_times`]).
    pub fn timed(store: &'a ParamStore) -> Self {
        CandleOps {
            block_timer: Some(BlockTimer::default()),
            ..Self::new(store)
        }
    }

    /// Time spent in each block (a res block, transformer stack, sampler, embedding or in/out
    /// conv) with its path and place in the structure, in execution order (empty unless built with
    /// [`Self::timed`]).
    pub fn block_times(&self) -> &[(String, Place, Duration)] {
        self.block_timer.as_ref().map_or(&[], |t| &t.times)
    }

    /// Whether candle's fused (non-differentiable) kernels may be used for `x`: inference in f32.
    fn fused_kernels(&self, x: &Tensor) -> bool {
        !self.track_gradients && x.dtype() == DType::F32
    }

    /// Waits for queued device work, so wall-clock boundaries are real (a no-op on CPU).
    fn sync(&self) {
        // A failed synchronise only blurs a block boundary; the forward itself reports real errors.
        let _ = self.store.device().synchronize();
    }

    /// A training interpreter: parameters are the store's variables, so `backward` reaches them.
    pub fn trainable(store: &'a ParamStore) -> Self {
        CandleOps {
            track_gradients: true,
            ..Self::new(store)
        }
    }

    /// Names of the parameters the forward has used so far, in order of use.
    pub fn accessed(&self) -> &[String] {
        &self.accessed
    }
}

/// Largest score block one attention step materialises during inference.
const ATTENTION_BLOCK_BYTES: usize = 16 << 20;

/// candle's CPU backend has no bf16 matmul or conv: there, those ops compute in f32 on upcast
/// operands and round the result back to bf16. Returns the operands to use and the dtype to return.
fn matmul_operands<const N: usize>(ts: [&Tensor; N]) -> candle_core::Result<([Tensor; N], DType)> {
    let dtype = ts[0].dtype();
    let upcast = dtype == DType::BF16 && ts[0].device().is_cpu();
    let cast = |t: &Tensor| {
        if upcast {
            t.to_dtype(DType::F32)
        } else {
            Ok(t.clone())
        }
    };
    let mut out = Vec::with_capacity(N);
    for t in ts {
        out.push(cast(t)?);
    }
    Ok((out.try_into().expect("N operands"), dtype))
}

/// Depthwise 3x3 (stride 1) as nine shifted multiply-adds, where the depthwise kernel does not
/// apply (half precision, GPUs): candle's grouped conv runs one conv per group and is about 10x
/// slower, forward and backward.
pub(crate) fn depthwise(x: &Tensor, w: &Tensor, padding: usize) -> candle_core::Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let k = w.dim(2)?;
    let padded = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let (ho, wo) = (h + 2 * padding + 1 - k, wd + 2 * padding + 1 - k);
    let mut out: Option<Tensor> = None;
    for i in 0..k {
        for j in 0..k {
            let tap = w.narrow(2, i, 1)?.narrow(3, j, 1)?.reshape((1, c, 1, 1))?;
            let term = padded
                .narrow(2, i, ho)?
                .narrow(3, j, wo)?
                .broadcast_mul(&tap)?;
            out = Some(match out {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
    }
    Ok(out.expect("kernel is at least 1x1"))
}

/// `(x - mean) / sqrt(var + eps)` over the last dimension, computed in f32.
fn standardize_last(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)
}

/// `x * weight + bias` with per-channel parameters along `dim`.
fn affine_channels(x: &Tensor, dim: usize, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[dim] = x.dim(dim)?;
    x.broadcast_mul(&w.reshape(shape.as_slice())?)?
        .broadcast_add(&b.reshape(shape.as_slice())?)
}

/// The profile kind of a conv: `depthwise conv`, `conv 1x1`, `conv 3x3` or `conv (other)`.
fn conv_kind(w: &Tensor, p: Conv2dParams) -> &'static str {
    match w.dims() {
        [_, 1, _, _] if p.groups > 1 => "depthwise conv",
        [_, _, 1, 1] => "conv 1x1",
        [_, _, 3, 3] => "conv 3x3",
        _ => "conv (other)",
    }
}

/// FLOPs of a conv (2 × outputs × the kernel's taps per output), as the cost interpreter counts.
fn conv_flops(x: &Tensor, w: &Tensor, p: Conv2dParams) -> u64 {
    let (&[n, _, h, wi], &[o, c, kh, kw]) = (x.dims(), w.dims()) else {
        return 0;
    };
    let out =
        |size: usize, k: usize| (size + 2 * p.padding).saturating_sub(k) / p.stride.max(1) + 1;
    2 * (n * o * out(h, kh) * out(wi, kw) * c * kh * kw) as u64
}

/// FLOPs of `x · wᵀ` (2 × rows × inputs × outputs), as the cost interpreter counts.
fn linear_flops(x: &Tensor, w: &Tensor) -> u64 {
    2 * (x.elem_count() * w.dim(0).unwrap_or(0)) as u64
}

impl Ops for CandleOps<'_> {
    type Tensor = Tensor;
    type Error = ModelError;

    fn dims(&self, x: &Tensor) -> Vec<usize> {
        x.dims().to_vec()
    }

    fn push_scope(&mut self, name: &str, role: Option<Role>) {
        self.scope.push(name, role);
        if matches!(role, Some(Role::Block(_))) && self.block_timer.is_some() {
            self.sync();
            let entry = (
                self.scope.depth(),
                self.scope.path(),
                self.scope.place(),
                Instant::now(),
            );
            if let Some(t) = &mut self.block_timer {
                t.entered.push(entry);
            }
        }
    }

    fn pop_scope(&mut self) {
        let depth = self.scope.depth();
        let leaves_block = self
            .block_timer
            .as_ref()
            .and_then(|t| t.entered.last())
            .is_some_and(|(d, ..)| *d == depth);
        if leaves_block {
            self.sync();
            if let Some(t) = &mut self.block_timer {
                let (_, path, place, start) = t.entered.pop().expect("checked");
                t.times.push((path, place, start.elapsed()));
            }
        }
        self.scope.pop();
    }

    fn param(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor, ModelError> {
        let full = self.scope.param_name(name);
        let t = self.store.get(&full, shape)?;
        self.accessed.push(full);
        Ok(if self.track_gradients { t } else { t.detach() })
    }

    fn conv2d(
        &mut self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor, ModelError> {
        let _span = profile::span_with_flops(conv_kind(w, p), Pass::Forward, conv_flops(x, w, p));
        let channels = x.dim(1)?;
        let y = if p.groups > 1 && p.groups == channels && w.dim(1)? == 1 && p.stride == 1 {
            if kernels::depthwise::supported(x, w, p.stride) {
                kernels::depthwise::depthwise(x, w, p.padding)?
            } else {
                depthwise(x, w, p.padding)?
            }
        } else if kernels::conv::supported(x, w, b, p.groups) {
            return Ok(kernels::conv::conv2d(x, w, b, p.stride, p.padding)?);
        } else {
            let ([x, w], dtype) = matmul_operands([x, w])?;
            x.conv2d(&w, p.padding, p.stride, 1, p.groups)?
                .to_dtype(dtype)?
        };
        Ok(match b {
            Some(b) if kernels::bias::supported(&y, b, 1) => kernels::bias::add_bias(&y, b, 1)?,
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
            None => y,
        })
    }

    fn linear(&mut self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let _span = profile::span_with_flops("linear", Pass::Forward, linear_flops(x, w));
        if kernels::linear::supported(x, w, b) {
            return Ok(kernels::linear::linear(x, w, b)?);
        }
        let dims = x.dims().to_vec();
        let cin = dims[dims.len() - 1];
        let rows = x.elem_count() / cin;
        let ([x, w], dtype) = matmul_operands([x, w])?;
        let y = x.reshape((rows, cin))?.matmul(&w.t()?)?.to_dtype(dtype)?;
        let y = match b {
            Some(b) if kernels::bias::supported(&y, b, 1) => kernels::bias::add_bias(&y, b, 1)?,
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("non-empty") = w.dim(0)?;
        Ok(y.reshape(out)?)
    }

    fn matmul(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor, ModelError> {
        // 2 × rows of `a` × columns of `b` × the inner size (counted before any shape check).
        let (k, n) = (a.dims().last().copied(), b.dims().last().copied());
        let rows = k.map_or(0, |k| a.elem_count().checked_div(k).unwrap_or(0));
        let flops = 2 * (rows * n.unwrap_or(0) * k.unwrap_or(0)) as u64;
        let _span = profile::span_with_flops("attention matmuls", Pass::Forward, flops);
        let ([a, b], dtype) = matmul_operands([a, b])?;
        Ok(a.contiguous()?.matmul(&b.contiguous()?)?.to_dtype(dtype)?)
    }

    fn group_norm(
        &mut self,
        x: &Tensor,
        groups: usize,
        eps: f64,
        w: &Tensor,
        b: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let _span = profile::span("group norm", Pass::Forward);
        if kernels::norm::supported(x) {
            return Ok(kernels::norm::group_norm(x, groups, eps, (w, b), None)?);
        }
        let dims = x.dims().to_vec();
        let (batch, c) = (dims[0], dims[1]);
        let grouped = x.reshape((batch, groups, x.elem_count() / (batch * groups)))?;
        let normed = standardize_last(&grouped, eps)?
            .reshape(dims)?
            .to_dtype(x.dtype())?;
        Ok(affine_channels(&normed, 1, w, b)
            .map_err(|e| e.context(format!("group_norm over {c} channels")))?)
    }

    fn group_norm_act(
        &mut self,
        x: &Tensor,
        groups: usize,
        eps: f64,
        (w, b): (&Tensor, &Tensor),
        act: Unary,
    ) -> Result<Tensor, ModelError> {
        if kernels::norm::supported(x) {
            let _span = profile::span("group norm + activation", Pass::Forward);
            return Ok(kernels::norm::group_norm(
                x,
                groups,
                eps,
                (w, b),
                Some(act),
            )?);
        }
        unetlab_graph::group_norm_act(self, x, groups, eps, (w, b), act)
    }

    fn layer_norm(
        &mut self,
        x: &Tensor,
        eps: f64,
        w: &Tensor,
        b: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let _span = profile::span("layer norm", Pass::Forward);
        if kernels::norm::supported(x) {
            return Ok(kernels::norm::layer_norm(x, eps, w, b)?);
        }
        let normed = standardize_last(x, eps)?.to_dtype(x.dtype())?;
        Ok(affine_channels(&normed, x.rank() - 1, w, b)?)
    }

    fn softmax_last(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = profile::span("softmax", Pass::Forward);
        if kernels::softmax::supported(x) {
            return Ok(kernels::softmax::softmax_last(x)?);
        }
        if self.fused_kernels(x) {
            return Ok(candle_nn::ops::softmax_last_dim(x)?);
        }
        let x32 = x.to_dtype(DType::F32)?;
        // The shift only guards exp against overflow; softmax is invariant to it, so no gradient.
        let shifted = x32.broadcast_sub(&x32.max_keepdim(D::Minus1)?.detach())?;
        let e = shifted.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?
            .to_dtype(x.dtype())?)
    }

    fn attend(
        &mut self,
        q: &Tensor,
        kt: &Tensor,
        v: &Tensor,
        kernel: AttentionKernel,
    ) -> Result<Tensor, ModelError> {
        // Inference computes blocks of queries so that each block's scores (at most
        // ATTENTION_BLOCK_BYTES) stay in cache and reuse one allocation, instead of materialising
        // the whole n x m map (512 MB per 64x64 self-attention of SD 1.5).
        let dims = q.dims();
        let (n, m) = (dims[dims.len() - 2], kt.dims()[kt.rank() - 1]);
        let outer: usize = dims[..dims.len() - 2].iter().product();
        let row_bytes = outer * m * q.dtype().size_in_bytes();
        let rows = (ATTENTION_BLOCK_BYTES / row_bytes.max(1)).max(1);
        if self.track_gradients || rows >= n {
            return attend(self, q, kt, v, kernel);
        }
        let kt = kt.contiguous()?;
        let v = v.contiguous()?;
        let row_dim = dims.len() - 2;
        let mut blocks = Vec::with_capacity(n.div_ceil(rows));
        for start in (0..n).step_by(rows) {
            let q_block = q.narrow(row_dim, start, rows.min(n - start))?;
            blocks.push(attend(self, &q_block, &kt, &v, kernel)?);
        }
        Ok(Tensor::cat(&blocks, row_dim)?)
    }

    fn attend_heads(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f64,
        kernel: AttentionKernel,
    ) -> Result<Tensor, ModelError> {
        if kernels::attention::supported(q, k, v, heads) {
            // QKᵀ and the weighted sum of V: 2 × 2·n·m·d per (image, head).
            let (n, m) = (q.dim(1)?, k.dim(1)?);
            let flops = 4 * (q.dim(0)? * n * m * q.dim(2)?) as u64;
            let _span = profile::span_with_flops("attention core", Pass::Forward, flops);
            return Ok(kernels::attention::attend_heads(
                q, k, v, heads, scale, kernel,
            )?);
        }
        unetlab_graph::attend_heads(self, q, k, v, heads, scale, kernel)
    }

    fn unary(&mut self, x: &Tensor, op: Unary) -> Result<Tensor, ModelError> {
        let _span = profile::span("activation", Pass::Forward);
        if kernels::activation::supported(x) {
            return Ok(kernels::activation::activation(x, op)?);
        }
        Ok(match op {
            Unary::Silu => x.silu()?,
            Unary::GeluErf => x.gelu_erf()?,
            Unary::Relu => x.relu()?,
        })
    }

    fn feed_forward_in(
        &mut self,
        x: &Tensor,
        (w, b): (&Tensor, &Tensor),
        act: Unary,
    ) -> Result<Tensor, ModelError> {
        if kernels::feed_forward::supported(x, w, b) {
            let flops = linear_flops(x, w);
            let _span = profile::span_with_flops("feed-forward in", Pass::Forward, flops);
            return Ok(kernels::feed_forward::feed_forward_in(x, w, b, act)?);
        }
        unetlab_graph::feed_forward_in(self, x, (w, b), act)
    }

    fn gated(&mut self, x: &Tensor, act: Unary) -> Result<Tensor, ModelError> {
        if kernels::gated::supported(x) {
            let _span = profile::span("activation", Pass::Forward);
            return Ok(kernels::gated::gated(x, act)?);
        }
        unetlab_graph::gated(self, x, act)
    }

    fn scale(&mut self, x: &Tensor, scale: f64) -> Result<Tensor, ModelError> {
        let _span = profile::span("elementwise", Pass::Forward);
        Ok(x.affine(scale, 0.0)?)
    }

    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor, ModelError> {
        let _span = profile::span("elementwise", Pass::Forward);
        Ok(a.broadcast_add(b)?)
    }

    fn mul(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor, ModelError> {
        let _span = profile::span("elementwise", Pass::Forward);
        Ok(a.broadcast_mul(b)?)
    }

    fn reshape(&mut self, x: &Tensor, dims: &[usize]) -> Result<Tensor, ModelError> {
        let _span = profile::span("copies and views", Pass::Forward);
        Ok(x.reshape(dims)?)
    }

    fn permute(&mut self, x: &Tensor, perm: &[usize]) -> Result<Tensor, ModelError> {
        let _span = profile::span("copies and views", Pass::Forward);
        Ok(x.permute(perm)?)
    }

    fn concat(&mut self, xs: &[&Tensor], dim: usize) -> Result<Tensor, ModelError> {
        let _span = profile::span("copies and views", Pass::Forward);
        Ok(Tensor::cat(xs, dim)?)
    }

    fn narrow(
        &mut self,
        x: &Tensor,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Tensor, ModelError> {
        let _span = profile::span("copies and views", Pass::Forward);
        Ok(x.narrow(dim, start, len)?)
    }

    fn upsample_nearest2x(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        let _span = profile::span("copies and views", Pass::Forward);
        // Broadcast instead of candle's upsample op, whose backward runs a grouped conv.
        let (b, c, h, w) = x.dims4()?;
        Ok(x.reshape((b, c, h, 1, w, 1))?
            .broadcast_as((b, c, h, 2, w, 2))?
            .reshape((b, c, 2 * h, 2 * w))?)
    }

    fn sinusoidal(
        &mut self,
        x: &Tensor,
        channels: usize,
        flip_sin_to_cos: bool,
        freq_shift: f64,
    ) -> Result<Tensor, ModelError> {
        let _span = profile::span("embeddings", Pass::Forward);
        let freqs = sinusoid_frequencies(channels, freq_shift);
        let freqs = Tensor::from_vec(freqs, channels / 2, x.device())?;
        let args = x.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let args = args.broadcast_mul(&freqs)?;
        let (sin, cos) = (args.sin()?, args.cos()?);
        let parts = if flip_sin_to_cos {
            [&cos, &sin]
        } else {
            [&sin, &cos]
        };
        let dtype = self.store.dtype();
        Ok(Tensor::cat(&parts, D::Minus1)?.to_dtype(dtype)?)
    }
}
