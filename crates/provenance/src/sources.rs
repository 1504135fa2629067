//! The identity of a piece of unetlab's source: a SHA-256 over the files that make it.
//!
//! Shared by the build script (which compiles the identities in) and the library's tests (which
//! recompute them from the tree and check they match), so both hash exactly the same files.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Everything a unetlab build and its measurements are made from: a build is `dirty` when any of
/// these differs from the commit (untracked files that git does not ignore included).
pub const BUILD_INPUTS: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    ".cargo",
    "crates",
    "xtask",
    "scripts",
];

/// Workspace files every identity covers: dependency versions, profiles and compiler flags.
pub const WORKSPACE_FILES: &[&str] = &["Cargo.toml", "Cargo.lock", ".cargo/config.toml"];

/// The files of crate `name` that can change what it computes: `Cargo.toml`, `build.rs` and
/// everything under `src/` (not its tests or benches), as paths relative to `root`.
pub fn crate_files(root: &Path, name: &str) -> Vec<PathBuf> {
    let dir = Path::new("crates").join(name);
    let mut files: Vec<PathBuf> = ["Cargo.toml", "build.rs"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|f| root.join(f).is_file())
        .collect();
    walk(root, &dir.join("src"), &mut files);
    files
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let relative = dir.join(entry.file_name());
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(root, &relative, out),
            Ok(t) if t.is_file() => out.push(relative),
            _ => {}
        }
    }
}

/// SHA-256 (hex) of the workspace files, the named crates' files and `extra` (compiler, profile,
/// target features): each file as its '/'-separated relative path, its length and its bytes, in
/// path order. A missing workspace file counts as empty.
pub fn digest(root: &Path, crates: &[&str], extra: &str) -> String {
    let mut files: Vec<PathBuf> = WORKSPACE_FILES.iter().map(PathBuf::from).collect();
    for name in crates {
        files.extend(crate_files(root, name));
    }
    let mut named: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|f| {
            let name = f
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            (name, f)
        })
        .collect();
    named.sort();
    named.dedup();
    let mut hash = Sha256::new();
    for (name, path) in named {
        let bytes = std::fs::read(root.join(path)).unwrap_or_default();
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    hash.update(extra.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The crates whose source decides a latency: the config, the forward, the FLOP count (GFLOP/s),
/// the candle kernels and the timing protocol.
pub const LATENCY_CRATES: &[&str] = &["spec", "graph", "cost", "model", "bench"];

/// The crates whose source decides a training run and its scores: the config, the forward, the
/// kernels, the data, the trainer, the evaluator and the metrics.
pub const TRAINING_CRATES: &[&str] = &["spec", "graph", "cost", "model", "data", "train"];
