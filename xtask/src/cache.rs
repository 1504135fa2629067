//! Measurements cached by config hash and measurement conditions (by `ablate` and `search`), one
//! JSON file each, written atomically: an interrupted run keeps everything it finished, and a
//! re-run measures only what is new or changed. The conditions include the identity of the source
//! code that measures (`unetlab_provenance::Code`), so a build with other kernels or another
//! trainer never reuses an older build's numbers; a change to report-only code (tables, plots)
//! keeps them. A folder therefore keeps every build's entries until [`Cache::prune`] removes those
//! that a complete run did not use (`--prune` of `cargo xtask ablate` and `search`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use serde::{de::DeserializeOwned, Serialize};
use unetlab_bench::{bench, progress_bar, BenchOptions, BenchResult, DeviceArgs, Machine};
use unetlab_provenance::Code;
use unetlab_report::{atomic_write, ReportError};
use unetlab_spec::Config;

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
    /// [`Machine::cpu`]: the model and its SIMD extensions (one model name covers CPUs with and
    /// without AVX-512).
    pub cpu: String,
    /// [`unetlab_provenance::Code::Latency`]'s identity: a change to the sources that run the forward re-measures.
    pub code: String,
}

impl BenchConditions {
    /// The conditions of timing `config` by `timing` on `run_on` on this `machine`, with this
    /// build's latency code.
    pub fn new(
        config: &Config,
        timing: &Timing,
        run_on: &DeviceArgs,
        machine: &Machine,
    ) -> BenchConditions {
        BenchConditions {
            latent_size: timing.latent_size,
            batch: 1,
            tokens: config.spec.text_tokens,
            dtype: run_on.dtype.clone(),
            device: run_on.device.clone(),
            threads: machine.threads,
            warmup: timing.warmup,
            runs: timing.runs,
            max_seconds: timing.max_seconds,
            per_block: timing.per_block,
            cpu: machine.cpu(),
            code: Code::Latency.identity().into(),
        }
    }
}

/// A cache folder: `<out>/cache`, or one the shards of a sweep share. It remembers which of its
/// files this process read or wrote, for [`Cache::prune`], and holds a shared lock on the folder's
/// `.lock` while open, so that a prune, which needs it alone, cannot remove what another process
/// is using.
pub struct Cache {
    dir: PathBuf,
    used: Mutex<BTreeSet<PathBuf>>,
    /// `.lock`, locked shared; `None` where the file system has no locks.
    lock: Option<std::fs::File>,
}

impl Cache {
    /// Opens (creating) `<out>/cache`.
    pub fn open(out: &Path) -> Result<Cache> {
        Self::at(&out.join("cache"))
    }

    /// Opens (creating) the cache folder `dir` (shared by the shards of a sweep).
    pub fn at(dir: &Path) -> Result<Cache> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock_path = dir.join(".lock");
        // Opened, never written: it exists only to carry the lock.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = match file.lock_shared() {
            Ok(()) => Some(file),
            Err(e) => {
                eprintln!(
                    "warning: {}: {e}; --prune cannot tell whether another process uses the cache",
                    lock_path.display()
                );
                None
            }
        };
        Ok(Cache {
            dir: dir.to_path_buf(),
            used: Mutex::default(),
            lock,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, kind: &str, hash: &str, key: &[u8]) -> PathBuf {
        let digest = &unetlab_files::sha256_hex(key)[..16];
        self.used_file(format!("{kind}-{}-{digest}.json", &hash[..16]))
    }

    /// The path of the file `name` in the folder, remembered as used.
    fn used_file(&self, name: impl AsRef<Path>) -> PathBuf {
        let path = self.dir.join(name);
        self.used.lock().expect("cache use").insert(path.clone());
        path
    }

    /// Removes every entry (`*.json`) of the folder that this process neither read nor wrote:
    /// after a complete run, the entries of earlier builds, seeds or configs that its outputs no
    /// longer show; and the `*.partial` files a killed process left mid-write. Returns the names
    /// removed, sorted.
    ///
    /// Refused while another process has the folder open: what it reads or writes is not in
    /// this process's list.
    pub fn prune(&self) -> Result<Vec<String>> {
        if let Some(lock) = &self.lock {
            // Turns this process's shared lock into an exclusive one, if no other holds one.
            lock.try_lock().map_err(|e| match e {
                std::fs::TryLockError::WouldBlock => anyhow::anyhow!(
                    "another process is using the cache {}; prune when it has finished",
                    self.dir.display()
                ),
                std::fs::TryLockError::Error(e) => anyhow::Error::new(e)
                    .context(format!("locking {}", self.dir.join(".lock").display())),
            })?;
        }
        let pruned = self.remove_unused();
        if let Some(lock) = &self.lock {
            lock.lock_shared()
                .with_context(|| format!("locking {}", self.dir.join(".lock").display()))?;
        }
        pruned
    }

    /// The removal of [`Cache::prune`], under the exclusive lock.
    fn remove_unused(&self) -> Result<Vec<String>> {
        let used = self.used.lock().expect("cache use");
        let mut removed = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let stale = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => !used.contains(&path),
                Some("partial") => true,
                _ => false,
            };
            if stale {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                removed.extend(path.file_name().map(|n| n.to_string_lossy().into_owned()));
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// `--prune` after a complete run: [`Cache::prune`], then one line on stderr saying how
    /// many entries went.
    pub fn prune_and_report(&self) -> Result<()> {
        let removed = self.prune()?;
        eprintln!(
            "--prune: removed {} unused cache entr{} from {}",
            removed.len(),
            if removed.len() == 1 { "y" } else { "ies" },
            self.dir.display()
        );
        Ok(())
    }

    /// A cached bench result, if present and readable (an unreadable one is measured again).
    /// A result found without its machine-free pointer (a process killed between the two
    /// writes of [`Self::put`]) gets the pointer now, so `--merge` finds it too.
    pub fn get(&self, hash: &str, conditions: &BenchConditions) -> Option<BenchResult> {
        let result = self.get_json("bench", hash, &key(conditions))?;
        if self.get_any_machine(hash, conditions).is_none() {
            if let Err(e) = self.point(hash, conditions) {
                eprintln!("warning: {e:#}");
            }
        }
        Some(result)
    }

    /// Points the machine-free key of `conditions` at the result stored under them.
    fn point(&self, hash: &str, conditions: &BenchConditions) -> Result<()> {
        let name = self.path("bench", hash, &key(conditions));
        let name = name.file_name().expect("a file").to_string_lossy();
        self.put_json("bench-on", hash, &machine_free_key(conditions), &name)
    }

    /// Stores a bench result atomically, and points the machine-free key of its conditions at
    /// it (what `--merge` on another node reads).
    pub fn put(
        &self,
        hash: &str,
        conditions: &BenchConditions,
        result: &BenchResult,
    ) -> Result<()> {
        self.put_json("bench", hash, &key(conditions), result)?;
        self.point(hash, conditions)
    }

    /// A cached bench result measured under `conditions` on any machine: the latest one stored
    /// for them (its own `machine` says where). Shards on other nodes are found this way.
    pub fn get_any_machine(&self, hash: &str, conditions: &BenchConditions) -> Option<BenchResult> {
        let name: String = self.get_json("bench-on", hash, &machine_free_key(conditions))?;
        let path = self.used_file(name);
        let text = std::fs::read_to_string(&path).ok()?;
        serde_json::from_str(&text).ok()
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

/// How one config is timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Latent height = width.
    pub latent_size: usize,
    /// Untimed forwards first.
    pub warmup: usize,
    /// Timed forwards.
    pub runs: usize,
    /// Stop after this many seconds once 3 runs are done.
    pub max_seconds: f64,
    /// Also time every block.
    pub per_block: bool,
}

/// Times `config` (batch 1, its own token count) on the device, or takes the result from the
/// cache when the same code measured it under the same conditions; returns it and whether it was
/// cached. A failed measurement is the error's text (the caller's row records it).
pub fn cached_bench(
    config: &Config,
    timing: &Timing,
    (run_on, device, dtype): (&DeviceArgs, &Device, DType),
    (cache, force): (&Cache, bool),
    machine: &Machine,
    label: &str,
) -> Result<(BenchResult, bool), String> {
    let tokens = config.spec.text_tokens;
    let conditions = BenchConditions::new(config, timing, run_on, machine);
    let hash = config.hash();
    if let Some(cached) = cache.get(&hash, &conditions).filter(|_| !force) {
        eprintln!(
            "{label}: cached (measured by {} at {})",
            cached.provenance.build.label(),
            cached.provenance.measured_utc
        );
        return Ok((cached, true));
    }
    let opts = BenchOptions {
        batch: 1,
        latent_size: timing.latent_size,
        tokens,
        warmup: timing.warmup,
        runs: timing.runs,
        max_seconds: timing.max_seconds,
        per_block: timing.per_block,
        profile: false,
        dtype,
        device: device.clone(),
        device_name: run_on.device.clone(),
        seed: 0,
    };
    let (bar, mut update) = progress_bar(label);
    let result = bench(config, &opts, &mut update);
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            cache
                .put(&hash, &conditions, &r)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "{label}: median {:.3} s ({:.1} GFLOP/s)",
                r.median_s, r.achieved_gflops_per_s
            );
            Ok((r, false))
        }
        Err(e) => {
            eprintln!("{label}: FAILED: {e}");
            Err(e.to_string())
        }
    }
}

/// The conditions without the machine (CPU, threads).
fn machine_free_key(conditions: &BenchConditions) -> Vec<u8> {
    key(&BenchConditions {
        threads: 0,
        cpu: String::new(),
        ..conditions.clone()
    })
}

fn key(conditions: &BenchConditions) -> Vec<u8> {
    serde_json::to_vec(conditions).expect("conditions serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use unetlab_provenance::Provenance;

    fn conditions(code: &str) -> BenchConditions {
        BenchConditions {
            latent_size: 8,
            batch: 1,
            tokens: 77,
            dtype: "f32".into(),
            device: "cpu".into(),
            threads: 2,
            warmup: 0,
            runs: 3,
            max_seconds: 5.0,
            per_block: true,
            cpu: "test cpu".into(),
            code: code.into(),
        }
    }

    fn result() -> BenchResult {
        BenchResult {
            config: "tiny".into(),
            hash: "ab".repeat(32),
            batch: 1,
            latent_size: 8,
            tokens: 77,
            dtype: "f32".into(),
            device: "cpu".into(),
            warmup: 0,
            times_s: vec![0.5, 0.25, 0.75],
            median_s: 0.5,
            p10_s: 0.3,
            p90_s: 0.7,
            flops: 1_000_000,
            achieved_gflops_per_s: 0.002,
            peak_rss_bytes: None,
            per_block: Vec::new(),
            profile: Vec::new(),
            gemm_peak_gflops_per_s: None,
            machine: Machine::current(),
            provenance: Provenance::now(Code::Latency),
        }
    }

    #[test]
    fn a_cached_latency_is_reused_by_the_same_code_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let hash = "ab".repeat(32);
        let ours = conditions(Code::Latency.identity());
        assert!(cache.get(&hash, &ours).is_none());
        cache.put(&hash, &ours, &result()).unwrap();
        let back = cache.get(&hash, &ours).expect("same build: reused");
        assert_eq!(back, result_with(&back));
        assert_eq!(back.provenance.code, Code::Latency.identity());

        // Another build whose forward's sources differ (new kernels) measures again ...
        let edited = conditions(&"0".repeat(64));
        assert!(cache.get(&hash, &edited).is_none());
        // ... and so does one of another config.
        assert!(cache.get(&"cd".repeat(32), &ours).is_none());
    }

    #[test]
    fn one_cpu_model_with_other_simd_extensions_is_another_machine() {
        let config = Config::load("mobilediffusion").unwrap();
        let timing = Timing {
            latent_size: 8,
            warmup: 0,
            runs: 3,
            max_seconds: 5.0,
            per_block: false,
        };
        let run_on = DeviceArgs {
            device: "cpu".into(),
            dtype: "f32".into(),
            threads: None,
        };
        let avx2 = Machine {
            cpu_model: "AMD EPYC".into(),
            simd: vec!["avx2".into(), "fma".into()],
            ..Machine::current()
        };
        let avx512 = Machine {
            simd: vec!["avx2".into(), "fma".into(), "avx512f".into()],
            ..avx2.clone()
        };
        let (here, there) = (
            BenchConditions::new(&config, &timing, &run_on, &avx2),
            BenchConditions::new(&config, &timing, &run_on, &avx512),
        );
        assert_ne!(key(&here), key(&there));
        assert_eq!(machine_free_key(&here), machine_free_key(&there));
    }

    #[test]
    fn a_result_whose_pointer_was_never_written_gets_it_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let hash = "ab".repeat(32);
        let ours = conditions(Code::Latency.identity());
        // What a process killed between the two writes of `put` leaves: the result alone.
        cache
            .put_json("bench", &hash, &key(&ours), &result())
            .unwrap();
        assert!(cache.get_any_machine(&hash, &ours).is_none());
        assert!(cache.get(&hash, &ours).is_some());
        let found = cache.get_any_machine(&hash, &ours).expect("pointed at");
        assert_eq!(found, result_with(&found));
        // Another machine's merge reads it by the machine-free key.
        let elsewhere = BenchConditions {
            cpu: "another cpu".into(),
            threads: 64,
            ..ours.clone()
        };
        assert!(cache.get(&hash, &elsewhere).is_none());
        assert!(cache.get_any_machine(&hash, &elsewhere).is_some());
    }

    #[test]
    fn prune_keeps_what_this_process_used_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "ab".repeat(32);
        let ours = conditions(Code::Latency.identity());
        let earlier = conditions(&"0".repeat(64));
        {
            // An earlier process stored two builds' latencies and a run.
            let cache = Cache::open(dir.path()).unwrap();
            cache.put(&hash, &earlier, &result()).unwrap();
            cache.put(&hash, &ours, &result()).unwrap();
            cache.put_json("train", &hash, b"seed 0", &1.5).unwrap();
        }
        std::fs::write(dir.path().join("cache").join("notes.txt"), "kept").unwrap();
        // A process killed mid-write leaves its temporary file.
        let partial = unetlab_files::temp_path(&dir.path().join("cache").join("train-x.json"));
        std::fs::write(&partial, "{").unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        assert!(cache.get(&hash, &ours).is_some());
        assert!(cache.get_any_machine(&hash, &ours).is_some());
        let removed = cache.prune().unwrap();
        // The earlier build's result and its machine-free pointer go, the run nobody read, and
        // the temporary file.
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(removed
            .iter()
            .all(|n| n.starts_with("bench-") || n.starts_with("train-")));
        assert!(!partial.exists());
        assert!(cache.get(&hash, &ours).is_some(), "what was used stays");
        assert!(cache.get(&hash, &earlier).is_none());
        assert!(cache.get_json::<f64>("train", &hash, b"seed 0").is_none());
        assert!(dir.path().join("cache").join("notes.txt").exists());
        assert!(dir.path().join("cache").join(".lock").exists());
        assert_eq!(cache.prune().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn prune_is_refused_while_another_process_has_the_cache_open() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "ab".repeat(32);
        // Another process (another open of the lock file) is training into the cache.
        let other = Cache::open(dir.path()).unwrap();
        other.put_json("train", &hash, b"seed 0", &1.5).unwrap();
        let ours = Cache::open(dir.path()).unwrap();
        let refused = ours.prune().unwrap_err().to_string();
        assert!(
            refused.contains("another process is using the cache"),
            "{refused}"
        );
        assert!(other.get_json::<f64>("train", &hash, b"seed 0").is_some());
        // Once it has finished, the prune removes what this process did not use.
        drop(other);
        assert_eq!(ours.prune().unwrap().len(), 1);
        // And the pruning process holds its shared lock again: a newcomer cannot prune.
        let newcomer = Cache::open(dir.path()).unwrap();
        assert!(newcomer.prune().is_err());
    }

    /// `result()` with the provenance of `r` (the time differs between two calls).
    fn result_with(r: &BenchResult) -> BenchResult {
        BenchResult {
            provenance: r.provenance.clone(),
            ..result()
        }
    }
}
