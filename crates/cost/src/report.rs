//! What the cost interpreter reports.

use serde::Serialize;
use unetlab_graph::{Init, Place};

/// Conditions of one counted forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Conditions {
    /// Batch size (1 in every reported table unless stated).
    pub batch: usize,
    /// Latent height = width.
    pub latent_size: usize,
    /// Text tokens.
    pub tokens: usize,
}

/// Multiply-accumulates by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Macs {
    /// Convolutions.
    pub conv: u64,
    /// Linear layers.
    pub linear: u64,
    /// Attention matmuls (QKᵀ and AV).
    pub attention: u64,
}

impl Macs {
    /// Sum over kinds.
    pub fn total(&self) -> u64 {
        self.conv + self.linear + self.attention
    }

    /// Adds `other` kind by kind.
    pub fn add(&mut self, other: &Macs) {
        self.conv += other.conv;
        self.linear += other.linear;
        self.attention += other.attention;
    }
}

/// A parameter declared by the forward.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Full name (`down_blocks.0.resnets.0.conv1.weight`).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// How the forward asks for it to be initialised.
    pub init: Init,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// Cost recorded directly in one scope (not including nested scopes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScopeCost {
    pub path: Vec<String>,
    pub place: Place,
    pub params: u64,
    pub macs: Macs,
}

/// Cost of everything at one place of the UNet's structure (a direction, level and block kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlaceCost {
    /// Where: down/mid/up, level, block kind (all `None` for ops outside any block).
    pub place: Place,
    /// Parameters.
    pub params: u64,
    /// MACs by kind.
    pub macs: Macs,
}

/// Aggregated cost of a module and everything inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockCost {
    /// Module path (`down_blocks.1.attentions.0`); `(top level)` for ops outside any module.
    pub path: String,
    /// Nesting depth, 1 for top-level blocks.
    pub depth: usize,
    /// Parameters.
    pub params: u64,
    /// MACs by kind.
    pub macs: Macs,
}

/// Everything counted in one forward.
#[derive(Debug, Clone, PartialEq)]
pub struct CostReport {
    /// The conditions counted under.
    pub conditions: Conditions,
    /// Every parameter in declaration order.
    pub parameters: Vec<ParamInfo>,
    /// MACs by kind.
    pub macs: Macs,
    /// Most activation bytes live at once (f32).
    pub peak_activation_bytes: u64,
    /// All activation bytes allocated (f32).
    pub total_activation_bytes: u64,
    pub(crate) scopes: Vec<ScopeCost>,
    pub(crate) blocks: Vec<BlockSignature>,
}

/// One block of the forward (a scope entered with a `Role::Block`: a res block, a transformer
/// stack, a sampler, an embedding, an in/out conv) and what it computes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockSignature {
    /// Module path (`down_blocks.1.resnets.0`).
    pub path: String,
    /// Where it sits.
    pub place: Place,
    /// 16 hex digits of SHA-256 over the block's ops in order, each with the shapes it works on
    /// and its settings (conv stride and groups, activation, norm groups, ...): blocks with equal
    /// signatures run the same computation, wherever they sit and whichever config holds them.
    pub signature: String,
    /// Parameters.
    pub params: u64,
    /// MACs by kind.
    pub macs: Macs,
}

impl CostReport {
    /// Number of parameters.
    pub fn params(&self) -> u64 {
        self.parameters.iter().map(ParamInfo::numel).sum()
    }

    /// Number of parameter tensors.
    pub fn tensors(&self) -> usize {
        self.parameters.len()
    }

    /// FLOPs = 2 × MACs.
    pub fn flops(&self) -> u64 {
        2 * self.macs.total()
    }

    /// Cost per place of the structure (direction, level, block kind), in execution order of
    /// each place's first op: what reports group by, instead of parsing parameter names.
    pub fn by_place(&self) -> Vec<PlaceCost> {
        let mut out: Vec<PlaceCost> = Vec::new();
        for scope in &self.scopes {
            match out.iter_mut().find(|p| p.place == scope.place) {
                Some(p) => {
                    p.params += scope.params;
                    p.macs.add(&scope.macs);
                }
                None => out.push(PlaceCost {
                    place: scope.place,
                    params: scope.params,
                    macs: scope.macs,
                }),
            }
        }
        out
    }

    /// Every block of the forward in execution order, with its signature (what a latency table
    /// is keyed on).
    pub fn blocks(&self) -> &[BlockSignature] {
        &self.blocks
    }

    /// Modules down to `depth` levels of nesting, in execution order, parents before children.
    pub fn breakdown(&self, depth: usize) -> Vec<BlockCost> {
        let mut blocks: Vec<BlockCost> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for scope in &self.scopes {
            let prefixes: Vec<&[String]> = if scope.path.is_empty() {
                vec![&[]]
            } else {
                (1..=scope.path.len().min(depth))
                    .map(|k| &scope.path[..k])
                    .collect()
            };
            for prefix in prefixes {
                let path = if prefix.is_empty() {
                    "(top level)".to_string()
                } else {
                    prefix.join(".")
                };
                let i = *index.entry(path.clone()).or_insert_with(|| {
                    blocks.push(BlockCost {
                        path,
                        depth: prefix.len().max(1),
                        params: 0,
                        macs: Macs::default(),
                    });
                    blocks.len() - 1
                });
                blocks[i].params += scope.params;
                blocks[i].macs.add(&scope.macs);
            }
        }
        blocks
    }
}
