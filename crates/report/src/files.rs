//! Atomic file writes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::ReportError;

/// Writes `path` through a temporary file in the same folder, renamed into place when `write`
/// succeeds; on failure the temporary file is removed and `path` is untouched.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), ReportError>,
) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: path.display().to_string(),
        source,
    };
    unetlab_files::write_via_temp(
        path,
        |tmp| {
            let mut out = BufWriter::new(File::create(tmp).map_err(io)?);
            write(&mut out)?;
            out.flush().map_err(io)?;
            out.get_ref().sync_all().map_err(io)
        },
        io,
    )
}

/// Writes `text` to `path` atomically (see [`atomic_write`]).
pub fn write_text(path: &Path, text: &str) -> Result<(), ReportError> {
    atomic_write(path, |out| {
        out.write_all(text.as_bytes())
            .map_err(|source| ReportError::Io {
                path: path.display().to_string(),
                source,
            })
    })
}
