//! Errors of training runs.

use std::path::PathBuf;

/// Why a run could not start, continue or finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A candle operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The model failed (weights, shapes).
    #[error(transparent)]
    Model(#[from] unetlab_model::ModelError),
    /// The data could not be read.
    #[error(transparent)]
    Data(#[from] unetlab_data::DataError),
    /// The run's report (Parquet tables, loss curves) could not be written.
    #[error("run report: {0}")]
    Report(#[from] unetlab_report::ReportError),
    /// The tokenizer could not be built, loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The loss became NaN or infinite; nothing after the last checkpoint was kept.
    #[error("training diverged at step {step}: loss {loss}; the last good checkpoint (step {checkpoint_step}) is kept in {run}")]
    Diverged {
        /// The step whose loss was not finite.
        step: u64,
        /// The loss value.
        loss: f64,
        /// Step of the checkpoint on disk.
        checkpoint_step: u64,
        /// The run directory.
        run: PathBuf,
    },
    /// A run cannot be scored as asked.
    #[error("metrics: {0}")]
    Metrics(String),
    /// A run directory holds a different run.
    #[error("{run}: {message}")]
    Run {
        /// The run directory.
        run: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The training benchmark could not run (a recipe it cannot use, or a diverging step).
    #[error("training benchmark: {0}")]
    Benchmark(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl TrainError {
    /// An I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
}
