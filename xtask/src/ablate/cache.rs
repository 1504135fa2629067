//! Measurements cached by config hash and measurement conditions, one JSON file each, written
//! atomically: an interrupted run keeps everything it finished, and a re-run measures only what is
//! new or changed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use unetlab_bench::BenchResult;
use unetlab_report::{atomic_write, ReportError};

/// Everything a latency depends on besides the network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchConditions {
    pub latent_size: usize,
    pub batch: usize,
    pub tokens: usize,
    pub dtype: String,
    pub device: String,
    pub threads: usize,
    pub warmup: usize,
    pub runs: usize,
    pub max_seconds: f64,
    pub per_block: bool,
    pub cpu_model: String,
    pub unetlab_version: String,
}

/// The cache folder of one output directory.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creating) `<out>/cache`.
    pub fn open(out: &Path) -> Result<Cache> {
        let dir = out.join("cache");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Cache { dir })
    }

    fn path(&self, hash: &str, conditions: &BenchConditions) -> PathBuf {
        let key = serde_json::to_vec(conditions).expect("conditions serialise");
        let digest = &unetlab_files::sha256_hex(&key)[..16];
        self.dir
            .join(format!("bench-{}-{digest}.json", &hash[..16]))
    }

    /// A cached result, if present and readable (an unreadable one is measured again).
    pub fn get(&self, hash: &str, conditions: &BenchConditions) -> Option<BenchResult> {
        let path = self.path(hash, conditions);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!(
                    "warning: ignoring unreadable cache file {}: {e}",
                    path.display()
                );
                None
            }
        }
    }

    /// Stores a result atomically.
    pub fn put(
        &self,
        hash: &str,
        conditions: &BenchConditions,
        result: &BenchResult,
    ) -> Result<()> {
        let path = self.path(hash, conditions);
        let json = serde_json::to_vec_pretty(result)?;
        atomic_write(&path, |out| {
            use std::io::Write;
            out.write_all(&json).map_err(|source| ReportError::Io {
                path: path.display().to_string(),
                source,
            })
        })?;
        Ok(())
    }
}
