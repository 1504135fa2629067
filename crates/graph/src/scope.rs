//! Scopes: the one rule that names parameters, and the UNet's structure as data.
//!
//! The forward enters a scope per module (`down_blocks.1`, `resnets.0`, `attn1`, ...). Parameter
//! names are the scope names joined by dots ([`ScopeStack::param_name`]), and a few scopes also
//! say what they are ([`Role`]): a stage of the down path, the mid block or the up path at a
//! level, a res block, a transformer stack, a sampler, an embedding, the input or output conv.
//! [`ScopeStack::place`] folds the stack into a [`Place`] (level, direction, kind), which every
//! report groups by, so nothing downstream parses parameter names.

use serde::{Deserialize, Serialize};

/// Which half of the UNet a scope belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The down (encoder) path.
    Down,
    /// The mid block, at the lowest resolution.
    Mid,
    /// The up (decoder) path.
    Up,
}

/// What kind of block a scope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// The timestep (and SDXL's `text_time`) embedding MLPs.
    Embedding,
    /// `conv_in`, `conv_norm_out` and `conv_out`.
    InOut,
    /// A res block.
    Res,
    /// A transformer stack (`Transformer2DModel`: norm, projections, transformer blocks).
    Transformer,
    /// A down- or upsampler.
    Sampler,
}

impl BlockKind {
    /// A short name for tables and legends.
    pub fn label(self) -> &'static str {
        match self {
            BlockKind::Embedding => "embedding",
            BlockKind::InOut => "in/out conv",
            BlockKind::Res => "res block",
            BlockKind::Transformer => "transformer",
            BlockKind::Sampler => "sampler",
        }
    }
}

/// What a scope says about itself when the forward enters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A stage: `down_blocks.{level}`, `mid_block` (at the lowest level) or `up_blocks.*`.
    Stage(Direction, usize),
    /// A block of this kind.
    Block(BlockKind),
}

/// Where a scope sits: the innermost stage's direction and level, and the innermost block kind.
/// Scopes outside any stage (embeddings, `conv_in`, ...) have neither direction nor level.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Place {
    /// Down, mid or up.
    pub direction: Option<Direction>,
    /// Resolution level, 0 at full latent size.
    pub level: Option<usize>,
    /// The kind of the innermost block.
    pub kind: Option<BlockKind>,
}

impl Place {
    /// A readable name: `down level 1 · res block`, `mid block`, `embedding`, ...
    pub fn label(&self) -> String {
        let stage = match (self.direction, self.level) {
            (Some(Direction::Mid), _) => Some("mid block".to_string()),
            (Some(Direction::Down), Some(l)) => Some(format!("down level {l}")),
            (Some(Direction::Up), Some(l)) => Some(format!("up level {l}")),
            _ => None,
        };
        match (stage, self.kind) {
            (Some(s), Some(k)) => format!("{s} · {}", k.label()),
            (Some(s), None) => s,
            (None, Some(k)) => k.label().to_string(),
            (None, None) => "other".to_string(),
        }
    }
}

/// The stack of scopes an interpreter is in.
#[derive(Debug, Clone, Default)]
pub struct ScopeStack {
    names: Vec<String>,
    roles: Vec<Option<Role>>,
}

impl ScopeStack {
    /// Enters scope `name`.
    pub fn push(&mut self, name: &str, role: Option<Role>) {
        self.names.push(name.to_string());
        self.roles.push(role);
    }

    /// Leaves the innermost scope and returns its name.
    pub fn pop(&mut self) -> Option<String> {
        self.roles.pop();
        self.names.pop()
    }

    /// How many scopes deep the stack is.
    pub fn depth(&self) -> usize {
        self.names.len()
    }

    /// The scope names from the outermost.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The dotted path of the current scope (`down_blocks.1.attentions.0`; empty at the top).
    pub fn path(&self) -> String {
        self.names.join(".")
    }

    /// The full name of parameter `local` declared in the current scope: the one naming rule
    /// (`down_blocks.1.attentions.0.proj_in` + `weight`).
    pub fn param_name(&self, local: &str) -> String {
        let mut full = self.path();
        if !full.is_empty() {
            full.push('.');
        }
        full.push_str(local);
        full
    }

    /// Where the current scope sits.
    pub fn place(&self) -> Place {
        let mut place = Place::default();
        for role in self.roles.iter().flatten() {
            match *role {
                Role::Stage(direction, level) => {
                    place.direction = Some(direction);
                    place.level = Some(level);
                }
                Role::Block(kind) => place.kind = Some(kind),
            }
        }
        place
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_join_with_dots_and_places_fold_inwards() {
        let mut s = ScopeStack::default();
        assert_eq!(s.param_name("weight"), "weight");
        assert_eq!(s.place(), Place::default());
        s.push("up_blocks.0", Some(Role::Stage(Direction::Up, 2)));
        s.push("attentions.1", Some(Role::Block(BlockKind::Transformer)));
        s.push("proj_in", None);
        assert_eq!(
            s.param_name("bias"),
            "up_blocks.0.attentions.1.proj_in.bias"
        );
        let place = s.place();
        assert_eq!(place.direction, Some(Direction::Up));
        assert_eq!(place.level, Some(2));
        assert_eq!(place.kind, Some(BlockKind::Transformer));
        assert_eq!(place.label(), "up level 2 · transformer");
        assert_eq!(s.pop().as_deref(), Some("proj_in"));
        s.pop();
        assert_eq!(s.place().kind, None);
        assert_eq!(s.place().label(), "up level 2");
        s.pop();
        assert_eq!(s.depth(), 0);
        assert_eq!(s.path(), "");
    }
}
