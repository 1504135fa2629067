//! The loss report of a run directory: `loss.parquet`, `validation.parquet` and the loss curves
//! (`loss.svg`, `loss.png`) from its CSV logs, written by the library at the end of every run.

use std::path::Path;

use polars::prelude::{DataType, PolarsResult};
use unetlab_report::{lines, read_csv, write_parquet, ReportError};

use crate::error::TrainError;

/// Writes the report of the run in `run` (named `name` in the plot's title).
pub fn write_loss_report(run: &Path, name: &str) -> Result<(), TrainError> {
    let mut curves = Vec::new();
    for (stem, column, label) in [
        ("loss", "loss", "training loss"),
        ("validation", "validation_loss", "validation loss (EMA)"),
    ] {
        let mut df = read_csv(&run.join(format!("{stem}.csv")))?;
        write_parquet(&mut df, &run.join(format!("{stem}.parquet")))?;
        let points = column_pairs(&df, column).map_err(ReportError::from)?;
        curves.push((label.to_string(), points));
    }
    lines(
        &run.join("loss"),
        &format!("{name} (proxy): denoising loss"),
        "step",
        "MSE of the predicted noise",
        &curves,
    )?;
    Ok(())
}

/// (step, value) pairs of a log's `column`.
fn column_pairs(df: &polars::prelude::DataFrame, column: &str) -> PolarsResult<Vec<(f64, f64)>> {
    let steps = df.column("step")?.cast(&DataType::Float64)?;
    let values = df.column(column)?.cast(&DataType::Float64)?;
    Ok(steps
        .f64()?
        .into_no_null_iter()
        .zip(values.f64()?.into_no_null_iter())
        .collect())
}
