//! Shared by the CLI tests: running the `unetlab` binary from the workspace root.

use std::process::{Command, Output};

/// Runs `unetlab` with `args` in the workspace root.
pub fn unetlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unetlab"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("runs the unetlab binary")
}
