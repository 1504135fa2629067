//! Reading configs: files and presets, `extends` chains, and the merge rule.
//!
//! Merge rule (child over parent, applied to the YAML trees before typing):
//! - mappings merge key by key, recursively;
//! - a mapping whose keys are all integers, given where the parent has a list, overrides those
//!   list entries by index (merging each recursively), e.g. `levels: {2: {channels: 1024}}`;
//! - anything else (scalars, lists, `null`) replaces the parent's value whole;
//! - `heads` and `head_dim` are one choice: a child mapping that sets either replaces both;
//! - `name` is never inherited: it is the child's own `name`, else its file stem or preset name;
//!   `paper` (the paper's claim for this config) is never inherited either.

use std::path::{Path, PathBuf};

use serde_norway::Value;

use crate::error::{FieldError, SpecError};
use crate::presets;
use crate::schema::ConfigFile;

/// Where a config's text comes from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Preset(&'static str),
}

impl Source {
    /// Resolves a reference: an existing file (relative to `base_dir` if given), else a preset name.
    fn find(reference: &str, base_dir: Option<&Path>) -> Result<Source, SpecError> {
        let path = match base_dir {
            Some(dir) => dir.join(reference),
            None => PathBuf::from(reference),
        };
        if path.is_file() {
            return Ok(Source::File(path));
        }
        presets::NAMES
            .iter()
            .find(|&&n| n == reference)
            .map(|&n| Source::Preset(n))
            .ok_or_else(|| SpecError::NotFound {
                reference: reference.to_string(),
            })
    }

    fn origin(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Preset(n) => format!("preset:{n}"),
        }
    }

    fn default_name(&self) -> String {
        match self {
            Source::File(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            Source::Preset(n) => n.to_string(),
        }
    }

    /// Identity for cycle detection.
    fn key(&self) -> String {
        match self {
            Source::File(p) => p
                .canonicalize()
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            Source::Preset(n) => format!("preset:{n}"),
        }
    }

    fn text(&self) -> Result<String, SpecError> {
        match self {
            Source::File(p) => std::fs::read_to_string(p).map_err(|source| SpecError::Read {
                path: p.clone(),
                source,
            }),
            Source::Preset(n) => Ok(presets::yaml(n)
                .expect("preset names come from NAMES")
                .into()),
        }
    }

    fn base_dir(&self) -> Option<PathBuf> {
        match self {
            Source::File(p) => Some(p.parent().unwrap_or(Path::new(".")).to_path_buf()),
            Source::Preset(_) => None,
        }
    }
}

/// A config's YAML tree after `extends` merging, not yet typed: what a search patches before
/// [`crate::Config::from_tree`] validates it.
#[derive(Debug, Clone)]
pub struct ConfigTree {
    /// Where it came from (file path or `preset:<name>`), for error messages.
    pub origin: String,
    /// The config's name.
    pub name: String,
    /// The merged tree (`name` and `paper` included, `extends` gone).
    pub value: Value,
}

impl ConfigTree {
    /// Loads `reference` (a file path or a preset name) and merges its `extends` chain.
    pub fn load(reference: &str) -> Result<ConfigTree, SpecError> {
        load_merged(reference)
    }

    /// Sets the field at a dotted `path` (`unet.levels.1.down.res_blocks`; integer segments index
    /// lists) to `value`, by the merge rule: a mapping value merges into what is there.
    pub fn set(&mut self, path: &str, value: Value) -> Result<(), FieldError> {
        let mut patch = value;
        for segment in path.rsplit('.') {
            if segment.is_empty() {
                return Err(FieldError::new(path, "empty segment in a field path"));
            }
            let key = match segment.parse::<u64>() {
                Ok(i) => Value::Number(i.into()),
                Err(_) => Value::String(segment.to_string()),
            };
            let mut map = serde_norway::Mapping::new();
            map.insert(key, patch);
            patch = Value::Mapping(map);
        }
        self.value = merge(std::mem::take(&mut self.value), patch, "")?;
        Ok(())
    }

    /// Checks field names and types only (no validation of values): a search's axis that names
    /// a field no config has fails here, while a value that is invalid only beside other choices
    /// fails later, in [`crate::Config::from_tree`].
    pub fn check_types(&self) -> Result<(), SpecError> {
        typed(self).map(drop)
    }
}

/// Loads `reference` (a file path or a preset name) and merges its `extends` chain.
fn load_merged(reference: &str) -> Result<ConfigTree, SpecError> {
    let source = Source::find(reference, None)?;
    merged_from(&source, &source.text()?, &mut Vec::new())
}

/// Merges YAML text whose relative `extends` resolve against `base_dir`.
pub(crate) fn merged_from_text(
    text: &str,
    origin: &str,
    base_dir: Option<&Path>,
) -> Result<ConfigTree, SpecError> {
    let source = Source::File(base_dir.unwrap_or(Path::new(".")).join(origin));
    let mut chain = Vec::new();
    let mut merged = merge_text(text, &source, origin, &mut chain)?;
    merged.origin = origin.to_string();
    Ok(merged)
}

fn merged_from(
    source: &Source,
    text: &str,
    chain: &mut Vec<String>,
) -> Result<ConfigTree, SpecError> {
    merge_text(text, source, &source.origin(), chain)
}

fn merge_text(
    text: &str,
    source: &Source,
    origin: &str,
    chain: &mut Vec<String>,
) -> Result<ConfigTree, SpecError> {
    let key = source.key();
    if chain.contains(&key) {
        let mut cycle = chain.clone();
        cycle.push(key);
        return Err(SpecError::ExtendsCycle {
            origin: origin.to_string(),
            chain: cycle,
        });
    }
    let invalid = |path: &str, message: String| SpecError::Invalid {
        origin: origin.to_string(),
        errors: vec![FieldError::new(path, message)],
    };
    let mut value: Value =
        serde_norway::from_str(text).map_err(|e| invalid("", format!("invalid YAML: {e}")))?;
    let map = value
        .as_mapping_mut()
        .ok_or_else(|| invalid("", "a config must be a YAML mapping".into()))?;
    let name = match map.remove("name") {
        None => source.default_name(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(invalid("name", "must be a string".into())),
    };
    let paper = map.remove("paper");
    let parent = match map.remove("extends") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r),
        Some(_) => {
            return Err(invalid(
                "extends",
                "must be a preset name or a file path".into(),
            ))
        }
    };
    if let Some(parent) = parent {
        let parent_source = Source::find(&parent, source.base_dir().as_deref())
            .map_err(|e| invalid("extends", e.to_string()))?;
        chain.push(key);
        let base = merged_from(&parent_source, &parent_source.text()?, chain)?;
        chain.pop();
        value = merge(base.value, value, "").map_err(|e| SpecError::Invalid {
            origin: origin.to_string(),
            errors: vec![e],
        })?;
    }
    if let Some(map) = value.as_mapping_mut() {
        map.insert("name".into(), Value::String(name.clone()));
        map.remove("paper");
        if let Some(paper) = paper {
            map.insert("paper".into(), paper);
        }
    }
    Ok(ConfigTree {
        origin: origin.to_string(),
        name,
        value,
    })
}

/// Keys that state one choice two ways; a child setting one of them replaces both.
const EXCLUSIVE_PAIR: &[&str] = &["heads", "head_dim"];

/// Merges `over` into `base` by the rule in the module docs.
pub fn merge(base: Value, over: Value, path: &str) -> Result<Value, FieldError> {
    match (base, over) {
        (Value::Mapping(mut base), Value::Mapping(over)) => {
            if EXCLUSIVE_PAIR.iter().any(|k| over.contains_key(*k)) {
                for k in EXCLUSIVE_PAIR {
                    base.remove(*k);
                }
            }
            for (k, v) in over {
                let child_path = join(path, &k);
                let merged = match base.remove(&k) {
                    Some(b) => merge(b, v, &child_path)?,
                    None => v,
                };
                base.insert(k, merged);
            }
            Ok(Value::Mapping(base))
        }
        (Value::Sequence(mut base), Value::Mapping(over)) => {
            for (k, v) in over {
                let index = k.as_u64().map(|i| i as usize).ok_or_else(|| {
                    FieldError::new(
                        path,
                        "overrides a list with a mapping: only integer keys (list indices) may do that",
                    )
                })?;
                let len = base.len();
                let slot = base.get_mut(index).ok_or_else(|| {
                    FieldError::new(
                        format!("{path}[{index}]"),
                        format!("index out of range: the inherited list has {len} entries"),
                    )
                })?;
                let old = std::mem::take(slot);
                *slot = merge(old, v, &format!("{path}[{index}]"))?;
            }
            Ok(Value::Sequence(base))
        }
        (_, over) => Ok(over),
    }
}

fn join(path: &str, key: &Value) -> String {
    let key = match key {
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// Types a merged tree, reporting the path of any unknown field or wrong type.
pub(crate) fn typed(merged: &ConfigTree) -> Result<ConfigFile, SpecError> {
    serde_path_to_error::deserialize(merged.value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        SpecError::Invalid {
            origin: merged.origin.clone(),
            errors: vec![FieldError::new(path, e.into_inner().to_string())],
        }
    })
}
