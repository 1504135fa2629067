//! Search files (`searches/*.yaml`): design spaces `cargo xtask search` walks.

use std::path::Path;

use anyhow::Result;
use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use unetlab_cost::Conditions;
use unetlab_search::{Outcome as Evaluation, SearchFile};

use super::config::{config_files, yaml_files};
use super::{Failure, Outcome, Target};
use crate::fuzz::case::Files;
use crate::fuzz::mutate;

struct Searches {
    /// `searches/*.yaml` (their `../configs/` references resolve in the case).
    searches: Vec<(String, String)>,
    /// `configs/*.yaml`, written beside them.
    configs: Vec<(String, String)>,
}

/// Seeds: the committed search files with the configs they name.
pub fn build(_scratch: &Path) -> Result<Box<dyn Target>> {
    let root = crate::docs::workspace();
    Ok(Box::new(Searches {
        searches: yaml_files(&root.join("searches"))?,
        configs: yaml_files(&root.join("configs"))?,
    }))
}

impl Target for Searches {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let mut files = config_files(&self.configs);
        let (_, search) = self.searches.choose(rng).expect("search files");
        let text = if rng.random_range(0..6) == 0 {
            // A valid search over a mutated base config.
            let (name, config) = self.configs.choose(rng).expect("configs");
            files.insert(
                format!("configs/{name}"),
                mutate::yaml_text(rng, config, None),
            );
            search.clone().into_bytes()
        } else {
            mutate::yaml_text(rng, search, None)
        };
        files.insert("searches/search.yaml".into(), text);
        files
    }

    /// Loads the file, then builds and counts the first and the last genome of its space.
    fn read(&self, dir: &Path) -> Outcome {
        let file =
            SearchFile::load(&dir.join("searches/search.yaml")).map_err(|e| Failure::of(&e))?;
        let conditions = Conditions {
            batch: 1,
            latent_size: file.latent_size,
            tokens: file.tokens,
        };
        let size = file.space.size();
        let mut remark = None;
        for index in [0, size.saturating_sub(1)] {
            let genome = file.space.genome_at(index);
            if let Evaluation::Skipped(reason) =
                file.space.evaluate(&genome, conditions, &file.constraints)
            {
                remark = Some(format!("genome {index} skipped: {reason}"));
            }
        }
        Ok(remark)
    }
}
