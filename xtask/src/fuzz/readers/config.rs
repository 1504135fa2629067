//! Config files: unetlab YAML (single files and `extends` chains) and diffusers `config.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use unetlab_cost::{count, Conditions};
use unetlab_spec::Config;

use super::{Failure, Outcome, Target};
use crate::fuzz::case::Files;
use crate::fuzz::mutate;

/// A case's `configs/<name>` files: the configs as they are (a reader that names them by path
/// finds them there).
pub fn config_files(configs: &[(String, String)]) -> Files {
    configs
        .iter()
        .map(|(name, text)| (format!("configs/{name}"), text.clone().into_bytes()))
        .collect()
}

/// The `.yaml` files of `dir` (name, text), sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            files.push((name, std::fs::read_to_string(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

/// What `extends` is set to by the chain mutation: cycles, missing files, odd paths, presets.
const EXTENDS: &[&str] = &[
    "config.yaml",
    "chain-01-uvit-middle.yaml",
    "chain-05-swish.yaml",
    "missing.yaml",
    "",
    ".",
    "/",
    "../config.yaml",
    "/proc/self/status",
    "sd15",
    "sdxl",
];

/// What every command does with a loaded config first: count it (`unetlab count`), walking the
/// network the config describes at its own latent size and token count.
fn counted(config: &Config) -> Outcome {
    let conditions = Conditions {
        batch: 1,
        latent_size: config.spec.latent_size,
        tokens: config.spec.text_tokens,
    };
    count(&config.spec, conditions)
        .map(|_| None)
        .map_err(|e| Failure::of(&e))
}

struct YamlConfigs {
    /// Every config of `configs/` and `configs/fixtures/`.
    seeds: Vec<(String, String)>,
    /// The ablation chain `chain-01..09`, each extending the one before.
    chain: Vec<(String, String)>,
}

/// Seeds: every file of `configs/` and `configs/fixtures/`.
pub fn build_yaml(_scratch: &Path) -> Result<Box<dyn Target>> {
    let root = crate::docs::workspace().join("configs");
    let mut seeds = yaml_files(&root)?;
    seeds.extend(yaml_files(&root.join("fixtures"))?);
    let chain = seeds
        .iter()
        .filter(|(name, _)| name.starts_with("chain-"))
        .cloned()
        .collect();
    Ok(Box::new(YamlConfigs { seeds, chain }))
}

impl Target for YamlConfigs {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let mut files = Files::new();
        if rng.random() {
            let (_, text) = self.seeds.choose(rng).expect("seeds");
            files.insert("config.yaml".into(), text.clone().into_bytes());
        } else {
            // chain-01 .. chain-0k, the last one as the entry config.yaml.
            let k = rng.random_range(1..=self.chain.len());
            for (i, (name, text)) in self.chain[..k].iter().enumerate() {
                let name = if i + 1 == k { "config.yaml" } else { name };
                files.insert(name.to_string(), text.clone().into_bytes());
            }
        }
        let names: Vec<String> = files.keys().cloned().collect();
        let name = names.choose(rng).expect("a file");
        let text = String::from_utf8_lossy(&files[name]).into_owned();
        let mutated = if rng.random_range(0..6) == 0 {
            let target = EXTENDS.choose(rng).expect("not empty");
            let mut kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("extends:"))
                .collect();
            let line = format!("extends: {target:?}");
            kept.insert(0, &line);
            kept.join("\n").into_bytes()
        } else {
            let donor = &self.seeds.choose(rng).expect("seeds").1;
            mutate::yaml_text(rng, &text, Some(donor.as_bytes()))
        };
        files.insert(name.clone(), mutated);
        files
    }

    fn read(&self, dir: &Path) -> Outcome {
        let entry = dir.join("config.yaml");
        let config = Config::load(&entry.to_string_lossy()).map_err(|e| Failure::of(&e))?;
        counted(&config)
    }
}

struct DiffusersConfigs {
    seeds: Vec<String>,
}

/// The diffusers configs of the shared reference data (`sd15`, `sd21`, `sdxl`, the fixtures).
fn diffusers_seed_paths() -> Result<Vec<PathBuf>> {
    let reference = crate::docs::workspace().join("../shared/reference");
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(reference.join("diffusers"))
        .context("the shared reference data (../shared/reference) is missing")?
    {
        paths.push(entry?.path());
    }
    for entry in std::fs::read_dir(reference.join("fixtures"))? {
        let config = entry?.path().join("config.json");
        if config.is_file() {
            paths.push(config);
        }
    }
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    Ok(paths)
}

/// Seeds: the diffusers `config.json` files of `../shared/reference`.
pub fn build_diffusers(_scratch: &Path) -> Result<Box<dyn Target>> {
    let seeds = diffusers_seed_paths()?
        .iter()
        .map(std::fs::read_to_string)
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Box::new(DiffusersConfigs { seeds }))
}

impl Target for DiffusersConfigs {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let seed = self.seeds.choose(rng).expect("seeds");
        let donor = self.seeds.choose(rng).expect("seeds");
        let text = mutate::json_text(rng, seed, Some(donor.as_bytes()));
        Files::from([("config.json".to_string(), text)])
    }

    fn read(&self, dir: &Path) -> Outcome {
        let (config, _) =
            Config::from_diffusers_file(&dir.join("config.json")).map_err(|e| Failure::of(&e))?;
        counted(&config)
    }
}
