//! `cargo xtask setup`: the system packages the build and the tests need, installed if missing.
//!
//! - `protoc` (Debian `protobuf-compiler`): candle-onnx, the test-only ONNX evaluator, compiles
//!   ONNX's `.proto` in its build script.
//! - a TrueType font (Debian `fonts-dejavu-core`): plot text (or set `UNETLAB_FONT`).
//! - Slurm and MUNGE (Debian `slurm-wlm`, `munge`): `cargo xtask slurm-check` runs a one-node
//!   cluster on this machine.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

/// Installs what is missing; fails with the manual command when it cannot.
pub fn run() -> Result<()> {
    let protoc = std::env::var_os("PROTOC").is_some() || has_command("protoc");
    ensure(protoc, "protoc", "protobuf-compiler")?;
    let font = std::env::var_os("UNETLAB_FONT").is_some()
        || Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file();
    ensure(font, "a TrueType font", "fonts-dejavu-core")?;
    slurm()
}

/// Slurm's daemons and clients and MUNGE, installed if missing.
pub fn slurm() -> Result<()> {
    let slurm = [
        "slurmctld",
        "slurmd",
        "sbatch",
        "squeue",
        "scontrol",
        "scancel",
        "sinfo",
    ]
    .iter()
    .all(|p| installed(p));
    ensure(slurm, "Slurm", "slurm-wlm")?;
    ensure(installed("munged"), "MUNGE", "munge")
}

/// Whether `program` is on the PATH or in /usr/sbin (where Debian puts the daemons).
fn installed(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([Path::new("/usr/sbin").to_path_buf()])
        .any(|dir| dir.join(program).is_file())
}

fn has_command(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure(present: bool, what: &str, package: &str) -> Result<()> {
    if present {
        println!("setup: {what} found");
        return Ok(());
    }
    println!("setup: {what} missing; installing Debian package {package}");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = apt(&["install", "-y", "-qq", package])
        || (apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", package]));
    if !installed {
        bail!("could not install {package} (needed for {what}); install it yourself: apt-get install {package}");
    }
    Ok(())
}
