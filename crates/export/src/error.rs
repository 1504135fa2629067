//! Errors of the exporter and of bundle checks.

use std::path::PathBuf;

/// Why an export or a bundle check failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The weights or the candle model failed.
    #[error(transparent)]
    Model(#[from] unetlab_model::ModelError),
    /// A candle operation on the weights failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The config could not be loaded.
    #[error(transparent)]
    Spec(#[from] unetlab_spec::SpecError),
    /// The forward was not given an input it needs.
    #[error(transparent)]
    Input(#[from] unetlab_graph::MissingInput),
    /// Something the ONNX export cannot express.
    #[error("cannot export: {0}")]
    Unsupported(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A bundle is incomplete, altered or inconsistent.
    #[error("bundle {dir}: {message}")]
    Bundle {
        /// The bundle directory.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ExportError {
    /// An I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ExportError {
        let path = path.into();
        move |source| ExportError::Io { path, source }
    }
}
