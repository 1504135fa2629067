//! Errors of the candle interpreter and of weight files.

use std::path::PathBuf;

/// Why a model could not be built, loaded, saved or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A candle operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The config could not be walked (a bug or an impossible config).
    #[error(transparent)]
    Cost(#[from] unetlab_cost::CostError),
    /// A [`crate::Probe`] was asked for what it cannot do (an uncalibrated conv or linear).
    #[error("probe: {0}")]
    Probe(String),
    /// The forward was not given an input it needs.
    #[error(transparent)]
    Input(#[from] unetlab_graph::MissingInput),
    /// A parameter the config declares is not in the weights.
    #[error("{file}: missing tensor `{name}` (expected shape {expected:?}){more}")]
    MissingTensor {
        /// The weights file.
        file: String,
        /// The first missing tensor.
        name: String,
        /// Its declared shape.
        expected: Vec<usize>,
        /// How many more are missing, if any.
        more: String,
    },
    /// Tensors in the weights that the config does not declare.
    #[error("{file}: {count} unexpected tensor(s), e.g. `{first}`: the weights do not match this config")]
    UnexpectedTensors {
        /// The weights file.
        file: String,
        /// How many.
        count: usize,
        /// One of them.
        first: String,
    },
    /// A tensor whose shape differs from the declaration.
    #[error("{file}: tensor `{name}` has shape {found:?}, the config declares {expected:?}")]
    ShapeMismatch {
        /// The weights file (or `model` for an in-memory lookup).
        file: String,
        /// The tensor.
        name: String,
        /// Declared shape.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A tensor stored in a dtype that cannot hold weights.
    #[error("{file}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The weights file.
        file: String,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// Not a valid safetensors file (truncated, corrupt header, ...).
    #[error("{file}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        file: String,
        /// The parser's complaint.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
