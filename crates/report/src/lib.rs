//! Reports: measurements as polars DataFrames (Markdown, CSV, Parquet) and plots (SVG, PNG).
//!
//! Every measurement is one row — config, hash, what was measured, value, unit, conditions — so
//! tables from different runs concatenate and filter without special cases. Files are written
//! atomically: a crash never leaves a half-written table or plot.

mod files;
mod frame;
mod plots;

pub use files::{atomic_write, write_text};
pub use frame::{
    measurements_frame, read_csv, read_parquet, to_markdown, write_csv, write_parquet,
    write_tables, Measurement,
};
pub use plots::{
    cloud, effects, grouped_bars, lines, scatter, stacked_bars, Effect, Point, Series,
};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A DataFrame operation or a CSV/Parquet write failed.
    #[error(transparent)]
    Polars(#[from] polars::prelude::PolarsError),
    /// Writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plot {path}: {message}")]
    Plot {
        /// The plot file.
        path: String,
        /// What went wrong.
        message: String,
    },
}
