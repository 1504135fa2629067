//! `cargo xtask counts`: every preset counted by place (direction, level, block kind), with
//! parameters and MACs by kind, written to `results/counts/` for the notebooks. Counting needs no
//! weights and no measurement: the command takes seconds and its numbers depend only on the code.

use std::path::Path;

use anyhow::Result;
use polars::prelude::{Column, DataFrame};
use unetlab_cost::{count, Conditions, Direction};
use unetlab_provenance::{now_utc, Build};
use unetlab_report::{write_csv, write_parquet, write_text};
use unetlab_spec::{paper, presets, Config};

/// Counts every preset at the paper's 64x64 latent (batch 1, its own token count) by place.
pub fn run(workspace: &Path) -> Result<()> {
    let out = workspace.join("results/counts");
    std::fs::create_dir_all(&out)?;
    // (config, hash, level, direction, kind, params, MACs conv/linear/attention)
    type Row = (String, String, Option<usize>, String, String, u64, [u64; 3]);
    let mut rows: Vec<Row> = Vec::new();
    let mut totals = Vec::new();
    for name in presets::NAMES {
        let config = Config::load(name)?;
        let cost = count(
            &config.spec,
            Conditions {
                batch: 1,
                latent_size: paper::GFLOPS_LATENT_SIZE,
                tokens: config.spec.text_tokens,
            },
        )?;
        for p in cost.by_place() {
            let direction = match p.place.direction {
                Some(Direction::Down) => "down",
                Some(Direction::Mid) => "mid",
                Some(Direction::Up) => "up",
                None => "",
            };
            rows.push((
                name.to_string(),
                config.hash(),
                p.place.level,
                direction.to_string(),
                p.place.kind.map_or("", |k| k.label()).to_string(),
                p.params,
                [p.macs.conv, p.macs.linear, p.macs.attention],
            ));
        }
        totals.push((name, cost.params(), cost.macs.total()));
    }
    let column = |name: &str, values: Vec<u64>| Column::new(name.into(), values);
    let mut df = DataFrame::new(
        rows.len(),
        vec![
            Column::new(
                "config".into(),
                rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "hash".into(),
                rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "level".into(),
                rows.iter()
                    .map(|r| r.2.map(|l| l as u32))
                    .collect::<Vec<Option<u32>>>(),
            ),
            Column::new(
                "direction".into(),
                rows.iter().map(|r| r.3.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "kind".into(),
                rows.iter().map(|r| r.4.as_str()).collect::<Vec<_>>(),
            ),
            column("params", rows.iter().map(|r| r.5).collect()),
            column("macs_conv", rows.iter().map(|r| r.6[0]).collect()),
            column("macs_linear", rows.iter().map(|r| r.6[1]).collect()),
            column("macs_attention", rows.iter().map(|r| r.6[2]).collect()),
        ],
    )?;
    write_csv(&mut df, &out.join("places.csv"))?;
    write_parquet(&mut df, &out.join("places.parquet"))?;
    let build = Build::current();
    let mut readme = format!(
        "# Counts by place\n\nProduced by `cargo xtask counts` at commit `{}` on {}: every preset \
         counted by the cost interpreter at a {2}x{2} latent (the paper's Table 1 setting), batch \
         1, each preset's own token count. Counts depend only on the code (no weights, no \
         measurement).\n\n",
        build.label(),
        now_utc(),
        paper::GFLOPS_LATENT_SIZE
    );
    readme.push_str(
        "`places.{csv,parquet}`: one row per config and place of the structure (direction \
         `down`/`mid`/`up` and level of a stage, or none for the embeddings and in/out convs; \
         the block kind), with parameters and MACs by kind (conv, linear, attention matmuls). \
         The rows of a config sum to its totals:\n\n| config | params | MACs |\n|---|---|---|\n",
    );
    for (name, params, macs) in totals {
        readme.push_str(&format!("| {name} | {params} | {macs} |\n"));
    }
    write_text(&out.join("README.md"), &readme)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
