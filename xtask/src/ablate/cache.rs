//! Measurements cached by config hash and measurement conditions, one JSON file each, written
//! atomically: an interrupted run keeps everything it finished, and a re-run measures only what is
//! new or changed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};
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

    fn path(&self, kind: &str, hash: &str, key: &[u8]) -> PathBuf {
        let digest = &unetlab_files::sha256_hex(key)[..16];
        self.dir
            .join(format!("{kind}-{}-{digest}.json", &hash[..16]))
    }

    /// A cached bench result, if present and readable (an unreadable one is measured again).
    pub fn get(&self, hash: &str, conditions: &BenchConditions) -> Option<BenchResult> {
        self.get_json("bench", hash, &key(conditions))
    }

    /// Stores a bench result atomically.
    pub fn put(
        &self,
        hash: &str,
        conditions: &BenchConditions,
        result: &BenchResult,
    ) -> Result<()> {
        self.put_json("bench", hash, &key(conditions), result)
    }

    /// A cached `kind` result for a config hash and key, if present and readable.
    pub fn get_json<T: DeserializeOwned>(&self, kind: &str, hash: &str, key: &[u8]) -> Option<T> {
        let path = self.path(kind, hash, key);
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

    /// Stores a `kind` result atomically.
    pub fn put_json<T: Serialize>(
        &self,
        kind: &str,
        hash: &str,
        key: &[u8],
        value: &T,
    ) -> Result<()> {
        let path = self.path(kind, hash, key);
        let json = serde_json::to_vec_pretty(value)?;
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

fn key(conditions: &BenchConditions) -> Vec<u8> {
    serde_json::to_vec(conditions).expect("conditions serialise")
}
