//! Shared by the CLI tests: running the `unetlab` binary from the workspace root.

use std::process::{Command, Output};

/// The `unetlab` binary, run in the workspace root, with its evaluator cache in cargo's
/// scratch directory for tests (not the user's ~/.cache).
#[allow(dead_code)] // not every test binary spawns it itself
pub fn unetlab_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unetlab"));
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .env("UNETLAB_CACHE", env!("CARGO_TARGET_TMPDIR"));
    cmd
}

/// Runs `unetlab` with `args` (see [`unetlab_command`]).
pub fn unetlab(args: &[&str]) -> Output {
    unetlab_command()
        .args(args)
        .output()
        .expect("runs the unetlab binary")
}
