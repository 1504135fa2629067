//! Shared process helpers: cargo, the target directory, the `unetlab` binary, pinned Python
//! virtual environments.

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

/// The Python of `<target>/<name>`, a virtual environment with the pinned `requirements` (a path
/// under `root`) installed; re-created when the requirements change.
pub fn python_venv(root: &Path, target: &Path, requirements: &str, name: &str) -> Result<PathBuf> {
    let requirements = root.join(requirements);
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let dir = target.join(name);
    let stamp = dir.join("requirements.stamp");
    let python = dir.join("bin/python");
    if python.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    println!(
        "installing {} into {} (pip)",
        requirements.display(),
        dir.display()
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    run_ok(Command::new("python3").args(["-m", "venv"]).arg(&dir))
        .context("creating a Python virtual environment (python3 -m venv)")?;
    run_ok(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
    )
    .with_context(|| format!("installing {} with pip", requirements.display()))?;
    unetlab_files::write_file(&stamp, wanted)?;
    Ok(python)
}
