//! The unetlab design space.
//!
//! One YAML file describes one UNet ([`schema`]); presets live under `configs/` ([`presets`]);
//! `extends` chains are merged by the rule documented in `load.rs`; [`resolve`] validates the result
//! into a [`UnetSpec`] with every default explicit. Every error names its field path.

pub mod diffusers;
pub mod error;
pub mod explicit;
mod load;
pub mod paper;
pub mod presets;
pub mod resolve;
pub mod schema;

use std::path::Path;

pub use error::{FieldError, SpecError};
pub use load::{merge, ConfigTree};
pub use resolve::{
    check_latent_size, LevelSpec, MidSpec, NormSpec, StageSpec, TextTimeSpec, TimeEmbeddingSpec,
    TransformerSpec, UnetSpec,
};
pub use schema::{
    AttentionKernel, ClaimDirection, ClaimMetric, ConvKind, FeedForwardActivation, FineTune,
    PaperNote, Projection, SDXL_TIME_IDS,
};

/// A loaded, validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Display name.
    pub name: String,
    /// Description, if the file gives one.
    pub description: Option<String>,
    /// Where it came from: a file path or `preset:<name>`.
    pub origin: String,
    /// The paper's step and claim for this config, if it declares them.
    pub paper: Option<PaperNote>,
    /// The resolved network.
    pub spec: UnetSpec,
}

impl Config {
    /// Loads a preset name or a YAML file path, following `extends`.
    pub fn load(reference: &str) -> Result<Config, SpecError> {
        Self::build(ConfigTree::load(reference)?)
    }

    /// Parses YAML text; relative `extends` paths resolve against `base_dir` (default: the
    /// working directory). `origin` names the text in errors.
    pub fn from_yaml(
        text: &str,
        origin: &str,
        base_dir: Option<&Path>,
    ) -> Result<Config, SpecError> {
        Self::build(load::merged_from_text(text, origin, base_dir)?)
    }

    /// Imports a diffusers `UNet2DConditionModel` config file (see [`diffusers`]). Returns the
    /// config and the unetlab YAML it was read from.
    pub fn from_diffusers_file(path: &Path) -> Result<(Config, String), SpecError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |errors| SpecError::Invalid {
            origin: origin.clone(),
            errors,
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| invalid(vec![FieldError::new("", format!("invalid JSON: {e}"))]))?;
        let name = match path.file_name().and_then(|f| f.to_str()) {
            Some("config.json") => path.parent().and_then(|p| p.file_name()),
            _ => path.file_stem(),
        }
        .map_or_else(
            || "diffusers".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let yaml = diffusers::yaml_from_diffusers(&json, &name).map_err(invalid)?;
        let config = Self::from_yaml(&yaml, &origin, None)?;
        Ok((config, yaml))
    }

    /// Types and validates a merged tree (e.g. one a search has patched with [`ConfigTree::set`]).
    pub fn from_tree(tree: ConfigTree) -> Result<Config, SpecError> {
        Self::build(tree)
    }

    fn build(merged: ConfigTree) -> Result<Config, SpecError> {
        let file = load::typed(&merged)?;
        let spec = resolve::resolve(&file).map_err(|errors| SpecError::Invalid {
            origin: merged.origin.clone(),
            errors,
        })?;
        Ok(Config {
            name: merged.name,
            description: file.description,
            origin: merged.origin,
            paper: file.paper,
            spec,
        })
    }

    /// Stable content hash of the resolved network (SHA-256 of its canonical JSON, hex).
    /// Independent of name, description, comments, key order and how `extends` was used.
    pub fn hash(&self) -> String {
        spec_hash(&self.spec)
    }
}

/// SHA-256 (hex) of a spec's canonical JSON form.
pub fn spec_hash(spec: &UnetSpec) -> String {
    let json = serde_json::to_vec(spec).expect("a spec always serialises");
    unetlab_files::sha256_hex(&json)
}
