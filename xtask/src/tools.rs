//! Shared process helpers: cargo, the target directory, the `unetlab` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The cargo that runs this xtask (`$CARGO`), else `cargo`.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `$CARGO_TARGET_DIR`, else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Builds the `unetlab` CLI (release) and returns its path.
pub fn build_unetlab(root: &Path) -> Result<PathBuf> {
    run_ok(cargo().current_dir(root).args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "unetlab",
    ]))
    .context("building unetlab")?;
    Ok(target_dir(root).join("release/unetlab"))
}

/// Runs `cmd`, failing unless it exits successfully.
pub fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}
