//! Files that appear whole or not at all, and SHA-256 digests in hex.
//!
//! Every writer in unetlab that must not leave half a file behind (tables, plots, weights,
//! checkpoints, image grids, run files, docs) goes through [`write_via_temp`] or [`write_file`];
//! `tests/writers.rs` lists the few that may not (append-only logs, files inside a staged bundle
//! directory that is renamed into place whole).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A temporary path beside `path`, unique to this process: `table.csv` → `table.csv.<pid>.partial`.
/// Its extension is `partial`, so nothing that lists files by extension mistakes it for a result.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.partial", std::process::id()));
    PathBuf::from(name)
}

/// Runs `write` on a temporary path beside `path` and renames the result into place when it
/// succeeds; when it fails, the temporary file is removed and `path` is untouched.
pub fn write_via_temp<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
    io_error: impl FnOnce(std::io::Error) -> E,
) -> Result<(), E> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(io_error));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `contents` to `path` through [`write_via_temp`]: the whole file or nothing.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    write_via_temp(
        path,
        |tmp| std::fs::write(tmp, contents),
        std::convert::identity,
    )
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Size and SHA-256 (hex) of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), (3, sha256_hex(b"abc")));
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.csv");
        std::fs::write(&path, "old").unwrap();
        let failed: Result<(), String> = write_via_temp(
            &path,
            |tmp| {
                std::fs::write(tmp, "half").unwrap();
                Err("disk full".into())
            },
            |e| e.to_string(),
        );
        assert_eq!(failed.unwrap_err(), "disk full");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        write_via_temp(&path, |tmp| std::fs::write(tmp, "new"), |e| e).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(temp_path(&path).extension().unwrap(), "partial");
    }
}
