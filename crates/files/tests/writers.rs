//! Every file the workspace writes goes through the atomic writer (`write_via_temp`,
//! `write_file`, or the report crate's `atomic_write` built on them), except the writers listed
//! here with the reason they may write directly. A raw write anywhere else fails this test, and so
//! does a listed writer that no longer exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Calls that create or fill a file directly.
const RAW_WRITES: [&str; 5] = [
    "fs::write(",
    "File::create(",
    "fs::copy(",
    "OpenOptions::new()",
    "serialize_to_file(",
];

/// (file, call, how many, why it may write directly).
const ALLOWED: [(&str, &str, usize, &str); 8] = [
    (
        "crates/export/src/bundle.rs",
        "fs::copy(",
        2,
        "the tokenizer (and, without symlinks, the ONNX weights) copied into the bundle's \
         staging directory, which is renamed into place whole",
    ),
    (
        "crates/export/src/bundle.rs",
        "File::create(",
        1,
        "external ONNX data inside the staging directory",
    ),
    (
        "crates/export/src/bundle.rs",
        "fs::write(",
        1,
        "bundle files inside the staging directory",
    ),
    (
        "crates/train/src/trainer.rs",
        "OpenOptions::new()",
        1,
        "append-only training logs, rows keyed by step and cut back to the checkpoint on resume",
    ),
    (
        "xtask/src/recipe.rs",
        "File::create(",
        1,
        "a training subprocess's live output log",
    ),
    (
        "xtask/src/training.rs",
        "File::create(",
        1,
        "a training subprocess's live output log",
    ),
    (
        "xtask/src/cache.rs",
        "OpenOptions::new()",
        1,
        "the cache folder's empty `.lock`, opened only to hold an advisory lock, never written",
    ),
    (
        "xtask/src/fuzz/case.rs",
        "fs::write(",
        1,
        "a fuzz case's scratch inputs, rewritten for every case and read only by that case",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Raw writes per (file, call) in library and binary code (a file's `#[cfg(test)]` module and
/// everything after it are tests), except writes to the atomic writer's temporary path `tmp`
/// (an argument of that name on the call's line).
fn raw_writes() -> BTreeMap<(String, &'static str), usize> {
    let root = workspace();
    let mut files = Vec::new();
    for crate_dir in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = crate_dir.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    rust_files(&root.join("xtask/src"), &mut files);
    let mut found = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        for line in text.lines().take_while(|l| l.trim() != "#[cfg(test)]") {
            for call in RAW_WRITES {
                let Some(at) = line.find(call) else { continue };
                let arguments = &line[at + call.len()..];
                let mut words = arguments.split(|c: char| !(c.is_alphanumeric() || c == '_'));
                if words.any(|w| w == "tmp") {
                    continue;
                }
                *found.entry((name.clone(), call)).or_insert(0) += 1;
            }
        }
    }
    found
}

#[test]
fn every_writer_is_atomic_or_listed_with_its_reason() {
    let found = raw_writes();
    let allowed: BTreeMap<(String, &str), usize> = ALLOWED
        .iter()
        .map(|(file, call, n, _)| ((file.to_string(), *call), *n))
        .collect();
    let unlisted: Vec<_> = found
        .iter()
        .filter(|(key, n)| allowed.get(*key) != Some(n))
        .collect();
    assert!(
        unlisted.is_empty(),
        "raw file writes outside the atomic writer (write through unetlab_files::write_file or \
         write_via_temp, or list them in ALLOWED with a reason): {unlisted:?}"
    );
    let stale: Vec<_> = allowed.keys().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        stale.is_empty(),
        "ALLOWED lists writers that are gone: {stale:?}"
    );
}

#[test]
fn the_scan_finds_the_known_raw_writes() {
    // Guards the scanner: were it to find nothing, the test above would pass vacuously.
    let found = raw_writes();
    for (file, call, n, _) in ALLOWED {
        assert_eq!(
            found.get(&(file.to_string(), call)),
            Some(&n),
            "{file} {call}"
        );
    }
}
