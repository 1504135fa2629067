//! Where a number came from: the unetlab build that measured it and when.
//!
//! The build script compiles in the commit, whether the build's inputs differed from it
//! ("dirty"), the compiler and profile, and one digest per kind of measurement over exactly the
//! sources that kind depends on ([`Code`]). Caches key their entries on that digest, so a change
//! to the kernels re-measures latencies, a change to the trainer re-trains, and a change to
//! report-only code (tables, plots) re-renders without re-measuring.

pub mod sources;

use serde::{Deserialize, Serialize};

/// The unetlab build that is running, as its build script saw the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// unetlab's version.
    pub version: String,
    /// The commit checked out at build time (`unknown` outside git).
    pub commit: String,
    /// Whether the build's inputs ([`sources::BUILD_INPUTS`]) differed from that commit.
    pub dirty: bool,
    /// `rustc -V`.
    pub rustc: String,
    /// Cargo profile (`release`, `debug`).
    pub profile: String,
}

impl Build {
    /// This binary's build.
    pub fn current() -> Build {
        Build {
            version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("UNETLAB_COMMIT").into(),
            dirty: env!("UNETLAB_DIRTY") == "1",
            rustc: env!("UNETLAB_RUSTC").into(),
            profile: env!("UNETLAB_PROFILE").into(),
        }
    }

    /// The short commit, `+dirty` when the build's inputs differed from it: `5b3bc3b+dirty`.
    pub fn label(&self) -> String {
        let short: String = self.commit.chars().take(7).collect();
        if self.dirty {
            format!("{short}+dirty")
        } else {
            short
        }
    }
}

/// A kind of measurement, and so the sources its numbers depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Latency of a forward: [`sources::LATENCY_CRATES`].
    Latency,
    /// A proxy training run and its scores: [`sources::TRAINING_CRATES`].
    Training,
}

impl Code {
    /// The crates (under `crates/`) whose sources this kind of measurement depends on.
    pub fn crates(self) -> &'static [&'static str] {
        match self {
            Code::Latency => sources::LATENCY_CRATES,
            Code::Training => sources::TRAINING_CRATES,
        }
    }

    /// The digest of those sources (and of the workspace's lock file, manifests, compiler,
    /// profile and target features) compiled into this binary.
    pub fn identity(self) -> &'static str {
        match self {
            Code::Latency => env!("UNETLAB_LATENCY_CODE"),
            Code::Training => env!("UNETLAB_TRAINING_CODE"),
        }
    }
}

/// Who measured a number and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The build that measured it.
    pub build: Build,
    /// [`Code::identity`] of the code that measured it.
    pub code: String,
    /// When it was measured (finished), `YYYY-MM-DDTHH:MM:SSZ`.
    pub measured_utc: String,
}

impl Provenance {
    /// A measurement of `kind` finished now by this build.
    pub fn now(kind: Code) -> Provenance {
        Provenance {
            build: Build::current(),
            code: kind.identity().into(),
            measured_utc: now_utc(),
        }
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    utc(secs)
}

/// Seconds since 1970-01-01 as `YYYY-MM-DDTHH:MM:SSZ` (H. Hinnant's days-to-civil algorithm).
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn workspace() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
    }

    /// The identities compiled in are those of the tree the tests were built from: the build
    /// script hashed what it says it hashes, and re-ran after the last edit of those sources.
    #[test]
    fn compiled_identities_match_the_sources() {
        for kind in [Code::Latency, Code::Training] {
            let fresh = sources::digest(workspace(), kind.crates(), env!("UNETLAB_SOURCE_EXTRA"));
            assert_eq!(kind.identity(), fresh, "{kind:?}");
        }
        assert_ne!(Code::Latency.identity(), Code::Training.identity());
    }

    #[test]
    fn a_digest_follows_its_crates_sources_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |path: &str, text: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("Cargo.lock", "lock");
        write("crates/model/Cargo.toml", "[package]");
        write("crates/model/src/lib.rs", "fn a() {}");
        write("crates/model/src/kernels/conv.rs", "fn conv() {}");
        write("crates/report/src/lib.rs", "fn plot() {}");
        let digest = || sources::digest(root, &["model"], "rustc");
        let before = digest();
        assert_eq!(before, digest(), "deterministic");

        // Report-only code, tests and benches do not enter the identity.
        write("crates/report/src/lib.rs", "fn plot2() {}");
        write("crates/model/tests/t.rs", "#[test] fn t() {}");
        assert_eq!(before, digest());

        // A nested kernel source, a manifest, the lock file, a new file and the compiler do.
        for (path, text) in [
            ("crates/model/src/kernels/conv.rs", "fn conv2() {}"),
            ("crates/model/Cargo.toml", "[package]\n"),
            ("Cargo.lock", "lock2"),
            ("crates/model/src/new.rs", ""),
        ] {
            let old = digest();
            write(path, text);
            assert_ne!(old, digest(), "{path}");
        }
        assert_ne!(digest(), sources::digest(root, &["model"], "rustc 2"));
        // Moving bytes from one file's end to the next file's start changes it too.
        write("crates/model/src/a.rs", "xy");
        write("crates/model/src/b.rs", "z");
        let split = digest();
        write("crates/model/src/a.rs", "x");
        write("crates/model/src/b.rs", "yz");
        assert_ne!(split, digest());
    }

    #[test]
    fn build_label_and_times() {
        let mut build = Build::current();
        assert_eq!(build.version, env!("CARGO_PKG_VERSION"));
        build.commit = "5b3bc3b6f0aa".into();
        build.dirty = false;
        assert_eq!(build.label(), "5b3bc3b");
        build.dirty = true;
        assert_eq!(build.label(), "5b3bc3b+dirty");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_036_645), "2026-11-30T11:04:05Z");
        let p = Provenance::now(Code::Training);
        assert_eq!(p.code, Code::Training.identity());
        assert_eq!(p.measured_utc.len(), 20);
    }
}
