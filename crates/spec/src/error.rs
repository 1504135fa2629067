//! Errors of loading and validating configs. Every message names where the problem is.

use std::fmt;
use std::path::PathBuf;

/// One problem at one field, e.g. `unet.levels[2].channels: 330 is not divisible by norm.groups 32`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path (`unet.levels[2].channels`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Neither an existing file nor a preset name.
    #[error("'{reference}' is neither a file nor a preset (presets: {})", crate::presets::NAMES.join(", "))]
    NotFound {
        /// What was asked for.
        reference: String,
    },
    /// `extends` leads back to a config already being loaded.
    #[error("{origin}: extends cycle: {}", chain.join(" -> "))]
    ExtendsCycle {
        /// The config where the cycle was found.
        origin: String,
        /// The chain of configs, ending at the repeated one.
        chain: Vec<String>,
    },
    /// Syntax, type, unknown-field or validation errors.
    #[error("{origin}: {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The config (file path or `preset:<name>`).
        origin: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

impl SpecError {
    /// The field errors, if this is a syntax or validation error.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            SpecError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}
