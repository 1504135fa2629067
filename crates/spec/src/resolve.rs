//! Validation and defaulting: [`ConfigFile`] → [`UnetSpec`], collecting every error with its path.

use serde::Serialize;

use crate::error::FieldError;
use crate::schema::{
    AdditionConfig, AttentionKernel, AttentionOptions, ConfigFile, ConvKind, Depth,
    FeedForwardActivation, FeedForwardOptions, Projection,
};

/// A validated UNet with every default filled in and every inherited option resolved.
/// This is what the forward pass is written against.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnetSpec {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Latent height = width at which costs are counted by default.
    pub latent_size: usize,
    /// Width of the text hidden states.
    pub text_dim: usize,
    /// Number of text tokens by default.
    pub text_tokens: usize,
    /// Timestep embedding.
    pub time: TimeEmbeddingSpec,
    /// SDXL-style addition embedding.
    pub addition: Option<TextTimeSpec>,
    /// GroupNorm groups and epsilon of res blocks and the output norm.
    pub norm: NormSpec,
    /// Transformer `proj_in` / `proj_out` kind.
    pub proj: Projection,
    /// Levels, outermost first.
    pub levels: Vec<LevelSpec>,
    /// Bottleneck.
    pub mid: MidSpec,
}

/// Sinusoidal timestep embedding followed by a 2-layer MLP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeEmbeddingSpec {
    /// Sinusoid width.
    pub channels: usize,
    /// MLP width (`time_embed_dim`), also the width every res block projects from.
    pub dim: usize,
    /// `[cos, sin]` order.
    pub flip_sin_to_cos: bool,
    /// diffusers `downscale_freq_shift`.
    pub freq_shift: f64,
}

/// SDXL's `text_time` addition embedding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextTimeSpec {
    /// Sinusoid width per time id.
    pub time_channels: usize,
    /// Pooled text embedding width.
    pub text_embeds_dim: usize,
    /// How many time ids the `time_ids` input holds per image (its YAML and hash key is
    /// `time_ids`, like the input).
    #[serde(rename = "time_ids")]
    pub time_id_count: usize,
}

impl TextTimeSpec {
    /// Input width of `add_embedding.linear_1`.
    pub fn input_dim(&self) -> usize {
        self.text_embeds_dim + self.time_id_count * self.time_channels
    }
}

/// GroupNorm settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NormSpec {
    /// Groups.
    pub groups: usize,
    /// Epsilon.
    pub eps: f64,
}

/// One resolution level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelSpec {
    /// Channels.
    pub channels: usize,
    /// Res-block conv kind.
    pub conv: ConvKind,
    /// Encoder side.
    pub down: StageSpec,
    /// Decoder side.
    pub up: StageSpec,
}

/// Res blocks of one level and direction; `transformer_depths[i]` transformer blocks follow res block `i`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSpec {
    /// One entry per res block.
    pub transformer_depths: Vec<usize>,
    /// Options shared by this stage's transformer blocks.
    pub transformer: TransformerSpec,
}

impl StageSpec {
    /// Number of res blocks.
    pub fn res_blocks(&self) -> usize {
        self.transformer_depths.len()
    }
}

/// The bottleneck: res block, then for each entry of `transformer_depths` a transformer stack and a res block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MidSpec {
    /// Conv kind of the res blocks.
    pub conv: ConvKind,
    /// One entry per gap between res blocks (`res_blocks - 1` entries).
    pub transformer_depths: Vec<usize>,
    /// Transformer options.
    pub transformer: TransformerSpec,
}

impl MidSpec {
    /// Number of res blocks.
    pub fn res_blocks(&self) -> usize {
        self.transformer_depths.len() + 1
    }
}

/// Resolved options of a transformer block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransformerSpec {
    /// Has self-attention (`norm1`, `attn1`).
    pub self_attention: bool,
    /// Has cross-attention (`norm2`, `attn2`).
    pub cross_attention: bool,
    /// Keys and values share one projection.
    pub shared_kv: bool,
    /// Score kernel.
    pub kernel: AttentionKernel,
    /// Number of heads (resolved from `heads` or `head_dim`; 0 if the stage has no transformers).
    pub heads: usize,
    /// Key/value heads of grouped-query attention, fewer than `heads` and dividing them; `None`:
    /// one per query head (multi-head attention, and the same hash as before the option existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    /// Feed-forward multiplier.
    pub ff_mult: f64,
    /// Feed-forward gate activation.
    pub ff_activation: FeedForwardActivation,
}

impl TransformerSpec {
    /// diffusers' transformer block with `heads` heads, and the default of every option: self-
    /// and cross-attention, separate keys and values, softmax, one K/V head per query head, a
    /// GEGLU feed-forward of mult 4.
    pub fn diffusers(heads: usize) -> Self {
        TransformerSpec {
            self_attention: true,
            cross_attention: true,
            shared_kv: false,
            kernel: AttentionKernel::Softmax,
            heads,
            kv_heads: None,
            ff_mult: 4.0,
            ff_activation: FeedForwardActivation::Gelu,
        }
    }

    /// Inner width of the feed-forward for a block of width `dim` (`int(dim * mult)`, as diffusers).
    pub fn ff_inner(&self, dim: usize) -> usize {
        (dim as f64 * self.ff_mult) as usize
    }

    /// Key/value heads (= `heads` unless grouped-query attention).
    pub fn kv_head_count(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }

    /// The YAML options that resolve to this spec, every one written (heads only where the stage
    /// has transformers). Destructured exhaustively: a new option cannot be forgotten here.
    pub fn options(&self) -> (AttentionOptions, FeedForwardOptions) {
        let TransformerSpec {
            self_attention,
            cross_attention,
            shared_kv,
            kernel,
            heads,
            kv_heads,
            ff_mult,
            ff_activation,
        } = self;
        (
            AttentionOptions {
                self_attention: Some(*self_attention),
                cross: Some(*cross_attention),
                shared_kv: Some(*shared_kv),
                kernel: Some(*kernel),
                heads: (*heads > 0).then_some(*heads),
                head_dim: None,
                kv_heads: *kv_heads,
            },
            FeedForwardOptions {
                mult: Some(*ff_mult),
                activation: Some(*ff_activation),
            },
        )
    }
}

impl UnetSpec {
    /// Total number of res blocks (the paper's "conv blocks").
    pub fn res_block_count(&self) -> usize {
        self.stages().map(|(_, s)| s.res_blocks()).sum::<usize>() + self.mid.res_blocks()
    }

    /// Total number of transformer blocks.
    pub fn transformer_block_count(&self) -> usize {
        self.transformer_stacks().map(|(d, _)| d).sum()
    }

    /// Number of transformer blocks with self-attention.
    pub fn self_attention_count(&self) -> usize {
        self.transformer_stacks()
            .filter(|(_, t)| t.self_attention)
            .map(|(d, _)| d)
            .sum()
    }

    /// Number of transformer blocks with cross-attention.
    pub fn cross_attention_count(&self) -> usize {
        self.transformer_stacks()
            .filter(|(_, t)| t.cross_attention)
            .map(|(d, _)| d)
            .sum()
    }

    fn stages(&self) -> impl Iterator<Item = (usize, &StageSpec)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(i, l)| [(i, &l.down), (i, &l.up)])
    }

    fn transformer_stacks(&self) -> impl Iterator<Item = (usize, &TransformerSpec)> {
        let stages = self.stages().flat_map(|(_, s)| {
            s.transformer_depths
                .iter()
                .map(move |&d| (d, &s.transformer))
        });
        let mid = self
            .mid
            .transformer_depths
            .iter()
            .map(|&d| (d, &self.mid.transformer));
        stages.chain(mid)
    }
}

/// Checks that a latent of `size` survives one halving per level after the first.
pub fn check_latent_size(levels: usize, size: usize) -> Result<(), String> {
    let halvings = levels.saturating_sub(1).min(63) as u32;
    let factor = 1usize.checked_shl(halvings).unwrap_or(usize::MAX);
    if size == 0 || !size.is_multiple_of(factor) {
        Err(format!(
            "{size} is not a positive multiple of 2^{halvings} = {factor} (one halving per level after the first)"
        ))
    } else {
        Ok(())
    }
}

/// The most res blocks one stage may have: far beyond any UNet, and a bound on what a config can
/// make the tools allocate and walk.
pub const MAX_RES_BLOCKS: usize = 1024;

/// The most transformer blocks after one res block (SDXL has 10): a bound on what a config can
/// make the tools walk.
pub const MAX_TRANSFORMER_DEPTH: usize = 1024;

/// Validates `config` and resolves every default; returns all problems found, each with its field path.
pub fn resolve(config: &ConfigFile) -> Result<UnetSpec, Vec<FieldError>> {
    let mut errs = Errors::default();
    let u = &config.unet;

    errs.positive("unet.in_channels", u.in_channels);
    errs.positive("unet.out_channels", u.out_channels);
    errs.positive("unet.text.dim", u.text.dim);
    errs.positive("unet.text.tokens", u.text.tokens);
    errs.positive("unet.norm.groups", u.norm.groups);
    if !(u.norm.eps > 0.0 && u.norm.eps.is_finite()) {
        errs.push(
            "unet.norm.eps",
            format!("{} must be a positive number", u.norm.eps),
        );
    }
    if u.levels.is_empty() {
        errs.push("unet.levels", "at least one level is required");
    }

    let first_channels = u.levels.first().map_or(0, |l| l.channels);
    let time = TimeEmbeddingSpec {
        channels: u.time.channels.unwrap_or(first_channels),
        dim: u.time.dim.unwrap_or(4 * first_channels),
        flip_sin_to_cos: u.time.flip_sin_to_cos.unwrap_or(true),
        freq_shift: u.time.freq_shift.unwrap_or(0.0),
    };
    errs.even("unet.time.channels", time.channels);
    errs.positive("unet.time.dim", time.dim);
    if !time.freq_shift.is_finite() {
        errs.push("unet.time.freq_shift", "must be a finite number");
    }

    let addition = u.addition.as_ref().map(|a| match a {
        AdditionConfig::TextTime {
            time_channels,
            text_embeds_dim,
            time_ids,
        } => {
            errs.even("unet.addition.time_channels", *time_channels);
            errs.positive("unet.addition.text_embeds_dim", *text_embeds_dim);
            errs.positive("unet.addition.time_ids", *time_ids);
            TextTimeSpec {
                time_channels: *time_channels,
                text_embeds_dim: *text_embeds_dim,
                time_id_count: *time_ids,
            }
        }
    });

    if let Err(message) = check_latent_size(u.levels.len(), u.latent_size) {
        errs.push("unet.latent_size", message);
    }

    let global = Scope {
        attention: u.attention.clone(),
        feed_forward: u.feed_forward.clone(),
    };
    let mut levels = Vec::with_capacity(u.levels.len());
    for (i, level) in u.levels.iter().enumerate() {
        let path = format!("unet.levels[{i}]");
        errs.channels(&path, level.channels, u.norm.groups);
        let scope = global.inner(&level.attention, &level.feed_forward);
        let mut stage = |dir: &str, s: &crate::schema::StageConfig| {
            let spath = format!("{path}.{dir}");
            let depths = errs.depths(&spath, &s.transformer_depth, s.res_blocks, "res_blocks");
            let scope = scope.inner(&s.attention, &s.feed_forward);
            let transformer = errs.transformer(&spath, &path, &scope, level.channels, &depths);
            StageSpec {
                transformer_depths: depths,
                transformer,
            }
        };
        let down = stage("down", &level.down);
        let up = stage("up", &level.up);
        // Judged on the counts as written: a count over the cap is reported once, above.
        let (down_blocks, up_blocks) = (level.down.res_blocks, level.up.res_blocks);
        let skips = down_blocks.saturating_add(1);
        let within_cap = down_blocks <= MAX_RES_BLOCKS && up_blocks <= MAX_RES_BLOCKS;
        if within_cap && up_blocks < skips {
            errs.push(
                format!("{path}.up.res_blocks"),
                format!(
                    "{up_blocks} leaves skip connections unused: level {i} pushes {skips} \
                     (down.res_blocks {down_blocks} + 1), and each up res block takes one"
                ),
            );
        }
        levels.push(LevelSpec {
            channels: level.channels,
            conv: level.conv.unwrap_or(u.conv),
            down,
            up,
        });
    }

    let m = &u.mid;
    if m.res_blocks == 0 {
        errs.push("unet.mid.res_blocks", "must be at least 1");
    }
    let mid_depths = errs.depths(
        "unet.mid",
        &m.transformer_depth,
        m.res_blocks.saturating_sub(1),
        "res_blocks - 1",
    );
    let mid_transformer = errs.transformer(
        "unet.mid",
        "unet.mid",
        &global.inner(&m.attention, &m.feed_forward),
        u.levels.last().map_or(0, |l| l.channels),
        &mid_depths,
    );
    let mid = MidSpec {
        conv: m.conv.unwrap_or(u.conv),
        transformer_depths: mid_depths,
        transformer: mid_transformer,
    };

    errs.finish(UnetSpec {
        in_channels: u.in_channels,
        out_channels: u.out_channels,
        latent_size: u.latent_size,
        text_dim: u.text.dim,
        text_tokens: u.text.tokens,
        time,
        addition,
        norm: NormSpec {
            groups: u.norm.groups,
            eps: u.norm.eps,
        },
        proj: u.proj,
        levels,
        mid,
    })
}

/// Options in force at some point of the config tree.
#[derive(Clone)]
struct Scope {
    attention: AttentionOptions,
    feed_forward: FeedForwardOptions,
}

impl Scope {
    /// Options of an enclosed scope: fields set there win; `heads`/`head_dim` are replaced as a pair.
    fn inner(&self, a: &AttentionOptions, f: &FeedForwardOptions) -> Scope {
        let o = &self.attention;
        let sizes_given = a.heads.is_some() || a.head_dim.is_some();
        Scope {
            attention: AttentionOptions {
                self_attention: a.self_attention.or(o.self_attention),
                cross: a.cross.or(o.cross),
                shared_kv: a.shared_kv.or(o.shared_kv),
                kernel: a.kernel.or(o.kernel),
                heads: if sizes_given { a.heads } else { o.heads },
                head_dim: if sizes_given { a.head_dim } else { o.head_dim },
                kv_heads: a.kv_heads.or(o.kv_heads),
            },
            feed_forward: FeedForwardOptions {
                mult: f.mult.or(self.feed_forward.mult),
                activation: f.activation.or(self.feed_forward.activation),
            },
        }
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    fn positive(&mut self, path: &str, value: usize) {
        if value == 0 {
            self.push(path, "must be positive");
        }
    }

    fn even(&mut self, path: &str, value: usize) {
        if value == 0 || !value.is_multiple_of(2) {
            self.push(
                path,
                format!("{value} must be a positive even number (sin and cos halves)"),
            );
        }
    }

    fn channels(&mut self, path: &str, channels: usize, groups: usize) {
        if channels == 0 {
            self.push(format!("{path}.channels"), "must be positive");
        } else if groups > 0 && !channels.is_multiple_of(groups) {
            self.push(
                format!("{path}.channels"),
                format!("{channels} is not divisible by norm.groups {groups}"),
            );
        }
    }

    /// Expands a depth to one entry per slot, checking a list's length.
    fn depths(&mut self, path: &str, depth: &Depth, slots: usize, slots_name: &str) -> Vec<usize> {
        if slots > MAX_RES_BLOCKS {
            self.push(
                format!("{path}.res_blocks"),
                format!("{slots_name} is {slots}; a stage has at most {MAX_RES_BLOCKS} res blocks"),
            );
            return Vec::new();
        }
        let depths = match depth {
            Depth::Uniform(d) => vec![*d; slots],
            Depth::PerBlock(list) => {
                if list.len() != slots {
                    self.push(
                        format!("{path}.transformer_depth"),
                        format!(
                            "has {} entries but {slots_name} is {slots}; give one depth per res block",
                            list.len()
                        ),
                    );
                }
                list.clone()
            }
        };
        if let Some(d) = depths.iter().find(|&&d| d > MAX_TRANSFORMER_DEPTH) {
            self.push(
                format!("{path}.transformer_depth"),
                format!(
                    "{d} is more than {MAX_TRANSFORMER_DEPTH} transformer blocks after a res block"
                ),
            );
        }
        depths
    }

    /// Resolves a stage's transformer options, validating them only where transformers exist.
    fn transformer(
        &mut self,
        path: &str,
        level_path: &str,
        scope: &Scope,
        channels: usize,
        depths: &[usize],
    ) -> TransformerSpec {
        let a = &scope.attention;
        let f = &scope.feed_forward;
        let d = TransformerSpec::diffusers(0);
        let spec = TransformerSpec {
            self_attention: a.self_attention.unwrap_or(d.self_attention),
            cross_attention: a.cross.unwrap_or(d.cross_attention),
            shared_kv: a.shared_kv.unwrap_or(d.shared_kv),
            kernel: a.kernel.unwrap_or(d.kernel),
            heads: 0,
            kv_heads: d.kv_heads,
            ff_mult: f.mult.unwrap_or(d.ff_mult),
            ff_activation: f.activation.unwrap_or(d.ff_activation),
        };
        if depths.iter().all(|&d| d == 0) {
            return spec;
        }
        if !spec.self_attention && !spec.cross_attention {
            self.push(
                format!("{path}.transformer_depth"),
                "is positive but attention.self and attention.cross are both false: \
                 a transformer block needs at least one attention",
            );
        }
        if !(spec.ff_mult > 0.0 && spec.ff_mult.is_finite()) || spec.ff_inner(channels) == 0 {
            self.push(
                format!("{path}.feed_forward.mult"),
                format!(
                    "{} gives no feed-forward width for {channels} channels",
                    spec.ff_mult
                ),
            );
        }
        let heads = match (a.heads, a.head_dim) {
            (Some(_), Some(_)) => {
                self.push(
                    format!("{path}.attention"),
                    "set either heads or head_dim, not both",
                );
                0
            }
            (None, None) => {
                self.push(
                    format!("{path}.attention.heads"),
                    "transformers need attention.heads or attention.head_dim (at unet, level or stage)",
                );
                0
            }
            (Some(h), None) => {
                if h == 0 || !channels.is_multiple_of(h) {
                    self.push(
                        format!("{path}.attention.heads"),
                        format!("{h} does not divide {level_path} channels {channels}"),
                    );
                }
                h
            }
            (None, Some(d)) => {
                if d == 0 || !channels.is_multiple_of(d) {
                    self.push(
                        format!("{path}.attention.head_dim"),
                        format!("{d} does not divide {level_path} channels {channels}"),
                    );
                    0
                } else {
                    channels / d
                }
            }
        };
        let kv_heads = match a.kv_heads {
            Some(kv) if heads > 0 && (kv == 0 || !heads.is_multiple_of(kv)) => {
                self.push(
                    format!("{path}.attention.kv_heads"),
                    format!("{kv} does not divide the {heads} heads"),
                );
                None
            }
            // As many K/V heads as heads is multi-head attention: the same network, the same hash.
            Some(kv) if kv == heads => None,
            kv => kv,
        };
        TransformerSpec {
            heads,
            kv_heads,
            ..spec
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}
