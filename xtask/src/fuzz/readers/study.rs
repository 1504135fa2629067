//! Study files (`ablations/*.yaml`): the tables of configs `cargo xtask ablate` measures.

use std::path::Path;

use anyhow::Result;
use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use unetlab_spec::{Config, SpecError};

use super::config::{config_files, yaml_files};
use super::{Failure, Outcome, Target};
use crate::ablate::study;
use crate::fuzz::case::Files;
use crate::fuzz::mutate;

struct Studies {
    /// The study file, its config paths pointing into `configs/` of the case.
    study: String,
    /// `configs/*.yaml`, written beside the study file.
    configs: Vec<(String, String)>,
}

/// Seeds: `ablations/mobilediffusion.yaml` with the configs it names.
pub fn build(_scratch: &Path) -> Result<Box<dyn Target>> {
    let root = crate::docs::workspace();
    let study = std::fs::read_to_string(root.join("ablations/mobilediffusion.yaml"))?
        .replace("../configs/", "configs/");
    let configs = yaml_files(&root.join("configs"))?;
    Ok(Box::new(Studies { study, configs }))
}

/// What a config reference is set to: presets, missing files, directories, odd paths.
const REFERENCES: &[&str] = &[
    "sd15",
    "missing.yaml",
    "configs",
    "",
    ".",
    "/",
    "study.yaml",
    "configs/../study.yaml",
];

impl Target for Studies {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let mut files = config_files(&self.configs);
        let study = match rng.random_range(0..8) {
            0 => {
                let (name, text) = self.configs.choose(rng).expect("configs");
                let mutated = mutate::yaml_text(rng, text, None);
                files.insert(format!("configs/{name}"), mutated);
                self.study.clone().into_bytes()
            }
            1 => {
                let from = &self.configs.choose(rng).expect("configs").0;
                let to = REFERENCES.choose(rng).expect("references");
                self.study
                    .replace(&format!("configs/{from}"), to)
                    .into_bytes()
            }
            _ => mutate::yaml_text(rng, &self.study, None),
        };
        files.insert("study.yaml".into(), study);
        files
    }

    fn read(&self, dir: &Path) -> Outcome {
        let file = dir.join("study.yaml").to_string_lossy().into_owned();
        let plan = study::plan(&[file]).map_err(|e| failure(&e))?;
        for reference in &plan.configs {
            Config::load(reference).map_err(|e| Failure::of(&e))?;
        }
        Ok(None)
    }
}

/// A study error's kind: the config error's variant if a config failed, else what the study
/// reader reported (`invalid YAML`, `invalid study file`, ...).
fn failure(error: &anyhow::Error) -> Failure {
    if let Some(spec) = error.root_cause().downcast_ref::<SpecError>() {
        return Failure::of(spec);
    }
    let outer = error.to_string();
    let kind = match outer.strip_prefix("reading ") {
        Some(_) => "cannot read".to_string(),
        None => outer.rsplit(": ").next().unwrap_or(&outer).to_string(),
    };
    Failure {
        kind: format!("study: {kind}"),
        message: format!("{error:#}"),
    }
}
