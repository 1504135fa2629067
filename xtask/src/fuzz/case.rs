//! A case on disk: the files one input consists of, written into a directory the reader reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One input: file contents by path relative to the case directory (`diffusers/config.json`).
pub type Files = BTreeMap<String, Vec<u8>>;

/// The directory cases are written into. Only files that changed since the last case are
/// rewritten, and files the new case lacks are removed, so large unchanged files cost nothing.
pub struct CaseDir {
    dir: PathBuf,
    written: Files,
}

impl CaseDir {
    /// An empty case directory at `dir` (anything there before is removed).
    pub fn new(dir: &Path) -> Result<CaseDir> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(CaseDir {
            dir: dir.to_path_buf(),
            written: Files::new(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the directory hold exactly `files`.
    pub fn write(&mut self, files: Files) -> Result<()> {
        for name in self.written.keys() {
            if !files.contains_key(name) {
                let path = self.dir.join(name);
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        for (name, bytes) in &files {
            if self.written.get(name) != Some(bytes) {
                let path = self.dir.join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        self.written = files;
        Ok(())
    }
}

/// Reads every file under `dir` (recursively) into [`Files`].
pub fn read_files(dir: &Path) -> Result<Files> {
    let mut files = Files::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                files.insert(name, bytes);
            }
        }
    }
    Ok(files)
}

/// Copies the case in `from` to `to` (a new directory).
pub fn save(from: &Path, to: &Path) -> Result<()> {
    let files = read_files(from)?;
    CaseDir::new(to)?.write(files)
}
