//! The op trait: the small set of primitives the UNet forward is written in.
//!
//! An interpreter gives these ops a meaning: the cost counter propagates shapes and tallies
//! parameters and MACs, the candle interpreter computes on real tensors, an exporter records nodes.
//! Parameters are declared where they are used, by their local name inside the current scope
//! (`push_scope`/`pop_scope`), so full names like `down_blocks.1.attentions.0.proj_in.weight`
//! come from the forward itself.

pub use unetlab_spec::AttentionKernel;

use crate::scope::Role;

/// How a parameter is initialised when an interpreter creates it (rather than loading it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros (biases of norms).
    Zeros,
    /// All ones (scales of norms).
    Ones,
    /// Uniform in ±1/√fan_in: PyTorch's default for conv and linear weights and biases.
    FanIn(usize),
}

/// Elementwise activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    /// x·σ(x).
    Silu,
    /// Exact GELU, x·Φ(x) with the error function (diffusers' GEGLU).
    GeluErf,
    /// max(x, 0).
    Relu,
}

/// Stride, padding and groups of a 2-D convolution (square kernels, symmetric padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Channel groups (= channels for depthwise).
    pub groups: usize,
}

/// The primitives of the forward. Shapes follow PyTorch: images `[B, C, H, W]`, tokens `[B, N, C]`,
/// linear weights `[out, in]`, conv weights `[out, in / groups, k, k]`.
pub trait Ops {
    /// A tensor value (a shape, a real tensor, a graph node).
    type Tensor: Clone;
    /// Errors of this interpreter.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The tensor's dimensions.
    fn dims(&self, x: &Self::Tensor) -> Vec<usize>;
    /// Enters a named scope (a module: `down_blocks.1`, `attn1`, ...), with its role in the
    /// UNet's structure where it has one.
    fn push_scope(&mut self, name: &str, role: Option<Role>);
    /// Leaves the innermost scope.
    fn pop_scope(&mut self);
    /// Declares (and returns) parameter `name` of the current scope.
    fn param(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
    ) -> Result<Self::Tensor, Self::Error>;

    /// 2-D convolution with an optional bias `[out]`.
    fn conv2d(
        &mut self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        params: Conv2dParams,
    ) -> Result<Self::Tensor, Self::Error>;
    /// `x · weightᵀ + bias` over the last dimension.
    fn linear(
        &mut self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor, Self::Error>;
    /// Batched matrix product `[.., m, k] × [.., k, n]`; the forward uses it only for attention.
    fn matmul(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor, Self::Error>;
    /// GroupNorm over `[B, C, ...]` with per-channel scale and shift.
    fn group_norm(
        &mut self,
        x: &Self::Tensor,
        groups: usize,
        eps: f64,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
    ) -> Result<Self::Tensor, Self::Error>;
    /// GroupNorm followed by an activation (a res block's `norm → SiLU`). The default is
    /// [`group_norm_act`]; an interpreter may fuse them.
    fn group_norm_act(
        &mut self,
        x: &Self::Tensor,
        groups: usize,
        eps: f64,
        (weight, bias): (&Self::Tensor, &Self::Tensor),
        act: Unary,
    ) -> Result<Self::Tensor, Self::Error> {
        group_norm_act(self, x, groups, eps, (weight, bias), act)
    }
    /// LayerNorm over the last dimension with scale and shift.
    fn layer_norm(
        &mut self,
        x: &Self::Tensor,
        eps: f64,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
    ) -> Result<Self::Tensor, Self::Error>;
    /// Softmax over the last dimension.
    fn softmax_last(&mut self, x: &Self::Tensor) -> Result<Self::Tensor, Self::Error>;
    /// The attention core `weights(q · kt) · v`, with `weights` a softmax over keys or a ReLU:
    /// q `[.., n, d]`, kt `[.., d, m]`, v `[.., m, d]` → `[.., n, d]`. The default is [`attend`];
    /// an interpreter may compute the same thing in blocks of queries.
    fn attend(
        &mut self,
        q: &Self::Tensor,
        kt: &Self::Tensor,
        v: &Self::Tensor,
        kernel: AttentionKernel,
    ) -> Result<Self::Tensor, Self::Error> {
        attend(self, q, kt, v, kernel)
    }
    /// Multi-head attention on token-major tensors: q `[B, n, H·d]`, k and v `[B, m, H·d]` →
    /// `[B, n, H·d]`, each of the `heads` heads `weights(scale · q_h · k_hᵀ) · v_h`. The default
    /// is [`attend_heads`]; an interpreter may work on the packed layout directly.
    fn attend_heads(
        &mut self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        scale: f64,
        kernel: AttentionKernel,
    ) -> Result<Self::Tensor, Self::Error> {
        attend_heads(self, q, k, v, heads, scale, kernel)
    }
    /// Elementwise activation.
    fn unary(&mut self, x: &Self::Tensor, op: Unary) -> Result<Self::Tensor, Self::Error>;
    /// The gated activation of a feed-forward (GEGLU, SwiGLU): with `x` `[.., 2n]`,
    /// `x[.., :n] · act(x[.., n:])` → `[.., n]`. The default is [`gated`]; an interpreter may
    /// fuse it.
    fn gated(&mut self, x: &Self::Tensor, act: Unary) -> Result<Self::Tensor, Self::Error> {
        gated(self, x, act)
    }
    /// A feed-forward's input projection and gate, `gated(x·wᵀ + b, act)` (`w` `[2n, in]`, `b`
    /// `[2n]`). The default is [`feed_forward_in`]; an interpreter may fuse it.
    fn feed_forward_in(
        &mut self,
        x: &Self::Tensor,
        (w, b): (&Self::Tensor, &Self::Tensor),
        act: Unary,
    ) -> Result<Self::Tensor, Self::Error> {
        feed_forward_in(self, x, (w, b), act)
    }
    /// `x · scale`.
    fn scale(&mut self, x: &Self::Tensor, scale: f64) -> Result<Self::Tensor, Self::Error>;
    /// Broadcasting sum.
    fn add(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor, Self::Error>;
    /// Broadcasting product.
    fn mul(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor, Self::Error>;
    /// Same elements, new dimensions.
    fn reshape(&mut self, x: &Self::Tensor, dims: &[usize]) -> Result<Self::Tensor, Self::Error>;
    /// Reorders dimensions.
    fn permute(&mut self, x: &Self::Tensor, perm: &[usize]) -> Result<Self::Tensor, Self::Error>;
    /// Concatenation along `dim`.
    fn concat(&mut self, xs: &[&Self::Tensor], dim: usize) -> Result<Self::Tensor, Self::Error>;
    /// The slice `start..start + len` of dimension `dim`.
    fn narrow(
        &mut self,
        x: &Self::Tensor,
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor, Self::Error>;
    /// Nearest-neighbour 2x upsampling of `[B, C, H, W]`.
    fn upsample_nearest2x(&mut self, x: &Self::Tensor) -> Result<Self::Tensor, Self::Error>;
    /// Sinusoidal embedding of every element: `[..]` → `[.., channels]`, diffusers' `Timesteps`
    /// (`exp(-ln(10⁴)·i/(channels/2 − freq_shift))`, `[sin, cos]`, swapped when `flip_sin_to_cos`).
    fn sinusoidal(
        &mut self,
        x: &Self::Tensor,
        channels: usize,
        flip_sin_to_cos: bool,
        freq_shift: f64,
    ) -> Result<Self::Tensor, Self::Error>;
}

/// [`Ops::group_norm_act`] as the two ops.
pub fn group_norm_act<O: Ops + ?Sized>(
    ops: &mut O,
    x: &O::Tensor,
    groups: usize,
    eps: f64,
    (weight, bias): (&O::Tensor, &O::Tensor),
    act: Unary,
) -> Result<O::Tensor, O::Error> {
    let h = ops.group_norm(x, groups, eps, weight, bias)?;
    ops.unary(&h, act)
}

/// [`Ops::gated`] as two narrows, the activation and a product.
pub fn gated<O: Ops + ?Sized>(
    ops: &mut O,
    x: &O::Tensor,
    act: Unary,
) -> Result<O::Tensor, O::Error> {
    let dims = ops.dims(x);
    let last = dims.len() - 1;
    let inner = dims[last] / 2;
    let hidden = ops.narrow(x, last, 0, inner)?;
    let gate = ops.narrow(x, last, inner, inner)?;
    let gate = ops.unary(&gate, act)?;
    ops.mul(&hidden, &gate)
}

/// [`Ops::feed_forward_in`] as [`Ops::linear`] then [`Ops::gated`].
pub fn feed_forward_in<O: Ops + ?Sized>(
    ops: &mut O,
    x: &O::Tensor,
    (w, b): (&O::Tensor, &O::Tensor),
    act: Unary,
) -> Result<O::Tensor, O::Error> {
    let h = ops.linear(x, w, Some(b))?;
    ops.gated(&h, act)
}

/// [`Ops::attend_heads`] as diffusers computes it: the heads split off by reshape and permute,
/// the scale applied to Q, [`Ops::attend`], and the heads merged back.
pub fn attend_heads<O: Ops + ?Sized>(
    ops: &mut O,
    q: &O::Tensor,
    k: &O::Tensor,
    v: &O::Tensor,
    heads: usize,
    scale: f64,
    kernel: AttentionKernel,
) -> Result<O::Tensor, O::Error> {
    let dims = ops.dims(q);
    let (batch, n, dim) = (dims[0], dims[1], dims[2]);
    let m = ops.dims(k)[1];
    let head_dim = dim / heads;
    let q = ops.reshape(q, &[batch, n, heads, head_dim])?;
    let q = ops.permute(&q, &[0, 2, 1, 3])?;
    let k = ops.reshape(k, &[batch, m, heads, head_dim])?;
    let kt = ops.permute(&k, &[0, 2, 3, 1])?;
    let v = ops.reshape(v, &[batch, m, heads, head_dim])?;
    let v = ops.permute(&v, &[0, 2, 1, 3])?;
    let q = ops.scale(&q, scale)?;
    let o = ops.attend(&q, &kt, &v, kernel)?;
    let o = ops.permute(&o, &[0, 2, 1, 3])?;
    ops.reshape(&o, &[batch, n, dim])
}

/// `weights(q · kt) · v` as two matmuls around the weighting; the raw scores are freed as soon as
/// the weights exist.
pub fn attend<O: Ops + ?Sized>(
    ops: &mut O,
    q: &O::Tensor,
    kt: &O::Tensor,
    v: &O::Tensor,
    kernel: AttentionKernel,
) -> Result<O::Tensor, O::Error> {
    let weights = {
        let scores = ops.matmul(q, kt)?;
        match kernel {
            AttentionKernel::Softmax => ops.softmax_last(&scores)?,
            AttentionKernel::Relu => ops.unary(&scores, Unary::Relu)?,
        }
    };
    ops.matmul(&weights, v)
}

/// The frequencies of the sinusoidal embedding of `channels` channels, in f32 as diffusers
/// computes them: `exp(-ln(10⁴) · i / (channels/2 − shift))` for `i < channels/2`. Every
/// interpreter's `sinusoidal` multiplies its argument by these.
pub fn sinusoid_frequencies(channels: usize, freq_shift: f64) -> Vec<f32> {
    let half = channels / 2;
    let log_period = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    (0..half)
        .map(|i| (log_period * i as f32 / denom).exp())
        .collect()
}

/// Runs `f` inside scope `name`, leaving the scope even when `f` fails.
pub fn scoped<O: Ops + ?Sized, R>(
    ops: &mut O,
    name: &str,
    f: impl FnOnce(&mut O) -> Result<R, O::Error>,
) -> Result<R, O::Error> {
    enter(ops, name, None, f)
}

/// Runs `f` inside scope `name` with a structural `role` (a stage, a res block, ...).
pub fn scoped_as<O: Ops + ?Sized, R>(
    ops: &mut O,
    name: &str,
    role: Role,
    f: impl FnOnce(&mut O) -> Result<R, O::Error>,
) -> Result<R, O::Error> {
    enter(ops, name, Some(role), f)
}

fn enter<O: Ops + ?Sized, R>(
    ops: &mut O,
    name: &str,
    role: Option<Role>,
    f: impl FnOnce(&mut O) -> Result<R, O::Error>,
) -> Result<R, O::Error> {
    ops.push_scope(name, role);
    let result = f(ops);
    ops.pop_scope();
    result
}
