//! What `ablate` measures: config files, or study files (`ablations/*.yaml`) that group them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// A study file: named tables of configs, in the paper's order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Study {
    /// Study name (the default output folder name).
    pub study: String,
    /// What the study shows.
    pub description: Option<String>,
    /// The study's tables.
    pub tables: Vec<StudyTable>,
}

/// One table of a study.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyTable {
    /// Table title (e.g. the paper's section).
    pub title: String,
    /// Configs, as paths relative to the study file or preset names.
    pub configs: Vec<String>,
}

/// The inputs of one `ablate` run.
#[derive(Debug, Default)]
pub struct Plan {
    /// Config references (paths or preset names) in first-mentioned order, without repeats.
    pub configs: Vec<String>,
    /// Study tables as (title, config references).
    pub tables: Vec<(String, Vec<String>)>,
    /// The study's name and description, if exactly one study file was given.
    pub study: Option<(String, Option<String>)>,
}

impl Plan {
    fn add(&mut self, reference: String) {
        if !self.configs.contains(&reference) {
            self.configs.push(reference);
        }
    }
}

/// Reads the command's files: study files expand to their configs, anything else is a config.
pub fn plan(files: &[String]) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut studies = Vec::new();
    for file in files {
        let path = Path::new(file);
        let study = if path.is_file() {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {file}"))?;
            let value: serde_norway::Value =
                serde_norway::from_str(&text).with_context(|| format!("{file}: invalid YAML"))?;
            match value.get("study") {
                Some(_) => Some(
                    serde_norway::from_value::<Study>(value)
                        .with_context(|| format!("{file}: invalid study file"))?,
                ),
                None => None,
            }
        } else {
            None
        };
        match study {
            Some(study) => {
                let base = path.parent().unwrap_or(Path::new("."));
                for table in &study.tables {
                    let refs: Vec<String> =
                        table.configs.iter().map(|c| resolve(base, c)).collect();
                    refs.iter().for_each(|r| plan.add(r.clone()));
                    plan.tables.push((table.title.clone(), refs));
                }
                studies.push((study.study, study.description));
            }
            None => plan.add(file.clone()),
        }
    }
    if plan.configs.is_empty() {
        bail!("no configs given");
    }
    if studies.len() == 1 {
        plan.study = studies.pop();
    }
    Ok(plan)
}

/// A study's config entry: a path relative to the study file if that file exists, else as written
/// (a preset name).
fn resolve(base: &Path, reference: &str) -> String {
    let path: PathBuf = base.join(reference);
    if path.is_file() {
        path.to_string_lossy().into_owned()
    } else {
        reference.to_string()
    }
}
