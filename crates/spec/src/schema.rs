//! The YAML schema as written by users: optional fields, inheritable options, no derived values.
//!
//! Every struct rejects unknown fields, so a typo is an error that names its path. Validation and
//! defaulting happen in [`crate::resolve`], which turns a [`ConfigFile`] into a [`crate::UnetSpec`].

use serde::{Deserialize, Deserializer, Serialize};

/// One config file after `extends` merging: a name, a description and the UNet.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Display name; defaults to the file stem or preset name (never inherited through `extends`).
    pub name: Option<String>,
    /// Free-text description, shown in reports.
    pub description: Option<String>,
    /// What the paper says about this config (never inherited through `extends`).
    pub paper: Option<PaperNote>,
    /// The network.
    pub unet: UnetConfig,
}

/// The paper's statement about a config: which step it is, what the paper claims for it, and
/// how the paper trained it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaperNote {
    /// What this config changes, in the paper's terms ("share K/V projections").
    pub step: String,
    /// The paper's claim for the step ("params −5 %", "FID 12.50 → 17.87").
    pub claim: String,
    /// Name of the config the step is measured against (its predecessor), if any.
    pub baseline: Option<String>,
    /// The claim in machine-readable form: the expected direction of each named metric against
    /// the baseline (`{fd: worse}`, `{fd: no_loss, latency: better}`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub expect: std::collections::BTreeMap<ClaimMetric, ClaimDirection>,
    /// Train this config from another's weights, as the paper does for ReLU attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
}

/// A metric a claim is stated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimMetric {
    /// Fréchet distance of the proxy's samples (the paper's FID); lower is better.
    Fd,
    /// The proxy's validation loss; lower is better.
    ValidationLoss,
    /// Fraction of stated attributes found in the samples (the paper's CLIP score); higher is
    /// better.
    AttributeAlignment,
    /// Fraction of samples with every attribute right; higher is better.
    TextAlignment,
    /// Parameters; fewer is better.
    Params,
    /// MACs; fewer is better.
    Macs,
    /// Measured latency; lower is better.
    Latency,
}

impl ClaimMetric {
    /// Whether a larger value is better (alignment) rather than worse (everything else).
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            ClaimMetric::AttributeAlignment | ClaimMetric::TextAlignment
        )
    }

    /// How much worse, relative to the baseline, a "no loss" claim allows: 10 % for FD (the
    /// paper calls FID 12.31 → 12.58, +2 %, no loss; its harmful step is +43 %), 3 % for the
    /// validation loss (whose config-to-config differences are a few percent), 5 % for the
    /// alignments, nothing for counts and latency.
    pub fn no_loss_tolerance(self) -> f64 {
        match self {
            ClaimMetric::Fd => 0.10,
            ClaimMetric::ValidationLoss => 0.03,
            ClaimMetric::AttributeAlignment | ClaimMetric::TextAlignment => 0.05,
            ClaimMetric::Params | ClaimMetric::Macs | ClaimMetric::Latency => 0.0,
        }
    }

    /// The name used in configs and tables.
    pub fn name(self) -> &'static str {
        match self {
            ClaimMetric::Fd => "fd",
            ClaimMetric::ValidationLoss => "validation_loss",
            ClaimMetric::AttributeAlignment => "attribute_alignment",
            ClaimMetric::TextAlignment => "text_alignment",
            ClaimMetric::Params => "params",
            ClaimMetric::Macs => "macs",
            ClaimMetric::Latency => "latency",
        }
    }
}

/// What the paper says a step does to a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimDirection {
    /// The step makes the metric worse.
    Worse,
    /// The step does not make the metric worse.
    NoLoss,
    /// The step makes the metric better.
    Better,
}

impl ClaimDirection {
    /// The name used in configs and tables.
    pub fn name(self) -> &'static str {
        match self {
            ClaimDirection::Worse => "worse",
            ClaimDirection::NoLoss => "no loss",
            ClaimDirection::Better => "better",
        }
    }
}

/// Training from another config's weights (matching parameters by name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FineTune {
    /// The config whose trained weights this one starts from (same seed).
    pub from: String,
    /// Fine-tuning steps as a fraction of the budget's steps, in (0, 1].
    pub fraction: FineTuneFraction,
}

/// A fraction in (0, 1], checked when read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FineTuneFraction(pub f64);

impl Eq for FineTuneFraction {}

impl<'de> Deserialize<'de> for FineTuneFraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v > 0.0 && v <= 1.0 {
            Ok(FineTuneFraction(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "fraction {v} must be in (0, 1]"
            )))
        }
    }
}

/// The UNet: global settings, one entry per resolution level, and the bottleneck (`mid`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    /// Latent channels in (4 for the SD VAE).
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Latent height = width at which costs are counted (64 for 512 px images with the SD VAE).
    pub latent_size: usize,
    /// Text conditioning: embedding width and token count.
    pub text: TextConfig,
    /// Sinusoidal timestep embedding and its MLP.
    #[serde(default)]
    pub time: TimeConfig,
    /// SDXL's `text_time` addition embedding (pooled text + size/crop conditioning), if any.
    pub addition: Option<AdditionConfig>,
    /// GroupNorm settings of the res blocks and output.
    #[serde(default)]
    pub norm: NormConfig,
    /// Default attention options for every transformer block.
    #[serde(default)]
    pub attention: AttentionOptions,
    /// Default feed-forward options for every transformer block.
    #[serde(default)]
    pub feed_forward: FeedForwardOptions,
    /// `proj_in` / `proj_out` of every transformer: 1x1 conv (SD 1.x) or linear (SD 2.x, SDXL).
    #[serde(default)]
    pub proj: Projection,
    /// Default 3x3 conv kind of the res blocks.
    #[serde(default)]
    pub conv: ConvKind,
    /// Resolution levels, outermost (highest resolution) first.
    pub levels: Vec<LevelConfig>,
    /// The bottleneck block.
    pub mid: MidConfig,
}

/// Text conditioning.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Width of the text encoder's hidden states (`cross_attention_dim`).
    pub dim: usize,
    /// Number of text tokens (77 for CLIP).
    #[serde(default = "default_tokens")]
    pub tokens: usize,
}

fn default_tokens() -> usize {
    77
}

/// Timestep embedding. `channels` defaults to the first level's width, `dim` to 4x that.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeConfig {
    /// Width of the sinusoidal embedding.
    pub channels: Option<usize>,
    /// Width of the embedding MLP output (`time_embed_dim`).
    pub dim: Option<usize>,
    /// Order `[cos, sin]` instead of `[sin, cos]` (true for SD).
    pub flip_sin_to_cos: Option<bool>,
    /// diffusers' `freq_shift` (`downscale_freq_shift`).
    pub freq_shift: Option<f64>,
}

/// An addition embedding added to the time embedding.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdditionConfig {
    /// SDXL: `linear(concat(text_embeds, sinusoidal(time_ids)))`.
    TextTime {
        /// Sinusoidal width per time id (`addition_time_embed_dim`, 256 for SDXL).
        time_channels: usize,
        /// Width of the pooled text embedding (1280 for SDXL).
        text_embeds_dim: usize,
        /// Number of time ids (6 for SDXL: original size, crop, target size).
        #[serde(default = "default_time_ids")]
        time_ids: usize,
    },
}

/// SDXL's time ids per image: original height and width, crop top and left, target height and
/// width (the default of `addition.time_ids`).
pub const SDXL_TIME_IDS: usize = 6;

fn default_time_ids() -> usize {
    SDXL_TIME_IDS
}

/// GroupNorm settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NormConfig {
    /// Number of groups.
    #[serde(default = "default_groups")]
    pub groups: usize,
    /// Epsilon of the res-block and output norms (transformers use 1e-6, as diffusers does).
    #[serde(default = "default_eps")]
    pub eps: f64,
}

impl Default for NormConfig {
    fn default() -> Self {
        Self {
            groups: default_groups(),
            eps: default_eps(),
        }
    }
}

fn default_groups() -> usize {
    32
}

fn default_eps() -> f64 {
    1e-5
}

/// Attention options; every field inherits from the enclosing scope when absent
/// (unet → level → level.down / level.up; unet → mid).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionOptions {
    /// Self-attention (`attn1`) in each transformer block.
    #[serde(rename = "self", skip_serializing_if = "Option::is_none")]
    pub self_attention: Option<bool>,
    /// Cross-attention to the text (`attn2`) in each transformer block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross: Option<bool>,
    /// One projection for keys and values (`to_k` serves as `to_v`; no `to_v` weight).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_kv: Option<bool>,
    /// `softmax(QKᵀ·s)` or ReLU attention `relu(QKᵀ·s) / N_keys`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<AttentionKernel>,
    /// Number of heads (give this or `head_dim`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    /// Width of one head (give this or `heads`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Grouped-query attention: key/value heads, fewer than `heads` and dividing them; each serves
    /// `heads / kv_heads` query heads (default: one per query head).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
}

/// Feed-forward options; inherit like [`AttentionOptions`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedForwardOptions {
    /// diffusers `mult`: inner width = mult · dim, gated projection 2 · inner (SD: 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mult: Option<f64>,
    /// Gate activation: `gelu` (GEGLU) or `swish` (SwiGLU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<FeedForwardActivation>,
}

/// One resolution level.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LevelConfig {
    /// Channels of every block at this level.
    pub channels: usize,
    /// 3x3 conv kind of this level's res blocks (default: `unet.conv`).
    pub conv: Option<ConvKind>,
    /// Attention options for both directions at this level.
    #[serde(default)]
    pub attention: AttentionOptions,
    /// Feed-forward options for both directions at this level.
    #[serde(default)]
    pub feed_forward: FeedForwardOptions,
    /// Encoder side.
    pub down: StageConfig,
    /// Decoder side.
    pub up: StageConfig,
}

/// The res blocks of one level in one direction, each optionally followed by transformers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Number of res blocks.
    pub res_blocks: usize,
    /// Transformer blocks after each res block: one number for all, or a list (one per res block).
    #[serde(default)]
    pub transformer_depth: Depth,
    /// Attention overrides for this direction.
    #[serde(default)]
    pub attention: AttentionOptions,
    /// Feed-forward overrides for this direction.
    #[serde(default)]
    pub feed_forward: FeedForwardOptions,
}

/// The bottleneck: `res_blocks` res blocks with a transformer stack between each pair.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MidConfig {
    /// Number of res blocks (diffusers: 2).
    #[serde(default = "default_mid_res_blocks")]
    pub res_blocks: usize,
    /// Transformer blocks between consecutive res blocks: a number, or a list of `res_blocks - 1`.
    #[serde(default)]
    pub transformer_depth: Depth,
    /// 3x3 conv kind (default: `unet.conv`).
    pub conv: Option<ConvKind>,
    /// Attention overrides.
    #[serde(default)]
    pub attention: AttentionOptions,
    /// Feed-forward overrides.
    #[serde(default)]
    pub feed_forward: FeedForwardOptions,
}

fn default_mid_res_blocks() -> usize {
    2
}

/// A transformer depth: the same for every slot, or one entry per slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Depth {
    /// Same depth after every res block.
    Uniform(usize),
    /// One depth per res block.
    PerBlock(Vec<usize>),
}

impl Default for Depth {
    fn default() -> Self {
        Depth::Uniform(0)
    }
}

impl<'de> Deserialize<'de> for Depth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DepthVisitor;
        impl<'de> serde::de::Visitor<'de> for DepthVisitor {
            type Value = Depth;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-negative integer or a list of non-negative integers")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Depth, E> {
                usize::try_from(v)
                    .map(Depth::Uniform)
                    .map_err(|_| E::custom("depth too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Depth, E> {
                usize::try_from(v).map(Depth::Uniform).map_err(|_| {
                    E::invalid_value(serde::de::Unexpected::Signed(v), &"a non-negative depth")
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Depth, A::Error> {
                let mut depths = Vec::new();
                while let Some(d) = seq.next_element::<usize>()? {
                    depths.push(d);
                }
                Ok(Depth::PerBlock(depths))
            }
        }
        deserializer.deserialize_any(DepthVisitor)
    }
}

/// Attention score kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    /// `softmax(QKᵀ·scale)`.
    Softmax,
    /// `relu(QKᵀ·scale) / N_keys` (Wortsman et al. 2023).
    Relu,
}

/// Gate activation of the gated feed-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedForwardActivation {
    /// GEGLU with exact (erf) GELU, as diffusers.
    Gelu,
    /// SwiGLU (SiLU gate).
    Swish,
}

/// How a transformer maps between the feature map and tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// 1x1 convolution (SD 1.x).
    #[default]
    Conv,
    /// Linear layer on tokens (SD 2.x, SDXL).
    Linear,
}

/// Kind of the 3x3 convolutions inside res blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    /// Dense 3x3 convolution.
    #[default]
    Regular,
    /// Depthwise 3x3 (no bias) followed by pointwise 1x1 (with bias).
    Separable,
}
