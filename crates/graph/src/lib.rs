//! The UNet forward pass, written once.
//!
//! [`unet_forward`] is generic over [`Ops`]; interpreters give it meaning (shapes and costs in
//! `unetlab-cost`, real tensors in the candle interpreter, graph nodes in the exporter). Because
//! parameters are declared inside the forward by diffusers' names, names, counts and graphs all
//! come from this one definition.

pub mod blocks;
pub mod ops;
pub mod scope;
pub mod text;
pub mod unet;

pub use ops::{
    attend, attend_heads, feed_forward_in, gated, group_norm_act, scoped, scoped_as,
    sinusoid_frequencies, AttentionKernel, Conv2dParams, Init, Ops, Unary,
};
pub use scope::{BlockKind, Direction, Place, Role, ScopeStack};
pub use text::{text_encoder_forward, TextEncoderSpec};
pub use unet::{unet_forward, MissingInput, UnetInputs, F32_INPUTS};
