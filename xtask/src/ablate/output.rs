//! The files of a study folder: tables (Markdown, CSV, Parquet), plots, `run.json`, `README.md`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use serde_json::json;
use unetlab_bench::Machine;
use unetlab_report::{
    grouped_bars, measurements_frame, scatter, stacked_bars, to_markdown, write_tables, write_text,
    Measurement, Point, Series,
};

use unetlab_cost::{Direction, Place};
use unetlab_train::RunSummary;

use super::origins;
use super::ranking;
use super::{AblateArgs, Row};
use crate::claims;
use crate::stats;
use crate::training::Run;
use unetlab_provenance::{Build, Provenance};

use polars::prelude::{Column, DataFrame};

/// Writes every output of the run; `build` is this xtask's, `started_utc` when the run began.
pub fn write(
    out: &Path,
    (study, description): (&str, Option<&str>),
    rows: &[Row],
    tables: &[(String, Vec<String>)],
    (args, parallelism): (&AblateArgs, Option<(usize, usize)>),
    machine: &Machine,
    (build, started_utc): (&Build, &str),
) -> Result<()> {
    let mut long = measurements_frame(&measurements(rows, build, started_utc))?;
    write_tables(&mut long, out, "measurements")?;
    let verdicts = claims::verdicts(rows);
    let mut correlations = ranking::between_seeds(rows);
    if let Some(other) = &args.rank_against {
        correlations.extend(ranking::against(rows, other)?);
    }
    let precision =
        crate::precision::read_rows(&crate::docs::workspace().join("results/precision"));
    let mut wide = wide_table(rows, &verdicts, precision.as_deref())?;
    write_tables(&mut wide, out, "table")?;
    plots(out, rows)?;
    let mut claims_table = claims::frame(&verdicts)?;
    if !verdicts.is_empty() {
        write_tables(&mut claims_table, out, "claims")?;
        claims::plot(
            &out.join("claims"),
            "The paper's claims: effect of each step against its baseline, ± 2σ",
            &verdicts,
        )?;
    }

    let origins = origins::origins(rows);
    let run = json!({
        "study": study,
        "command": command_line(),
        "budget": args.budget.name(),
        "date_utc": started_utc,
        "commit": build.commit,
        "provenance": origins::to_json(&origins, build),
        "machine": machine,
        "device": args.run_on.device,
        "dtype": args.run_on.dtype,
        "training": parallelism.map(|(jobs, threads)| json!({"runs_at_a_time": jobs, "threads_per_run": threads})),
        "configs": rows.iter().map(|r| json!({"name": r.config.name, "origin": r.config.origin, "hash": r.config.hash()})).collect::<Vec<_>>(),
        "claims": verdicts,
        "rank_correlations": correlations,
    });
    write_text(&out.join("run.json"), &serde_json::to_string_pretty(&run)?)?;
    write_text(
        &out.join("README.md"),
        &(readme(
            (study, description),
            build,
            rows,
            tables,
            &run,
            &to_markdown(&wide),
            parallelism,
        ) + &claims::section(
            rows,
            &verdicts,
            &to_markdown(&claims_table),
            &claims::SectionText {
                heading: "## The paper's claims",
                pooled_over: "the study",
                plot: "claims.png",
                no_seeds: "run with `--seeds 2` or more",
            },
        ) + &ranking::section(&correlations)
            + &origins::section(&origins, build, started_utc)),
    )?;
    Ok(())
}

fn count_conditions(r: &Row) -> String {
    let c = r.cost.conditions;
    format!(
        "latent {0}x{0}, batch {1}, {2} tokens",
        c.latent_size, c.batch, c.tokens
    )
}

fn bench_conditions(b: &unetlab_bench::BenchResult) -> String {
    format!(
        "latent {0}x{0}, batch {1}, {2} tokens, {3}, {4}, {5} threads, {6} warm-up + {7} runs",
        b.latent_size,
        b.batch,
        b.tokens,
        b.dtype,
        b.device,
        b.machine.threads,
        b.warmup,
        b.times_s.len()
    )
}

/// Where a measurement came from: (build, time, source) for the provenance columns.
type Source = (String, String, &'static str);

fn measured(p: &Provenance, cached: bool) -> Source {
    (
        p.build.label(),
        p.measured_utc.clone(),
        if cached { "cache" } else { "measured" },
    )
}

/// Every number as one row; counts are `computed` by `build` at `started_utc`.
fn measurements(rows: &[Row], build: &Build, started_utc: &str) -> Vec<Measurement> {
    let computed: Source = (build.label(), started_utc.to_string(), "computed");
    let mut out = Vec::new();
    for r in rows {
        let spec = &r.config.spec;
        let mut push = |measurement: &str,
                        value: f64,
                        unit: &str,
                        conditions: String,
                        (build, measured_utc, source): &Source| {
            out.push(Measurement {
                config: r.config.name.clone(),
                hash: r.config.hash(),
                measurement: measurement.into(),
                value,
                unit: unit.into(),
                conditions,
                build: build.clone(),
                measured_utc: measured_utc.clone(),
                source: source.to_string(),
            })
        };
        let cc = count_conditions(r);
        let m = r.cost.macs;
        for (name, value, unit) in [
            ("params", r.cost.params() as f64, "count"),
            ("tensors", r.cost.tensors() as f64, "count"),
            ("macs_conv", m.conv as f64, "MAC"),
            ("macs_linear", m.linear as f64, "MAC"),
            ("macs_attention", m.attention as f64, "MAC"),
            ("macs_total", m.total() as f64, "MAC"),
            ("flops", r.cost.flops() as f64, "FLOP"),
            ("res_blocks", spec.res_block_count() as f64, "count"),
            (
                "transformer_blocks",
                spec.transformer_block_count() as f64,
                "count",
            ),
            (
                "self_attention_blocks",
                spec.self_attention_count() as f64,
                "count",
            ),
            (
                "cross_attention_blocks",
                spec.cross_attention_count() as f64,
                "count",
            ),
            (
                "peak_activation_memory",
                r.cost.peak_activation_bytes as f64,
                "byte",
            ),
        ] {
            push(name, value, unit, cc.clone(), &computed);
        }
        if let Ok(b) = &r.bench {
            let bc = bench_conditions(b);
            let src = measured(&b.provenance, r.bench_cached);
            for (name, value, unit) in [
                ("latency_median", b.median_s, "s"),
                ("latency_p10", b.p10_s, "s"),
                ("latency_p90", b.p90_s, "s"),
                ("achieved_throughput", b.achieved_gflops_per_s, "GFLOP/s"),
            ] {
                push(name, value, unit, bc.clone(), &src);
            }
            if let Some(rss) = b.peak_rss_bytes {
                push("peak_rss", rss as f64, "byte", bc.clone(), &src);
            }
            for block in &b.per_block {
                push(
                    &format!("latency_block:{}", block.block),
                    block.median_s,
                    "s",
                    bc.clone(),
                    &src,
                );
            }
        }
        for Run {
            summary: run,
            cached,
        } in r.trained.iter().flatten().flatten()
        {
            let tc = train_conditions(run);
            let src = measured(&run.provenance, *cached);
            let mut values = vec![
                ("proxy_validation_loss", run.validation_loss, "mse"),
                ("proxy_steps_per_s", run.steps_per_s, "step/s"),
            ];
            if let Some(m) = &run.metrics {
                values.extend([
                    ("fd", m.quality.fd, "fd"),
                    ("real_fd", m.real_fd, "fd"),
                    ("text_alignment", m.quality.text_alignment, "fraction"),
                    (
                        "attribute_alignment",
                        m.quality.attribute_alignment,
                        "fraction",
                    ),
                ]);
            }
            for (name, value, unit) in values {
                push(name, value, unit, tc.clone(), &src);
            }
        }
    }
    out
}

/// A quality number of a row's runs: (mean, sd) over seeds, if it trained and was scored.
fn quality(row: &Row, f: &dyn Fn(&RunSummary) -> Option<f64>) -> Option<(f64, f64)> {
    let runs = row.trained.as_ref()?.as_ref().ok()?;
    let values: Option<Vec<f64>> = runs.iter().map(|run| f(&run.summary)).collect();
    let (mean, sd) = stats::mean_sd(&values?)?;
    Some((mean, sd.unwrap_or(0.0)))
}

fn fd(s: &RunSummary) -> Option<f64> {
    s.metrics.as_ref().map(|m| m.quality.fd)
}

fn text_alignment(s: &RunSummary) -> Option<f64> {
    s.metrics.as_ref().map(|m| m.quality.text_alignment)
}

fn attribute_alignment(s: &RunSummary) -> Option<f64> {
    s.metrics.as_ref().map(|m| m.quality.attribute_alignment)
}

fn validation_loss(s: &RunSummary) -> Option<f64> {
    Some(s.validation_loss)
}

fn steps_per_s(s: &RunSummary) -> Option<f64> {
    Some(s.steps_per_s)
}

/// The recipe and scoring behind the quality numbers, for the conditions column.
fn train_conditions(s: &RunSummary) -> String {
    let r = &s.recipe;
    let mut text = format!(
        "proxy {} steps x {} images, lr {}, AdamW beta2 {}, seed {}",
        r.steps, r.batch, r.optimizer.lr, r.optimizer.beta2, r.seed
    );
    if let Some(m) = &s.metrics {
        text.push_str(&format!(
            "; {} validation captions, {} DDIM steps, cfg {}",
            m.options.images, m.options.ddim_steps, m.options.cfg
        ));
    }
    text
}

/// `c577106 2026-11-26T03:11:51Z (cache)`: the build and time of a measurement, and whether
/// this run read it from the cache.
fn origin_label(p: &Provenance, cached: bool) -> String {
    format!(
        "{} {}{}",
        p.build.label(),
        p.measured_utc,
        if cached { " (cache)" } else { "" }
    )
}

fn percent(new: f64, old: f64) -> String {
    format!("{:+.1} %", 100.0 * (new / old - 1.0))
}

/// The step's measured effect against its declared baseline, when that baseline is in the run;
/// with the precision study's f16 and int8 errors of the pair when it measured both.
fn effect(
    row: &Row,
    by_name: &HashMap<&str, &Row>,
    precision: Option<&[crate::precision::Row]>,
) -> String {
    let Some(base) = row
        .config
        .paper
        .as_ref()
        .and_then(|p| p.baseline.as_deref())
        .and_then(|b| by_name.get(b))
    else {
        return String::new();
    };
    let mut parts = vec![
        format!(
            "params {}",
            percent(row.cost.params() as f64, base.cost.params() as f64)
        ),
        format!(
            "GFLOPs {}",
            percent(row.cost.flops() as f64, base.cost.flops() as f64)
        ),
    ];
    if let (Ok(a), Ok(b)) = (&row.bench, &base.bench) {
        parts.push(format!("latency {}", percent(a.median_s, b.median_s)));
    }
    if let (Some((a, _)), Some((b, _))) = (
        quality(row, &validation_loss),
        quality(base, &validation_loss),
    ) {
        parts.push(format!("val loss {}", percent(a, b)));
    }
    if let (Some((a, _)), Some((b, _))) = (quality(row, &fd), quality(base, &fd)) {
        parts.push(format!("FD {b:.1} -> {a:.1}"));
    }
    if let (Some((a, _)), Some((b, _))) = (
        quality(row, &text_alignment),
        quality(base, &text_alignment),
    ) {
        parts.push(format!("text alignment {b:.3} -> {a:.3}"));
    }
    if let Some(text) = precision
        .and_then(|rows| crate::precision::effect_text(rows, &row.config.name, &base.config.name))
    {
        parts.push(text);
    }
    format!("vs {}: {}", base.config.name, parts.join(", "))
}

/// One row per config: counts, latency, and the paper's claim beside the measured effect.
fn wide_table(
    rows: &[Row],
    verdicts: &[claims::Verdict],
    precision: Option<&[crate::precision::Row]>,
) -> Result<DataFrame> {
    let by_name: HashMap<&str, &Row> = rows.iter().map(|r| (r.config.name.as_str(), r)).collect();
    let text = |name: &str, f: &dyn Fn(&Row) -> String| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<String>>())
    };
    let num = |name: &str, f: &dyn Fn(&Row) -> f64| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<f64>>())
    };
    let lat = |name: &str, f: &dyn Fn(&unetlab_bench::BenchResult) -> f64| {
        let values: Vec<Option<f64>> = rows.iter().map(|r| r.bench.as_ref().ok().map(f)).collect();
        Column::new(name.into(), values)
    };
    let qual = |name: &str, f: &dyn Fn(&RunSummary) -> Option<f64>, sd: bool| {
        let values: Vec<Option<f64>> = rows
            .iter()
            .map(|r| quality(r, f).map(|(m, s)| if sd { s } else { m }))
            .collect();
        Column::new(name.into(), values)
    };
    // Spread columns only when some config has several seeds.
    let seeds = rows
        .iter()
        .any(|r| matches!(&r.trained, Some(Ok(runs)) if runs.len() > 1));
    let g = |x: u64| x as f64 / 1e9;
    Ok(DataFrame::new(
        rows.len(),
        vec![
            text("config", &|r| r.config.name.clone()),
            text("step", &|r| {
                r.config
                    .paper
                    .as_ref()
                    .map(|p| p.step.clone())
                    .unwrap_or_default()
            }),
            num("params (M)", &|r| r.cost.params() as f64 / 1e6),
            num("conv GMACs", &|r| g(r.cost.macs.conv)),
            num("linear GMACs", &|r| g(r.cost.macs.linear)),
            num("attention GMACs", &|r| g(r.cost.macs.attention)),
            num("GFLOPs", &|r| g(r.cost.flops())),
            text("res / SA / CA", &|r| {
                let s = &r.config.spec;
                format!(
                    "{} / {} / {}",
                    s.res_block_count(),
                    s.self_attention_count(),
                    s.cross_attention_count()
                )
            }),
            text("latent", &|r| {
                format!("{0}x{0}", r.cost.conditions.latent_size)
            }),
            lat("latency median (s)", &|b| b.median_s),
            lat("p10 (s)", &|b| b.p10_s),
            lat("p90 (s)", &|b| b.p90_s),
            lat("GFLOP/s", &|b| b.achieved_gflops_per_s),
            qual("proxy val loss", &validation_loss, false),
            qual("FD", &fd, false),
            qual("text alignment", &text_alignment, false),
            qual("attribute alignment", &attribute_alignment, false),
            qual("proxy steps/s", &steps_per_s, false),
            text("latency measured by", &|r| {
                r.bench.as_ref().map_or(String::new(), |b| {
                    origin_label(&b.provenance, r.bench_cached)
                })
            }),
            text("training measured by", &|r| {
                let mut labels: Vec<String> = r
                    .trained
                    .iter()
                    .flatten()
                    .flatten()
                    .map(|run| origin_label(&run.summary.provenance, run.cached))
                    .collect();
                labels.dedup();
                labels.join("; ")
            }),
            text("paper claim", &|r| {
                r.config
                    .paper
                    .as_ref()
                    .map(|p| p.claim.clone())
                    .unwrap_or_default()
            }),
            text("measured effect", &|r| match (&r.bench, &r.trained) {
                (Err(e), _) => format!("FAILED: {e}"),
                (_, Some(Err(e))) => format!("training FAILED: {e}"),
                _ => effect(r, &by_name, precision),
            }),
            text("verdict", &|r| {
                verdicts
                    .iter()
                    .filter(|v| v.config == r.config.name)
                    .map(|v| format!("{} {}: {}", v.metric, v.expected, v.outcome.name()))
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        ]
        .into_iter()
        .chain(
            seeds
                .then(|| {
                    [
                        qual("proxy val loss sd", &validation_loss, true),
                        qual("FD sd", &fd, true),
                        qual("text alignment sd", &text_alignment, true),
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .collect(),
    )?)
}

fn plots(out: &Path, rows: &[Row]) -> Result<()> {
    let names: Vec<String> = rows.iter().map(|r| r.config.name.clone()).collect();
    let latent = rows.first().map_or(0, |r| r.cost.conditions.latent_size);
    grouped_bars(
        &out.join("params_gflops"),
        &format!("Parameters and compute (one UNet evaluation, batch 1, latent {latent}x{latent})"),
        &names,
        &[
            Series {
                name: "parameters (M)".into(),
                values: rows.iter().map(|r| r.cost.params() as f64 / 1e6).collect(),
            },
            Series {
                name: "GFLOPs (2 x MACs)".into(),
                values: rows.iter().map(|r| r.cost.flops() as f64 / 1e9).collect(),
            },
        ],
        None,
    )?;

    let (mut categories, mut conv, mut linear, mut attention) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        for (level, m) in macs_by_level(r) {
            categories.push(format!("{} · {level}", r.config.name));
            conv.push(m.conv as f64 / 1e9);
            linear.push(m.linear as f64 / 1e9);
            attention.push(m.attention as f64 / 1e9);
        }
    }
    stacked_bars(
        &out.join("macs_by_level"),
        "Where the compute goes: MACs by kind per resolution level",
        "G MACs (batch 1, 77 tokens)",
        &categories,
        &[
            Series {
                name: "conv".into(),
                values: conv,
            },
            Series {
                name: "linear".into(),
                values: linear,
            },
            Series {
                name: "attention matmuls".into(),
                values: attention,
            },
        ],
    )?;

    let scored = pareto_points(rows);
    if !scored.is_empty() {
        scatter(
            &out.join("pareto"),
            "Compute vs quality: full-size GFLOPs against the proxy's FD (lower-left is better)",
            "GFLOPs per UNet evaluation (full size)",
            "FD of the trained proxy (mean over seeds; bars: ± 1 sd)",
            &scored,
        )?;
    }

    let timed: Vec<(&Row, &unetlab_bench::BenchResult)> = rows
        .iter()
        .filter_map(|r| r.bench.as_ref().ok().map(|b| (r, b)))
        .collect();
    if let Some((_, first)) = timed.first() {
        let conditions = bench_conditions(first);
        let names: Vec<String> = timed.iter().map(|(r, _)| r.config.name.clone()).collect();
        let whiskers: Vec<(f64, f64)> = timed.iter().map(|(_, b)| (b.p10_s, b.p90_s)).collect();
        grouped_bars(
            &out.join("latency"),
            &format!(
                "Latency on {}: median, p10-p90 whiskers",
                first.machine.cpu()
            ),
            &names,
            &[Series {
                name: format!("seconds per UNet evaluation ({conditions})"),
                values: timed.iter().map(|(_, b)| b.median_s).collect(),
            }],
            Some(&whiskers),
        )?;
        scatter(
            &out.join("latency_vs_gflops"),
            &format!("Latency vs compute ({})", first.machine.cpu()),
            "GFLOPs per UNet evaluation",
            "median latency (s)",
            &timed
                .iter()
                .map(|(r, b)| Point::new(r.config.name.clone(), b.flops as f64 / 1e9, b.median_s))
                .collect::<Vec<_>>(),
        )?;
        // Blocks grouped by level, so configs with different depths share one legend.
        let grouped: Vec<_> = timed.iter().map(|(_, b)| block_groups(b)).collect();
        let mut groups: Vec<((u8, i64), String)> = grouped
            .iter()
            .flatten()
            .map(|(k, n, _)| (*k, n.clone()))
            .collect();
        groups.sort();
        groups.dedup();
        let series: Vec<Series> = groups
            .iter()
            .map(|(key, name)| Series {
                name: name.clone(),
                values: grouped
                    .iter()
                    .map(|g| {
                        g.iter()
                            .filter(|(k, _, _)| k == key)
                            .map(|(_, _, t)| t)
                            .sum()
                    })
                    .collect(),
            })
            .collect();
        stacked_bars(
            &out.join("per_block"),
            "Latency per stage (sums of per-block medians)",
            &format!("seconds ({conditions})"),
            &names,
            &series,
        )?;
    }
    Ok(())
}

/// Full-size GFLOPs against mean FD (± sd with several seeds) for every scored config; on the
/// front when no other config has at most its GFLOPs and its FD, and less of one.
fn pareto_points(rows: &[Row]) -> Vec<Point> {
    let mut points: Vec<Point> = rows
        .iter()
        .filter_map(|r| {
            let runs = r.trained.as_ref()?.as_ref().ok()?.len();
            quality(r, &fd).map(|(m, sd)| Point {
                y_err: (runs > 1).then_some(sd),
                ..Point::new(r.config.name.clone(), r.cost.flops() as f64 / 1e9, m)
            })
        })
        .collect();
    let dominated: Vec<bool> = points
        .iter()
        .map(|p| {
            points
                .iter()
                .any(|q| q.x <= p.x && q.y <= p.y && (q.x < p.x || q.y < p.y))
        })
        .collect();
    for (p, d) in points.iter_mut().zip(dominated) {
        p.on_front = !d;
    }
    points
}

/// The stage of a place, as a sort key in execution order and a label: embeddings and in/out
/// convs, the down levels from the outermost, the mid block, the up levels from the innermost.
fn stage(place: &Place) -> ((u8, i64), String) {
    match (place.direction, place.level) {
        (Some(Direction::Down), Some(l)) => ((1, l as i64), format!("down level {l}")),
        (Some(Direction::Mid), _) => ((2, 0), "mid block".to_string()),
        (Some(Direction::Up), Some(l)) => ((3, -(l as i64)), format!("up level {l}")),
        _ => ((0, 0), "embeddings, in/out".to_string()),
    }
}

/// Per-block medians summed by stage, in execution order.
fn block_groups(b: &unetlab_bench::BenchResult) -> Vec<((u8, i64), String, f64)> {
    let mut out: Vec<((u8, i64), String, f64)> = Vec::new();
    for block in &b.per_block {
        let (key, name) = stage(&block.place);
        match out.iter_mut().find(|(k, _, _)| *k == key) {
            Some(slot) => slot.2 += block.median_s,
            None => out.push((key, name, block.median_s)),
        }
    }
    out
}

/// MACs per resolution level (down and up blocks of a level together), the mid block, and the rest.
fn macs_by_level(r: &Row) -> Vec<(String, unetlab_cost::Macs)> {
    let levels = r.config.spec.levels.len();
    let size = r.cost.conditions.latent_size;
    let mut out: Vec<(String, unetlab_cost::Macs)> = (0..levels)
        .map(|l| (format!("{0}x{0}", size >> l), unetlab_cost::Macs::default()))
        .collect();
    out.push((
        format!("mid {0}x{0}", size >> (levels - 1)),
        Default::default(),
    ));
    out.push(("in/out".into(), Default::default()));
    for p in r.cost.by_place() {
        let slot = match (p.place.direction, p.place.level) {
            (Some(Direction::Mid), _) => levels,
            (Some(_), Some(level)) => level,
            _ => levels + 1,
        };
        out[slot].1.add(&p.macs);
    }
    out
}

fn readme(
    (study, description): (&str, Option<&str>),
    build: &Build,
    rows: &[Row],
    tables: &[(String, Vec<String>)],
    run: &serde_json::Value,
    table_md: &str,
    parallelism: Option<(usize, usize)>,
) -> String {
    let mut s = format!(
        "# Study `{study}`\n\n{}Written by `{}` on {} (build {}, {}, budget `{}`); which build measured each row, and \
         which rows came from the cache, is under Provenance below. Nothing here is edited by hand.\n\n\
         Conventions: one UNet evaluation, batch 1; MACs count conv, linear and attention matmuls (QKᵀ, AV), \
         FLOPs = 2 × MACs; latency is the median of timed runs after warm-up, with p10/p90; the measured \
         effect compares a config with the baseline its `paper:` block names.\n\n## Table\n\n{table_md}\n",
        description.map(|d| format!("{d}.\n\n")).unwrap_or_default(),
        run["command"].as_str().unwrap_or_default(),
        Machine::cpu_of_json(&run["machine"]),
        build.label(),
        run["date_utc"].as_str().unwrap_or_default(),
        run["budget"].as_str().unwrap_or_default(),
    );
    for (title, members) in tables {
        s.push_str(&format!("\n### {title}\n\n"));
        for m in members {
            if let Some(r) = rows
                .iter()
                .find(|r| &r.config.origin == m || &r.config.name == m)
            {
                let claim = r
                    .config
                    .paper
                    .as_ref()
                    .map(|p| p.claim.as_str())
                    .unwrap_or("");
                s.push_str(&format!("- `{}`: {claim}\n", r.config.name));
            }
        }
    }
    s.push_str(&quality_section(rows, parallelism));
    s.push_str(
        "\n## Files\n\n- `table.{md,csv,parquet}`: one row per config.\n- `measurements.{md,csv,parquet}`: every number as \
         (config, hash, measurement, value, unit, conditions).\n- `params_gflops`, `macs_by_level`, `latency`, `latency_vs_gflops`, \
         `per_block`, `pareto`, `claims` (`.svg`, `.png`).\n- `claims.{md,csv,parquet}`: one row per stated claim with its effect, 2σ and verdict.\n- `run.json`: machine, command, date, and under `provenance` the build of every \
         measured row and whether it came from the cache (`mode`: `measured`, or `re-rendered` when every row did).\n\
         - `cache/`: one JSON per measured config and conditions, keyed on the identity of the sources that measure \
         (a change to the kernels or the trainer measures again; a change to tables or plots only re-renders); \
         `train-*.json` are the training runs' `run.json`.\n",
    );
    s
}

/// How the quality columns were made, their noise floor, and the Pareto front.
fn quality_section(rows: &[Row], parallelism: Option<(usize, usize)>) -> String {
    let runs: Vec<&RunSummary> = rows
        .iter()
        .flat_map(|r| r.trained.iter().flatten().flatten())
        .map(|run| &run.summary)
        .collect();
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut s = format!(
        "\n## Quality (proxy training)\n\nEach config's proxy (same structure and design choices at a small width, 32x32 `shapes` \
         images, see `unetlab_train::proxy`) was trained by `unetlab train` with one recipe: {}. Columns: `proxy val loss` \
         (EMA weights, fixed validation images, timesteps and noise), `FD` (Fréchet distance of evaluator features, generated \
         vs real, lower is better), `text alignment` (generated images whose every attribute the evaluator reads matches the \
         caption) and `attribute alignment` (the fraction of stated attributes it finds). Means over {} seed(s). \
         `proxy steps/s` is training throughput with {}.\n\n",
        train_conditions(first),
        rows.iter()
            .filter_map(|r| r.trained.as_ref()?.as_ref().ok().map(Vec::len))
            .max()
            .unwrap_or(0),
        parallelism.map_or("the runs cached from an earlier sweep".into(), |(jobs, threads)| {
            format!("{jobs} run(s) at a time, {threads} thread(s) each")
        }),
    );
    if let Some(encoder) = &first.frozen_text_encoder {
        s.push_str(&format!(
            "Every proxy trained its UNet alone under one frozen text encoder, that of run `{}` \
             (`--frozen-text-encoder`): the columns compare UNets under the same text encoder.\n\n",
            &encoder[..encoder.len().min(16)]
        ));
    }
    if let Some(m) = &first.metrics {
        s.push_str(&format!(
            "Noise floor: real validation images against as many other real ones score FD {:.1}. The evaluator \
             reads {:.1} % of attributes right on real validation images ({:.1} % of images entirely right), which bounds \
             text alignment from above.\n\n",
            m.real_fd,
            100.0 * m.evaluator_accuracy.attribute,
            100.0 * m.evaluator_accuracy.exact
        ));
    }
    let front: Vec<String> = pareto_points(rows)
        .into_iter()
        .filter(|p| p.on_front)
        .map(|p| format!("`{}`", p.name))
        .collect();
    if !front.is_empty() {
        s.push_str(&format!(
            "Pareto front of full-size GFLOPs against proxy FD (`pareto.png`: the line, marked (front) in the key): {}.\n\n",
            front.join(", ")
        ));
    }
    for r in rows {
        if let Some(Err(e)) = &r.trained {
            s.push_str(&format!("- `{}`: training FAILED: {e}\n", r.config.name));
        }
    }
    s.push_str("Sample grids (the first 32 scored captions, EMA weights, first seed): `samples/<config>.png`.\n");
    s
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}
