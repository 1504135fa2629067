//! Compiles in the build's identity: the commit, whether the build's inputs differ from it, and
//! a digest of the sources each kind of measurement depends on (see `src/sources.rs`).

#[path = "src/sources.rs"]
mod sources;

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let mut watched: Vec<PathBuf> = sources::BUILD_INPUTS.iter().map(|f| root.join(f)).collect();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            // No index refresh: a rewritten index would look like a change on the next build.
            .env("GIT_OPTIONAL_LOCKS", "0")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = PathBuf::from(dir);
        watched.push(dir.join("HEAD"));
        watched.push(dir.join("packed-refs"));
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(dir.join(head));
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(sources::BUILD_INPUTS);
    let dirty = git(&status).is_some_and(|s| !s.is_empty());

    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    // One line (rustc-env values cannot hold a newline).
    let extra = format!("{rustc} | {profile} | {features}");

    let env = |name: &str, value: &str| println!("cargo:rustc-env={name}={value}");
    env("UNETLAB_COMMIT", &commit);
    env("UNETLAB_DIRTY", if dirty { "1" } else { "0" });
    env("UNETLAB_RUSTC", &rustc);
    env("UNETLAB_PROFILE", &profile);
    env("UNETLAB_SOURCE_EXTRA", &extra);
    env(
        "UNETLAB_LATENCY_CODE",
        &sources::digest(&root, sources::LATENCY_CRATES, &extra),
    );
    env(
        "UNETLAB_TRAINING_CODE",
        &sources::digest(&root, sources::TRAINING_CRATES, &extra),
    );
}
