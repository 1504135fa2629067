//! The proxy transform: any config → a small network with the same structure, trainable on a CPU.
//!
//! Kept: levels, res blocks per stage, transformer depths, and every design choice (self/cross
//! attention, shared K/V, kernel, feed-forward mult and activation, conv kind, projection, mid
//! block, `text_time`). Scaled, deterministically:
//! - channels: `c · base_width / c₀` (c₀ = the first level's channels), rounded to a multiple of
//!   8 (at least 8), so relative widths survive (MobileDiffusion 320/640/1024 → 32/64/104);
//! - heads: one per 8 channels (head width 8) wherever a stage has transformers;
//! - norm groups: 8; time embedding: widths scaled like the channels;
//! - text: width and tokens of the proxy text encoder; `text_time`: pooled width = text width,
//!   sinusoid width scaled like the channels;
//! - the latent: 12 × 16 × 16, a 32 × 32 RGB image folded 2 × 2 into channels (a lossless stand-in
//!   for the VAE, which cannot be trained or downloaded here).

use serde::{Deserialize, Serialize};
use unetlab_spec::{
    NormSpec, StageSpec, TextTimeSpec, TimeEmbeddingSpec, TransformerSpec, UnetSpec,
};

/// The proxy's fixed sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyShape {
    /// Channels of the first level.
    pub base_width: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// GroupNorm groups.
    pub norm_groups: usize,
    /// Image side in pixels (the latent is half of it, with 4 × 3 channels).
    pub image_size: usize,
    /// Text encoder width (= the UNet's `text_dim`).
    pub text_dim: usize,
    /// Text tokens.
    pub tokens: usize,
}

impl Default for ProxyShape {
    fn default() -> Self {
        ProxyShape {
            base_width: 32,
            head_dim: 8,
            norm_groups: 8,
            image_size: 32,
            text_dim: 64,
            tokens: 16,
        }
    }
}

impl ProxyShape {
    /// Latent side (the image folded 2 × 2).
    pub fn latent_size(&self) -> usize {
        self.image_size / 2
    }

    /// Latent channels (RGB × 2 × 2).
    pub fn latent_channels(&self) -> usize {
        12
    }
}

/// The proxy of `spec`.
pub fn proxy_spec(spec: &UnetSpec, p: &ProxyShape) -> UnetSpec {
    let c0 = spec.levels.first().map_or(1, |l| l.channels).max(1) as f64;
    let scale = p.base_width as f64 / c0;
    let width = |c: usize| (((c as f64 * scale) / 8.0).round() as usize * 8).max(8);
    let even = |c: usize| (((c as f64 * scale) / 2.0).round() as usize * 2).max(2);
    let transformer = |t: &TransformerSpec, channels: usize| TransformerSpec {
        heads: if t.heads > 0 {
            (channels / p.head_dim).max(1)
        } else {
            0
        },
        ..t.clone()
    };
    let stage = |s: &StageSpec, channels: usize| StageSpec {
        transformer_depths: s.transformer_depths.clone(),
        transformer: transformer(&s.transformer, channels),
    };
    let levels = spec
        .levels
        .iter()
        .map(|l| {
            let c = width(l.channels);
            unetlab_spec::LevelSpec {
                channels: c,
                conv: l.conv,
                down: stage(&l.down, c),
                up: stage(&l.up, c),
            }
        })
        .collect::<Vec<_>>();
    let last = levels.last().map_or(p.base_width, |l| l.channels);
    UnetSpec {
        in_channels: p.latent_channels(),
        out_channels: p.latent_channels(),
        latent_size: p.latent_size(),
        text_dim: p.text_dim,
        text_tokens: p.tokens,
        time: TimeEmbeddingSpec {
            channels: even(spec.time.channels),
            dim: width(spec.time.dim),
            ..spec.time.clone()
        },
        addition: spec.addition.as_ref().map(|a| TextTimeSpec {
            time_channels: even(a.time_channels),
            text_embeds_dim: p.text_dim,
            time_ids: a.time_ids,
        }),
        norm: NormSpec {
            groups: p.norm_groups,
            eps: spec.norm.eps,
        },
        proj: spec.proj,
        levels,
        mid: unetlab_spec::MidSpec {
            conv: spec.mid.conv,
            transformer_depths: spec.mid.transformer_depths.clone(),
            transformer: transformer(&spec.mid.transformer, last),
        },
    }
}
