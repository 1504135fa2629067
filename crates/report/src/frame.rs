//! Measurement rows as DataFrames, and DataFrames as Markdown, CSV and Parquet.

use std::path::Path;

use polars::prelude::*;

use crate::files::atomic_write;
use crate::ReportError;

/// One measured value.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Config name.
    pub config: String,
    /// Config hash.
    pub hash: String,
    /// What was measured (`params`, `macs_conv`, `latency_median`, ...).
    pub measurement: String,
    /// The value.
    pub value: f64,
    /// Its unit (`count`, `MAC`, `s`, `GFLOP/s`, ...).
    pub unit: String,
    /// Conditions (`latent 64, batch 1, 77 tokens, f32, cpu, 2 threads`).
    pub conditions: String,
    /// The build that produced the value (`5b3bc3b`, `5b3bc3b+dirty`).
    pub build: String,
    /// When it was produced, `YYYY-MM-DDTHH:MM:SSZ`.
    pub measured_utc: String,
    /// `computed` (by the run that wrote the table), `measured` (likewise) or `cache` (measured
    /// by an earlier run).
    pub source: String,
}

/// The long-format frame: columns config, hash, measurement, value, unit, conditions, build,
/// measured_utc, source.
pub fn measurements_frame(rows: &[Measurement]) -> Result<DataFrame, ReportError> {
    let text = |name: &str, f: fn(&Measurement) -> &str| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<&str>>())
    };
    Ok(DataFrame::new(
        rows.len(),
        vec![
            text("config", |m| &m.config),
            text("hash", |m| &m.hash),
            text("measurement", |m| &m.measurement),
            Column::new(
                "value".into(),
                rows.iter().map(|m| m.value).collect::<Vec<f64>>(),
            ),
            text("unit", |m| &m.unit),
            text("conditions", |m| &m.conditions),
            text("build", |m| &m.build),
            text("measured_utc", |m| &m.measured_utc),
            text("source", |m| &m.source),
        ],
    )?)
}

/// Writes `dir/stem.csv`, `dir/stem.parquet` and `dir/stem.md`.
pub fn write_tables(df: &mut DataFrame, dir: &Path, stem: &str) -> Result<(), ReportError> {
    write_csv(df, &dir.join(format!("{stem}.csv")))?;
    write_parquet(df, &dir.join(format!("{stem}.parquet")))?;
    let md = to_markdown(df);
    atomic_write(&dir.join(format!("{stem}.md")), |out| {
        use std::io::Write;
        out.write_all(md.as_bytes())
            .map_err(|source| ReportError::Io {
                path: format!("{stem}.md"),
                source,
            })
    })
}

/// Writes one DataFrame as CSV, atomically.
pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<(), ReportError> {
    atomic_write(path, |out| {
        CsvWriter::new(out).finish(df)?;
        Ok(())
    })
}

/// Writes one DataFrame as Parquet, atomically.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<(), ReportError> {
    atomic_write(path, |out| {
        ParquetWriter::new(out).finish(df)?;
        Ok(())
    })
}

/// Columns of the tables that hold identifiers (the build, a config's hash): read as text even
/// when an identifier happens to be all digits, as a commit like `6025281` is, which type
/// inference would make a number.
const IDENTIFIER_COLUMNS: &[&str] = &["build", "hash"];

/// Reads a CSV written by [`write_tables`].
pub fn read_csv(path: &Path) -> Result<DataFrame, ReportError> {
    let identifiers = Schema::from_iter(
        IDENTIFIER_COLUMNS
            .iter()
            .map(|&c| Field::new(c.into(), DataType::String)),
    );
    Ok(CsvReadOptions::default()
        .with_has_header(true)
        .with_schema_overwrite(Some(Arc::new(identifiers)))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))?
        .finish()?)
}

/// Reads a Parquet file written by [`write_tables`].
pub fn read_parquet(path: &Path) -> Result<DataFrame, ReportError> {
    let file = std::fs::File::open(path).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(ParquetReader::new(file).finish()?)
}

/// A GitHub-flavoured Markdown table; numbers right-aligned, floats to a precision that suits their size.
pub fn to_markdown(df: &DataFrame) -> String {
    let columns = df.columns();
    let numeric: Vec<bool> = columns
        .iter()
        .map(|c| c.dtype().is_primitive_numeric())
        .collect();
    let mut out = String::new();
    let names: Vec<String> = columns.iter().map(|c| c.name().to_string()).collect();
    out.push_str(&format!("| {} |\n", names.join(" | ")));
    let rule: Vec<&str> = numeric
        .iter()
        .map(|&n| if n { "---:" } else { "---" })
        .collect();
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for row in 0..df.height() {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| c.get(row).map(|v| cell(&v)).unwrap_or_default())
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

fn cell(value: &AnyValue) -> String {
    match value {
        AnyValue::Null => String::new(),
        AnyValue::String(s) => s.replace('|', "\\|"),
        AnyValue::StringOwned(s) => s.replace('|', "\\|"),
        AnyValue::Float64(f) => float(*f),
        AnyValue::Float32(f) => float(*f as f64),
        other => other.to_string(),
    }
}

fn float(f: f64) -> String {
    let a = f.abs();
    if f.is_nan() {
        String::new()
    } else if a >= 100.0 || a == 0.0 {
        format!("{f:.1}")
    } else if a >= 1.0 {
        format!("{f:.2}")
    } else {
        format!("{f:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rows whose identifiers are all digits (a commit can be, and a leading zero must
    /// survive), so the round trip would turn them into numbers if it inferred their type.
    fn rows() -> Vec<Measurement> {
        vec![
            Measurement {
                config: "a".into(),
                hash: "0123456".into(),
                measurement: "params".into(),
                value: 859_520_964.0,
                unit: "count".into(),
                conditions: "batch 1".into(),
                build: "6025281".into(),
                measured_utc: "2026-11-30T10:00:00Z".into(),
                source: "computed".into(),
            },
            Measurement {
                config: "b|c".into(),
                hash: "7654321".into(),
                measurement: "latency_median".into(),
                value: 0.0123,
                unit: "s".into(),
                conditions: "latent 64".into(),
                build: "0415926".into(),
                measured_utc: "2026-11-26T03:11:51Z".into(),
                source: "cache".into(),
            },
        ]
    }

    #[test]
    fn tables_round_trip_through_csv_and_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let mut df = measurements_frame(&rows()).unwrap();
        write_tables(&mut df, dir.path(), "m").unwrap();
        for back in [
            read_csv(&dir.path().join("m.csv")).unwrap(),
            read_parquet(&dir.path().join("m.parquet")).unwrap(),
        ] {
            assert_eq!(back.height(), 2);
            assert_eq!(
                back.column("config").unwrap().get(1).unwrap(),
                AnyValue::String("b|c")
            );
            assert_eq!(
                back.column("value").unwrap().get(0).unwrap(),
                AnyValue::Float64(859_520_964.0)
            );
            assert_eq!(
                back.column("build").unwrap().get(1).unwrap(),
                AnyValue::String("0415926")
            );
            assert_eq!(
                back.column("hash").unwrap().get(0).unwrap(),
                AnyValue::String("0123456")
            );
            assert_eq!(
                back.column("source").unwrap().get(1).unwrap(),
                AnyValue::String("cache")
            );
        }
        let md = std::fs::read_to_string(dir.path().join("m.md")).unwrap();
        assert_eq!(md.lines().count(), 4);
        assert!(
            md.contains("| b\\|c | 7654321 | latency_median | 0.012 | s | latent 64 |"),
            "{md}"
        );
        assert!(md.contains("| 859520964.0 |"), "{md}");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 3, "no temporary files remain");
    }
}
