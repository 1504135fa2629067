//! The study's committed rows of experiments whose runs this machine does not hold: every
//! session starts from a fresh checkout without `target/recipe-runs`, so that `--only` adds an
//! experiment to the study instead of replacing its table with that experiment alone. A row is
//! kept only while the recipe file still states its experiment the same way (config, steps ×
//! batch, arguments); its curves and sample grids stay with it.

use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame};

use super::Experiment;

/// The committed table and curves, restricted to the kept experiments.
pub struct Kept {
    /// The kept experiments, in the file's order.
    pub names: Vec<String>,
    table: DataFrame,
    curves: DataFrame,
}

impl Kept {
    /// Reads `out`'s `table.parquet` and `curves.parquet` and keeps the rows of each experiment
    /// of `experiments` that is not `trained` here and whose row still matches it; says on
    /// stderr which rows it drops. Nothing is kept when the study has no tables yet.
    pub fn read(out: &Path, experiments: &[Experiment], trained: &[&str]) -> Result<Kept> {
        let (table_path, curves_path) = (out.join("table.parquet"), out.join("curves.parquet"));
        if !table_path.is_file() {
            return Ok(Kept {
                names: Vec::new(),
                table: DataFrame::empty(),
                curves: DataFrame::empty(),
            });
        }
        let read = |path: &Path| {
            unetlab_report::read_parquet(path)
                .with_context(|| format!("reading {}", path.display()))
        };
        let (table, curves) = (read(&table_path)?, read(&curves_path)?);
        let rows = text_column(&table, "experiment")?;
        let mut names = Vec::new();
        for e in experiments
            .iter()
            .filter(|e| !trained.contains(&e.name.as_str()))
        {
            let Some(row) = rows.iter().position(|n| n == &e.name) else {
                continue;
            };
            let stated = [
                ("config", e.config.clone()),
                ("steps x batch", format!("{} x {}", e.steps, e.batch)),
                ("arguments", e.arguments()),
            ];
            let mut differs = Vec::new();
            for (column, now) in &stated {
                if &text_column(&table, column)?[row] != now {
                    differs.push(*column);
                }
            }
            if differs.is_empty() {
                names.push(e.name.clone());
            } else {
                eprintln!(
                    "{}: its committed row is dropped: the recipe file now states its {} otherwise",
                    e.name,
                    differs.join(", ")
                );
            }
        }
        Ok(Kept {
            names,
            table,
            curves,
        })
    }

    /// `fresh` (rows of this session's runs) with the kept table rows, in the order of
    /// `experiments`.
    pub fn table(&self, fresh: &DataFrame, experiments: &[Experiment]) -> Result<DataFrame> {
        self.merge(fresh, &self.table, experiments)
    }

    /// `fresh` (curves of this session's runs) with the kept curves, in the order of
    /// `experiments`.
    pub fn curves(&self, fresh: &DataFrame, experiments: &[Experiment]) -> Result<DataFrame> {
        self.merge(fresh, &self.curves, experiments)
    }

    /// Every experiment's rows of `fresh`, or of `committed` if it is kept, in file order, with
    /// `fresh`'s columns and types.
    fn merge(
        &self,
        fresh: &DataFrame,
        committed: &DataFrame,
        experiments: &[Experiment],
    ) -> Result<DataFrame> {
        if self.names.is_empty() {
            return Ok(fresh.clone());
        }
        let mut merged = fresh.clear();
        for e in experiments {
            let from = if self.names.contains(&e.name) {
                committed
            } else {
                fresh
            };
            merged.vstack_mut(&rows_of(from, &e.name, fresh)?)?;
        }
        merged.rechunk_mut();
        Ok(merged)
    }
}

/// The rows of `df` whose `experiment` is `name`, with the columns (and types) of `like`; a
/// column `df` lacks (one added since the study was written, such as `trained on`) is empty.
fn rows_of(df: &DataFrame, name: &str, like: &DataFrame) -> Result<DataFrame> {
    let experiment = text_column(df, "experiment")?;
    let columns = like
        .columns()
        .iter()
        .map(|c| match df.column(c.name()) {
            Ok(column) => Ok(column.cast(c.dtype())?),
            Err(_) => Ok(Column::full_null(c.name().clone(), df.height(), c.dtype())),
        })
        .collect::<Result<Vec<_>>>()?;
    let all = DataFrame::new(df.height(), columns)?;
    let mut rows = like.clear();
    for (i, _) in experiment.iter().enumerate().filter(|(_, n)| *n == name) {
        rows.vstack_mut(&all.slice(i as i64, 1))?;
    }
    Ok(rows)
}

/// A text column's values ("" for nulls).
fn text_column(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let c = df.column(name)?.str()?;
    Ok((0..c.len())
        .map(|i| c.get(i).unwrap_or_default().to_string())
        .collect())
}
