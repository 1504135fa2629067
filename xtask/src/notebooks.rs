//! `cargo xtask notebooks`: the Jupyter notebooks in `notebooks/`, executed headless against the
//! committed `results/` by `scripts/run_notebooks.py` in a pinned virtual environment
//! (`target/notebooks-venv`); `--update` stores their outputs, `--lab` opens them in JupyterLab.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::tools::{python_venv, run_ok, target_dir};

/// Execute the notebooks headless (the tests do), store their outputs, or open them.
#[derive(clap::Args, Default)]
pub struct NotebooksArgs {
    /// Write each executed notebook back with its outputs (tables, plots), so a code host shows
    /// them.
    #[arg(long)]
    update: bool,
    /// Open the notebooks in JupyterLab (installed on first use into target/notebooks-lab-venv).
    #[arg(long, conflicts_with = "update")]
    lab: bool,
}

/// Runs `cargo xtask notebooks`.
pub fn run(args: &NotebooksArgs, root: &Path) -> Result<()> {
    let target = target_dir(root);
    let notebooks = notebook_files(&root.join("notebooks"))?;
    if args.lab {
        let python = python_venv(
            root,
            &target,
            "scripts/requirements-lab.txt",
            "notebooks-lab-venv",
        )?;
        let jupyter = python.with_file_name("jupyter");
        return run_ok(
            Command::new(jupyter)
                .args(["lab", "--notebook-dir"])
                .arg(root.join("notebooks")),
        );
    }
    let python = python_venv(
        root,
        &target,
        "scripts/requirements-notebooks.txt",
        "notebooks-venv",
    )?;
    let mut cmd = Command::new(python);
    cmd.arg(root.join("scripts/run_notebooks.py"));
    if args.update {
        cmd.arg("--update");
    }
    run_ok(cmd.args(&notebooks)).context("executing the notebooks")
}

/// `notebooks/*.ipynb`, sorted.
fn notebook_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.retain(|p| p.extension().is_some_and(|e| e == "ipynb"));
    v.sort();
    if v.is_empty() {
        bail!("no notebooks in {}", dir.display());
    }
    Ok(v)
}
