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
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.partial", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp).map_err(io)?);
        write(&mut out)?;
        out.flush().map_err(io)?;
        out.get_ref().sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
