//! The proxy transform: any config → a small network with the same structure, trainable on a CPU.
//!
//! Kept: levels, res blocks per stage, transformer depths, and every design choice (self/cross
//! attention, shared K/V, kernel, feed-forward mult and activation, conv kind, projection, mid
//! block, `text_time`). Scaled, deterministically:
//! - channels: `c · base_width / c₀` (c₀ = the first level's channels), rounded to a multiple of
//!   8 (at least 8), so relative widths survive (MobileDiffusion 320/640/1024 → 32/64/104);
//! - heads: one per 8 channels (head width 8) wherever a stage has transformers; grouped-query
//!   attention keeps its share of K/V heads;
//! - norm groups: 8; time embedding: widths scaled like the channels;
//! - text: width and tokens of the proxy text encoder; `text_time`: pooled width = text width,
//!   sinusoid width scaled like the channels;
//! - the latent: 12 × 16 × 16, a 32 × 32 RGB image folded 2 × 2 into channels (a lossless stand-in
//!   for the VAE, which cannot be trained or downloaded here).

use serde::{Deserialize, Serialize};
use unetlab_spec::{
    LevelSpec, MidSpec, NormSpec, StageSpec, TextTimeSpec, TimeEmbeddingSpec, TransformerSpec,
    UnetSpec,
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

/// The proxy of `spec`. Every spec struct is destructured exhaustively, so a new field of the
/// resolved spec fails to compile here until the proxy decides whether to keep or scale it.
pub fn proxy_spec(spec: &UnetSpec, p: &ProxyShape) -> UnetSpec {
    let UnetSpec {
        in_channels: _,
        out_channels: _,
        latent_size: _,
        text_dim: _,
        text_tokens: _,
        time,
        addition,
        norm,
        proj,
        levels,
        mid,
    } = spec;
    let c0 = levels.first().map_or(1, |l| l.channels).max(1) as f64;
    let scale = p.base_width as f64 / c0;
    let width = |c: usize| (((c as f64 * scale) / 8.0).round() as usize * 8).max(8);
    let even = |c: usize| (((c as f64 * scale) / 2.0).round() as usize * 2).max(2);
    let levels = levels
        .iter()
        .map(|l| {
            let LevelSpec {
                channels,
                conv,
                down,
                up,
            } = l;
            let c = width(*channels);
            LevelSpec {
                channels: c,
                conv: *conv,
                down: proxy_stage(down, c, p),
                up: proxy_stage(up, c, p),
            }
        })
        .collect::<Vec<_>>();
    let last = levels.last().map_or(p.base_width, |l| l.channels);
    let TimeEmbeddingSpec {
        channels,
        dim,
        flip_sin_to_cos,
        freq_shift,
    } = time;
    let NormSpec { groups: _, eps } = norm;
    let MidSpec {
        conv,
        transformer_depths,
        transformer,
    } = mid;
    UnetSpec {
        in_channels: p.latent_channels(),
        out_channels: p.latent_channels(),
        latent_size: p.latent_size(),
        text_dim: p.text_dim,
        text_tokens: p.tokens,
        time: TimeEmbeddingSpec {
            channels: even(*channels),
            dim: width(*dim),
            flip_sin_to_cos: *flip_sin_to_cos,
            freq_shift: *freq_shift,
        },
        addition: addition.as_ref().map(|a| {
            let TextTimeSpec {
                time_channels,
                text_embeds_dim: _,
                time_id_count,
            } = a;
            TextTimeSpec {
                time_channels: even(*time_channels),
                text_embeds_dim: p.text_dim,
                time_id_count: *time_id_count,
            }
        }),
        norm: NormSpec {
            groups: p.norm_groups,
            eps: *eps,
        },
        proj: *proj,
        levels,
        mid: MidSpec {
            conv: *conv,
            transformer_depths: transformer_depths.clone(),
            transformer: proxy_transformer(transformer, last, p),
        },
    }
}

fn proxy_stage(s: &StageSpec, channels: usize, p: &ProxyShape) -> StageSpec {
    let StageSpec {
        transformer_depths,
        transformer,
    } = s;
    StageSpec {
        transformer_depths: transformer_depths.clone(),
        transformer: proxy_transformer(transformer, channels, p),
    }
}

/// One head per `head_dim` channels; grouped-query attention keeps its share of K/V heads (the
/// largest divisor of the proxy's heads at most `heads · kv_heads / original heads`, at least 1).
fn proxy_transformer(t: &TransformerSpec, channels: usize, p: &ProxyShape) -> TransformerSpec {
    let TransformerSpec {
        self_attention,
        cross_attention,
        shared_kv,
        kernel,
        heads,
        kv_heads,
        ff_mult,
        ff_activation,
    } = t;
    let proxy_heads = if *heads > 0 {
        (channels / p.head_dim).max(1)
    } else {
        0
    };
    let kv_heads = kv_heads.and_then(|kv| {
        let share = (proxy_heads * kv / heads).max(1);
        let kv = (1..=share)
            .rev()
            .find(|d| proxy_heads.is_multiple_of(*d))
            .unwrap_or(1);
        (kv < proxy_heads).then_some(kv)
    });
    TransformerSpec {
        self_attention: *self_attention,
        cross_attention: *cross_attention,
        shared_kv: *shared_kv,
        kernel: *kernel,
        heads: proxy_heads,
        kv_heads,
        ff_mult: *ff_mult,
        ff_activation: *ff_activation,
    }
}
