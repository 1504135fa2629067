//! What a search can constrain and optimise: counts from the cost interpreter, predicted latency,
//! and the proxy's quality where a candidate was trained.

use std::fmt;

use serde::{Deserialize, Serialize};
use unetlab_cost::CostReport;
use unetlab_spec::UnetSpec;

/// One measurable property of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Parameters.
    Params,
    /// G MACs per UNet evaluation (conv + linear + attention matmuls) at the search's conditions.
    Gmacs,
    /// G MACs of convolutions.
    GmacsConv,
    /// G MACs of linear layers.
    GmacsLinear,
    /// G MACs of attention matmuls (QKᵀ and AV).
    GmacsAttention,
    /// Peak activation memory of an inference forward, MiB (f32).
    ActivationMib,
    /// Res blocks (the paper's "conv blocks").
    ResBlocks,
    /// Transformer blocks with self-attention.
    SelfAttentionBlocks,
    /// Transformer blocks with cross-attention.
    CrossAttentionBlocks,
    /// Latency of one UNet evaluation in seconds, predicted from the per-block table (on the
    /// search's device and dtype).
    LatencyS,
    /// The proxy's validation loss (needs training).
    ValidationLoss,
    /// The proxy's Fréchet distance (needs training).
    Fd,
    /// The proxy's text alignment (needs training).
    TextAlignment,
    /// The proxy's attribute alignment (needs training).
    AttributeAlignment,
}

impl Metric {
    /// Every metric, in table order.
    pub const ALL: [Metric; 14] = [
        Metric::Params,
        Metric::Gmacs,
        Metric::GmacsConv,
        Metric::GmacsLinear,
        Metric::GmacsAttention,
        Metric::ActivationMib,
        Metric::ResBlocks,
        Metric::SelfAttentionBlocks,
        Metric::CrossAttentionBlocks,
        Metric::LatencyS,
        Metric::ValidationLoss,
        Metric::Fd,
        Metric::TextAlignment,
        Metric::AttributeAlignment,
    ];

    /// The name used in search files and tables.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Params => "params",
            Metric::Gmacs => "gmacs",
            Metric::GmacsConv => "gmacs_conv",
            Metric::GmacsLinear => "gmacs_linear",
            Metric::GmacsAttention => "gmacs_attention",
            Metric::ActivationMib => "activation_mib",
            Metric::ResBlocks => "res_blocks",
            Metric::SelfAttentionBlocks => "self_attention_blocks",
            Metric::CrossAttentionBlocks => "cross_attention_blocks",
            Metric::LatencyS => "latency_s",
            Metric::ValidationLoss => "validation_loss",
            Metric::Fd => "fd",
            Metric::TextAlignment => "text_alignment",
            Metric::AttributeAlignment => "attribute_alignment",
        }
    }

    /// Whether the metric needs a trained proxy (known only after the quality stage).
    pub fn needs_training(self) -> bool {
        matches!(
            self,
            Metric::ValidationLoss
                | Metric::Fd
                | Metric::TextAlignment
                | Metric::AttributeAlignment
        )
    }

    /// Whether larger is better (the alignments); everything else is better smaller.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::TextAlignment | Metric::AttributeAlignment)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A candidate's metric values (`None` where not known: latency without a table, quality
/// without training).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Values(pub [Option<f64>; Metric::ALL.len()]);

impl Values {
    /// The block counts of a spec (known before counting MACs).
    pub fn structural(spec: &UnetSpec) -> Values {
        let mut v = Values::default();
        v.set(Metric::ResBlocks, spec.res_block_count() as f64);
        v.set(
            Metric::SelfAttentionBlocks,
            spec.self_attention_count() as f64,
        );
        v.set(
            Metric::CrossAttentionBlocks,
            spec.cross_attention_count() as f64,
        );
        v
    }

    /// The counts of a spec and its cost report.
    pub fn counted(spec: &UnetSpec, cost: &CostReport) -> Values {
        let mut v = Values::structural(spec);
        let g = |m: u64| m as f64 / 1e9;
        v.set(Metric::Params, cost.params() as f64);
        v.set(Metric::Gmacs, g(cost.macs.total()));
        v.set(Metric::GmacsConv, g(cost.macs.conv));
        v.set(Metric::GmacsLinear, g(cost.macs.linear));
        v.set(Metric::GmacsAttention, g(cost.macs.attention));
        v.set(
            Metric::ActivationMib,
            cost.peak_activation_bytes as f64 / (1u64 << 20) as f64,
        );
        v
    }

    /// Whether the metric is a block count, known before counting.
    pub fn is_structural(m: Metric) -> bool {
        matches!(
            m,
            Metric::ResBlocks | Metric::SelfAttentionBlocks | Metric::CrossAttentionBlocks
        )
    }

    /// The value of `m`, if known.
    pub fn get(&self, m: Metric) -> Option<f64> {
        self.0[Self::index(m)]
    }

    /// Sets the value of `m`.
    pub fn set(&mut self, m: Metric, value: f64) {
        self.0[Self::index(m)] = Some(value);
    }

    fn index(m: Metric) -> usize {
        Metric::ALL
            .iter()
            .position(|&x| x == m)
            .expect("every metric is in ALL")
    }
}
