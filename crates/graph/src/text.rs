//! The small text encoder trained jointly with proxy UNets: written once over [`Ops`] like the
//! UNet, so it is counted, trained and exported by the same interpreters.

use serde::{Deserialize, Serialize};
use unetlab_spec::TransformerSpec;

use crate::blocks::{layer_norm, linear, transformer_block, LAYER_NORM_EPS};
use crate::ops::{scoped, Init, Ops};

/// Size of the text encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextEncoderSpec {
    /// Vocabulary size (width of the one-hot input).
    pub vocab: usize,
    /// Token positions (the first is the pooling token).
    pub tokens: usize,
    /// Hidden width = the UNet's `text_dim`.
    pub width: usize,
    /// Transformer layers (self-attention + GEGLU feed-forward, pre-norm).
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
}

/// Encodes one-hot tokens `[B, tokens, vocab]` into hidden states `[B, tokens, width]` and a
/// pooled embedding `[B, width]` (the final state of the first position, a `[CLS]` token).
///
/// Parameters: `token_embedding.weight` `[width, vocab]` (a linear map of the one-hot input, so the
/// graph needs no gather), `position_embedding` `[tokens, width]`, `layers.i.*` (diffusers'
/// `BasicTransformerBlock` names, self-attention only) and `final_layer_norm`.
pub fn text_encoder_forward<O: Ops>(
    ops: &mut O,
    spec: &TextEncoderSpec,
    one_hot: &O::Tensor,
) -> Result<(O::Tensor, O::Tensor), O::Error> {
    let batch = ops.dims(one_hot)[0];
    let x = scoped(ops, "token_embedding", |ops| {
        linear(ops, one_hot, spec.width, false)
    })?;
    let positions = ops.param(
        "position_embedding",
        &[spec.tokens, spec.width],
        Init::FanIn(spec.width),
    )?;
    let mut x = ops.add(&x, &positions)?;
    // CLIP's layer: diffusers' transformer block without cross-attention.
    let block = TransformerSpec {
        cross_attention: false,
        ..TransformerSpec::diffusers(spec.heads)
    };
    for i in 0..spec.layers {
        x = scoped(ops, &format!("layers.{i}"), |ops| {
            transformer_block(ops, &x, &x, &block)
        })?;
    }
    let hidden = scoped(ops, "final_layer_norm", |ops| {
        layer_norm(ops, &x, LAYER_NORM_EPS)
    })?;
    let first = ops.narrow(&hidden, 1, 0, 1)?;
    let pooled = ops.reshape(&first, &[batch, spec.width])?;
    Ok((hidden, pooled))
}
