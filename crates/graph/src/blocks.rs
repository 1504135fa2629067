//! The UNet's building blocks, each declaring its parameters under diffusers' names.

use unetlab_spec::{AttentionKernel, ConvKind, FeedForwardActivation, Projection, TransformerSpec};

use crate::ops::{scoped, scoped_as, Conv2dParams, Init, Ops, Unary};
use crate::scope::{BlockKind, Role};

type R<O> = Result<<O as Ops>::Tensor, <O as Ops>::Error>;

/// Epsilon of the transformer's GroupNorm (fixed at 1e-6 in diffusers' `Transformer2DModel`).
pub const TRANSFORMER_GROUP_NORM_EPS: f64 = 1e-6;
/// Epsilon of the transformer blocks' LayerNorms (diffusers' default).
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// A conv layer `weight [out, in/groups, k, k]` + `bias [out]` in the current scope.
pub fn conv<O: Ops>(ops: &mut O, x: &O::Tensor, out: usize, kernel: usize, stride: usize) -> R<O> {
    let cin = ops.dims(x)[1];
    conv_grouped(ops, x, out, kernel, stride, 1, true, cin)
}

#[allow(clippy::too_many_arguments)]
fn conv_grouped<O: Ops>(
    ops: &mut O,
    x: &O::Tensor,
    out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    bias: bool,
    cin: usize,
) -> R<O> {
    let fan_in = cin / groups * kernel * kernel;
    let w = ops.param(
        "weight",
        &[out, cin / groups, kernel, kernel],
        Init::FanIn(fan_in),
    )?;
    let b = if bias {
        Some(ops.param("bias", &[out], Init::FanIn(fan_in))?)
    } else {
        None
    };
    let params = Conv2dParams {
        stride,
        padding: kernel / 2,
        groups,
    };
    ops.conv2d(x, &w, b.as_ref(), params)
}

/// A 3x3 conv of a res block: dense, or depthwise 3x3 (`depthwise.weight`, no bias) followed by
/// pointwise 1x1 (`pointwise.weight`, `pointwise.bias`).
pub fn conv3x3<O: Ops>(ops: &mut O, x: &O::Tensor, out: usize, kind: ConvKind) -> R<O> {
    match kind {
        ConvKind::Regular => conv(ops, x, out, 3, 1),
        ConvKind::Separable => {
            let cin = ops.dims(x)[1];
            let h = scoped(ops, "depthwise", |ops| {
                conv_grouped(ops, x, cin, 3, 1, cin, false, cin)
            })?;
            scoped(ops, "pointwise", |ops| conv(ops, &h, out, 1, 1))
        }
    }
}

/// A linear layer `weight [out, in]` (+ `bias [out]`) in the current scope.
pub fn linear<O: Ops>(ops: &mut O, x: &O::Tensor, out: usize, bias: bool) -> R<O> {
    let (w, b) = linear_params(ops, x, out, bias)?;
    ops.linear(x, &w, b.as_ref())
}

/// A linear layer's `weight` `[out, in]` (for `x` `[.., in]`) and, when `bias`, its `bias`.
type LinearParams<T> = (T, Option<T>);

fn linear_params<O: Ops>(
    ops: &mut O,
    x: &O::Tensor,
    out: usize,
    bias: bool,
) -> Result<LinearParams<O::Tensor>, O::Error> {
    let dims = ops.dims(x);
    let cin = dims[dims.len() - 1];
    let w = ops.param("weight", &[out, cin], Init::FanIn(cin))?;
    let b = if bias {
        Some(ops.param("bias", &[out], Init::FanIn(cin))?)
    } else {
        None
    };
    Ok((w, b))
}

/// A norm's affine `weight` (ones) and `bias` (zeros) over `c` channels.
fn norm_affine<O: Ops>(ops: &mut O, c: usize) -> Result<(O::Tensor, O::Tensor), O::Error> {
    let w = ops.param("weight", &[c], Init::Ones)?;
    let b = ops.param("bias", &[c], Init::Zeros)?;
    Ok((w, b))
}

/// GroupNorm with `weight` and `bias` of the channel dimension, followed by the activation `act`
/// when there is one (a res block's `norm → SiLU`).
pub fn group_norm<O: Ops>(
    ops: &mut O,
    x: &O::Tensor,
    groups: usize,
    eps: f64,
    act: Option<Unary>,
) -> R<O> {
    let c = ops.dims(x)[1];
    let (w, b) = norm_affine(ops, c)?;
    match act {
        Some(act) => ops.group_norm_act(x, groups, eps, (&w, &b), act),
        None => ops.group_norm(x, groups, eps, &w, &b),
    }
}

/// LayerNorm over the last dimension with `weight` and `bias`.
pub fn layer_norm<O: Ops>(ops: &mut O, x: &O::Tensor, eps: f64) -> R<O> {
    let dims = ops.dims(x);
    let (w, b) = norm_affine(ops, dims[dims.len() - 1])?;
    ops.layer_norm(x, eps, &w, &b)
}

/// diffusers' `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
pub fn embedding_mlp<O: Ops>(ops: &mut O, x: &O::Tensor, dim: usize) -> R<O> {
    let h = scoped(ops, "linear_1", |ops| linear(ops, x, dim, true))?;
    let h = ops.unary(&h, Unary::Silu)?;
    scoped(ops, "linear_2", |ops| linear(ops, &h, dim, true))
}

/// Settings of a res block.
#[derive(Debug, Clone, Copy)]
pub struct ResnetParams {
    /// Output channels.
    pub out: usize,
    /// Kind of the two 3x3 convs.
    pub conv: ConvKind,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
}

/// diffusers' `ResnetBlock2D` (default time-scale-shift, output scale 1).
pub fn resnet<O: Ops>(ops: &mut O, x: &O::Tensor, temb: &O::Tensor, p: ResnetParams) -> R<O> {
    let cin = ops.dims(x)[1];
    let h = scoped(ops, "norm1", |ops| {
        group_norm(ops, x, p.groups, p.eps, Some(Unary::Silu))
    })?;
    let h = scoped(ops, "conv1", |ops| conv3x3(ops, &h, p.out, p.conv))?;
    let t = ops.unary(temb, Unary::Silu)?;
    let t = scoped(ops, "time_emb_proj", |ops| linear(ops, &t, p.out, true))?;
    let batch = ops.dims(&t)[0];
    let t = ops.reshape(&t, &[batch, p.out, 1, 1])?;
    let h = ops.add(&h, &t)?;
    let h = scoped(ops, "norm2", |ops| {
        group_norm(ops, &h, p.groups, p.eps, Some(Unary::Silu))
    })?;
    let h = scoped(ops, "conv2", |ops| conv3x3(ops, &h, p.out, p.conv))?;
    if cin == p.out {
        ops.add(x, &h)
    } else {
        let shortcut = scoped(ops, "conv_shortcut", |ops| conv(ops, x, p.out, 1, 1))?;
        ops.add(&shortcut, &h)
    }
}

/// diffusers' `Attention` with `heads` heads; `context` = None for self-attention.
/// Shared K/V uses the `to_k` projection as values and declares no `to_v`.
pub fn attention<O: Ops>(
    ops: &mut O,
    x: &O::Tensor,
    context: Option<&O::Tensor>,
    t: &TransformerSpec,
) -> R<O> {
    let dims = ops.dims(x);
    let dim = dims[2];
    let head_dim = dim / t.heads;
    let ctx = context.unwrap_or(x);
    let m = ops.dims(ctx)[1];

    let kv_heads = t.kv_head_count();
    let kv_dim = kv_heads * head_dim;
    let q = scoped(ops, "to_q", |ops| linear(ops, x, dim, false))?;
    let k = scoped(ops, "to_k", |ops| linear(ops, ctx, kv_dim, false))?;
    let v = if t.shared_kv {
        None
    } else {
        Some(scoped(ops, "to_v", |ops| linear(ops, ctx, kv_dim, false))?)
    };
    let k = repeat_kv_heads(ops, &k, kv_heads, t.heads)?;
    let v = match v {
        Some(v) => repeat_kv_heads(ops, &v, kv_heads, t.heads)?,
        None => k.clone(),
    };
    // The score scale is applied to Q (n·d elements) rather than to QKᵀ (n·m): for ReLU attention
    // relu(QKᵀ·s)/m = relu((Q·s/m)Kᵀ) since s/m > 0.
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scale = match t.kernel {
        AttentionKernel::Softmax => scale,
        AttentionKernel::Relu => scale / m as f64,
    };
    let o = ops.attend_heads(&q, &k, &v, t.heads, scale, t.kernel)?;
    scoped(ops, "to_out.0", |ops| linear(ops, &o, dim, true))
}

/// Grouped-query attention's keys or values `[B, m, kv·d]` → `[B, m, H·d]`, each of the `kv`
/// heads repeated for its `H / kv` query heads in turn (PyTorch's `repeat_interleave` over heads).
fn repeat_kv_heads<O: Ops>(ops: &mut O, x: &O::Tensor, kv: usize, heads: usize) -> R<O> {
    if kv == heads {
        return Ok(x.clone());
    }
    let dims = ops.dims(x);
    let (b, m, d) = (dims[0], dims[1], dims[2] / kv);
    let x = ops.reshape(x, &[b, m, kv, 1, d])?;
    let copies = vec![&x; heads / kv];
    let x = ops.concat(&copies, 3)?;
    ops.reshape(&x, &[b, m, heads * d])
}

/// Gated feed-forward (`ff.net.0.proj` → hidden ⊙ act(gate) → `ff.net.2`).
pub fn feed_forward<O: Ops>(ops: &mut O, x: &O::Tensor, t: &TransformerSpec) -> R<O> {
    let dims = ops.dims(x);
    let dim = dims[dims.len() - 1];
    let inner = t.ff_inner(dim);
    let act = match t.ff_activation {
        FeedForwardActivation::Gelu => Unary::GeluErf,
        FeedForwardActivation::Swish => Unary::Silu,
    };
    // The projection and its gate as one op (inside the projection's scope), which an
    // interpreter may fuse.
    let h = scoped(ops, "net.0.proj", |ops| {
        let (w, b) = linear_params(ops, x, 2 * inner, true)?;
        let b = b.expect("the projection has a bias");
        ops.feed_forward_in(x, (&w, &b), act)
    })?;
    scoped(ops, "net.2", |ops| linear(ops, &h, dim, true))
}

/// diffusers' `BasicTransformerBlock`, with either attention optional (`norm1`/`attn1` for self,
/// `norm2`/`attn2` for cross keep their names when the other is removed).
pub fn transformer_block<O: Ops>(
    ops: &mut O,
    x: &O::Tensor,
    context: &O::Tensor,
    t: &TransformerSpec,
) -> R<O> {
    let mut x = x.clone();
    if t.self_attention {
        let h = scoped(ops, "norm1", |ops| layer_norm(ops, &x, LAYER_NORM_EPS))?;
        let h = scoped(ops, "attn1", |ops| attention(ops, &h, None, t))?;
        x = ops.add(&x, &h)?;
    }
    if t.cross_attention {
        let h = scoped(ops, "norm2", |ops| layer_norm(ops, &x, LAYER_NORM_EPS))?;
        let h = scoped(ops, "attn2", |ops| attention(ops, &h, Some(context), t))?;
        x = ops.add(&x, &h)?;
    }
    let h = scoped(ops, "norm3", |ops| layer_norm(ops, &x, LAYER_NORM_EPS))?;
    let h = scoped(ops, "ff", |ops| feed_forward(ops, &h, t))?;
    ops.add(&x, &h)
}

/// diffusers' `Transformer2DModel`: GroupNorm, `proj_in`, `depth` transformer blocks, `proj_out`,
/// residual.
pub fn transformer_2d<O: Ops>(
    ops: &mut O,
    x: &O::Tensor,
    context: &O::Tensor,
    t: &TransformerSpec,
    depth: usize,
    groups: usize,
    proj: Projection,
) -> R<O> {
    let dims = ops.dims(x);
    let (batch, c, hgt, wid) = (dims[0], dims[1], dims[2], dims[3]);
    let h = scoped(ops, "norm", |ops| {
        group_norm(ops, x, groups, TRANSFORMER_GROUP_NORM_EPS, None)
    })?;
    let to_tokens = |ops: &mut O, h: &O::Tensor| -> R<O> {
        let h = ops.permute(h, &[0, 2, 3, 1])?;
        ops.reshape(&h, &[batch, hgt * wid, c])
    };
    let mut h = match proj {
        Projection::Conv => {
            let h = scoped(ops, "proj_in", |ops| conv(ops, &h, c, 1, 1))?;
            to_tokens(ops, &h)?
        }
        Projection::Linear => {
            let h = to_tokens(ops, &h)?;
            scoped(ops, "proj_in", |ops| linear(ops, &h, c, true))?
        }
    };
    for k in 0..depth {
        h = scoped(ops, &format!("transformer_blocks.{k}"), |ops| {
            transformer_block(ops, &h, context, t)
        })?;
    }
    let to_image = |ops: &mut O, h: &O::Tensor| -> R<O> {
        let h = ops.reshape(h, &[batch, hgt, wid, c])?;
        ops.permute(&h, &[0, 3, 1, 2])
    };
    let h = match proj {
        Projection::Conv => {
            let h = to_image(ops, &h)?;
            scoped(ops, "proj_out", |ops| conv(ops, &h, c, 1, 1))?
        }
        Projection::Linear => {
            let h = scoped(ops, "proj_out", |ops| linear(ops, &h, c, true))?;
            to_image(ops, &h)?
        }
    };
    ops.add(&h, x)
}

/// `downsamplers.0.conv`: 3x3 stride-2 conv.
pub fn downsample<O: Ops>(ops: &mut O, x: &O::Tensor) -> R<O> {
    let c = ops.dims(x)[1];
    scoped_as(ops, "downsamplers.0", SAMPLER, |ops| {
        scoped(ops, "conv", |ops| conv(ops, x, c, 3, 2))
    })
}

/// `upsamplers.0.conv` after nearest-neighbour 2x upsampling.
pub fn upsample<O: Ops>(ops: &mut O, x: &O::Tensor) -> R<O> {
    let c = ops.dims(x)[1];
    scoped_as(ops, "upsamplers.0", SAMPLER, |ops| {
        let h = ops.upsample_nearest2x(x)?;
        scoped(ops, "conv", |ops| conv(ops, &h, c, 3, 1))
    })
}

const SAMPLER: Role = Role::Block(BlockKind::Sampler);
