//! The files of a search folder: candidates.{csv,parquet}, front/*.yaml, plots, the predictor's
//! check, run.json and README.md.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame};
use serde_json::{json, Value};
use unetlab_bench::Machine;
use unetlab_provenance::Build;
use unetlab_report::{cloud, to_markdown, write_csv, write_parquet, write_text, Point};
use unetlab_search::{Evaluated, Exploration, Metric, Objective, SearchFile};

use super::latency::{CheckRow, Stage};
use super::quality::{final_objectives, finalists, metric, pooled_sd, Finalist, Quality};
use super::{candidate_name, Reference};
use crate::ablate::Budget;

/// Front members labelled in the Pareto plot (evenly spaced along the front when it is longer).
const LABELLED_FRONT: usize = 16;
/// Unlabelled candidates drawn in a plot (an even subsample of more).
const BACKGROUND_POINTS: usize = 6000;

/// Counting speed, over every walk of the search.
pub struct Speed {
    /// Genomes built (each once).
    pub genomes_counted: usize,
    /// Of those, distinct valid configs counted by the cost interpreter.
    pub configs_counted: usize,
    /// Seconds spent building and counting.
    pub counting_seconds: f64,
    /// Wall time of the last walk (re-predicting latency from the final table; counts are
    /// remembered from earlier walks).
    pub walk_seconds: f64,
}

/// What the search found, for the writers.
pub struct Found<'a> {
    /// The last exploration.
    pub exploration: &'a Exploration,
    /// How fast the space was counted.
    pub speed: Speed,
    /// The base and compare configs.
    pub references: &'a [Reference],
    /// The latency stage, if the file has one.
    pub stage: Option<&'a Stage<'a>>,
    /// The predictor's check.
    pub check: Option<&'a [CheckRow]>,
    /// The quality stage's rungs.
    pub quality: Option<&'a Quality>,
}

/// Writes every output of the search.
pub fn write(
    out: &Path,
    file: &SearchFile,
    found: &Found<'_>,
    (budget, machine, build, started_utc): (Budget, &Machine, &Build, &str),
) -> Result<()> {
    let front = found.exploration.front();
    let measured = measured_latencies(found);
    let mut table = candidates_frame(file, found, &front, &measured)?;
    write_csv(&mut table, &out.join("candidates.csv"))?;
    write_parquet(&mut table, &out.join("candidates.parquet"))?;
    let front_names = write_front(out, file, found.exploration, &front)?;
    pareto_plot(out, file, found, &front)?;
    let check = found.check.unwrap_or(&[]);
    if let Some(stage) = found.stage {
        let mut frame = predictor_frame(stage, check)?;
        write_csv(&mut frame, &out.join("predictor.csv"))?;
        write_parquet(&mut frame, &out.join("predictor.parquet"))?;
        predictor_plot(out, stage, check)?;
    }
    let finals = match (found.quality, &file.quality) {
        (Some(q), Some(stage)) => {
            let trained = trained_entries(file, found);
            let finals = finalists(file, stage, &trained, q);
            quality_plot(out, file, stage, &finals)?;
            Some(finals)
        }
        _ => None,
    };
    let run = run_json(
        file,
        found,
        (&front_names, finals.as_deref()),
        (budget, machine, build, started_utc),
    );
    write_text(&out.join("run.json"), &serde_json::to_string_pretty(&run)?)?;
    write_text(
        &out.join("README.md"),
        &readme(file, found, (&front, finals.as_deref()), &run, build),
    )?;
    Ok(())
}

/// Measured whole-forward medians by config hash (probes and checks).
fn measured_latencies(found: &Found<'_>) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    if let Some(stage) = found.stage {
        for p in &stage.probes {
            m.insert(p.hash.clone(), p.result.median_s);
        }
    }
    for c in found.check.unwrap_or(&[]) {
        m.insert(c.hash.clone(), c.result.median_s);
    }
    m
}

/// One row per distinct candidate, then the references.
fn candidates_frame(
    file: &SearchFile,
    found: &Found<'_>,
    front: &[usize],
    measured: &HashMap<String, f64>,
) -> Result<DataFrame> {
    let candidates = &found.exploration.candidates;
    let rows: Vec<(String, &str, &Evaluated)> = candidates
        .iter()
        .map(|e| (candidate_name(file, &e.candidate.hash), "candidate", e))
        .chain(
            found
                .references
                .iter()
                .map(|r| (r.config.name.clone(), "reference", &r.evaluated)),
        )
        .collect();
    let n = rows.len();
    let mut columns = vec![
        Column::new(
            "name".into(),
            rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ),
        Column::new("role".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
        Column::new(
            "hash".into(),
            rows.iter()
                .map(|r| r.2.candidate.hash.as_str())
                .collect::<Vec<_>>(),
        ),
    ];
    for (a, axis) in file.space.axes.iter().enumerate() {
        columns.push(Column::new(
            axis.name.as_str().into(),
            rows.iter()
                .map(|r| {
                    r.2.candidate
                        .genome
                        .get(a)
                        .map(|&g| axis.options[g].label.clone())
                })
                .collect::<Vec<Option<String>>>(),
        ));
    }
    for m in Metric::ALL {
        let values: Vec<Option<f64>> = rows.iter().map(|r| r.2.candidate.values.get(m)).collect();
        if m.needs_training() && values.iter().all(Option::is_none) {
            continue;
        }
        if m == Metric::LatencyS {
            let predicted: Vec<Option<f64>> = rows
                .iter()
                .map(|r| r.2.prediction.map(|p| p.seconds))
                .collect();
            columns.push(Column::new("latency_predicted_s".into(), predicted));
        } else {
            columns.push(Column::new(m.name().into(), values));
        }
    }
    columns.push(Column::new(
        "latency_fitted_blocks".into(),
        rows.iter()
            .map(|r| r.2.prediction.map(|p| p.fitted_blocks as u32))
            .collect::<Vec<Option<u32>>>(),
    ));
    columns.push(Column::new(
        "latency_measured_s".into(),
        rows.iter()
            .map(|r| measured.get(&r.2.candidate.hash).copied())
            .collect::<Vec<Option<f64>>>(),
    ));
    if let Some(q) = found.quality {
        let reached: Vec<Option<(usize, &unetlab_train::RunSummary)>> = rows
            .iter()
            .map(|r| q.highest(&r.2.candidate.hash))
            .collect();
        columns.push(Column::new(
            "quality_rung".into(),
            reached
                .iter()
                .map(|h| h.map(|(r, _)| r as u32 + 1))
                .collect::<Vec<Option<u32>>>(),
        ));
        columns.push(Column::new(
            "trained_steps".into(),
            reached
                .iter()
                .map(|h| h.map(|(_, s)| s.steps))
                .collect::<Vec<Option<u64>>>(),
        ));
    }
    columns.push(Column::new(
        "feasible".into(),
        rows.iter()
            .map(|r| r.2.fitness.feasible())
            .collect::<Vec<bool>>(),
    ));
    columns.push(Column::new(
        "violation".into(),
        rows.iter()
            .map(|r| r.2.fitness.violation)
            .collect::<Vec<f64>>(),
    ));
    columns.push(Column::new(
        "on_front".into(),
        (0..n).map(|i| front.contains(&i)).collect::<Vec<bool>>(),
    ));
    Ok(DataFrame::new(n, columns)?)
}

/// Writes `front/<name>.yaml` for every front member (explicit configs) and removes the YAML
/// files of an earlier front; returns the names in front order.
fn write_front(
    out: &Path,
    file: &SearchFile,
    exploration: &Exploration,
    front: &[usize],
) -> Result<Vec<String>> {
    let dir = out.join("front");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = Vec::new();
    for &i in front {
        let e = &exploration.candidates[i];
        let name = candidate_name(file, &e.candidate.hash);
        let config = file
            .space
            .config(&e.candidate.genome, &name)
            .map_err(|err| anyhow::anyhow!("a front member no longer builds: {err}"))?;
        let mut text = format!(
            "# Found by `cargo xtask search {}` (front of {}).\n",
            file.origin.display(),
            file.name
        );
        for (axis, label) in file.space.describe(&e.candidate.genome) {
            text.push_str(&format!("#   {axis} = {label}\n"));
        }
        for o in &file.objectives {
            if let Some(v) = e.candidate.values.get(o.metric) {
                text.push_str(&format!(
                    "#   {} = {}\n",
                    o.metric,
                    format_value(o.metric, v)
                ));
            }
        }
        text.push_str(&unetlab_spec::explicit::explicit_yaml(&config));
        write_text(&dir.join(format!("{name}.yaml")), &text)?;
        names.push(name);
    }
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if path.extension().is_some_and(|e| e == "yaml") && !names.iter().any(|n| n == stem) {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
    }
    Ok(names)
}

/// A value in its metric's unit, rounded for reading.
fn format_value(m: Metric, v: f64) -> String {
    match m {
        Metric::Params => format!("{:.2} M", v / 1e6),
        Metric::ResBlocks | Metric::SelfAttentionBlocks | Metric::CrossAttentionBlocks => {
            format!("{v}")
        }
        Metric::LatencyS => format!("{v:.3} s"),
        Metric::ActivationMib => format!("{v:.1} MiB"),
        _ => format!("{v:.3}"),
    }
}

/// The metric on a plot axis and its label.
fn axis_label(m: Metric, file: &SearchFile) -> String {
    match m {
        Metric::Params => "parameters (M)".into(),
        Metric::LatencyS => "predicted latency (s)".into(),
        m if m.name().starts_with("gmacs") => {
            format!("{} (G MACs at {1}x{1})", m.name(), file.latent_size)
        }
        m => m.name().into(),
    }
}

fn plotted(m: Metric, v: f64) -> f64 {
    if m == Metric::Params {
        v / 1e6
    } else {
        v
    }
}

/// The two metrics of the Pareto plot: the first two cost objectives, or the one objective
/// against G MACs (params when G MACs is the objective).
fn plot_axes(file: &SearchFile) -> (Metric, Metric) {
    let cost: Vec<Objective> = file.cost_objectives();
    match cost.as_slice() {
        [a, b, ..] => (a.metric, b.metric),
        [a] if a.metric == Metric::Gmacs => (Metric::Gmacs, Metric::Params),
        [a] => (Metric::Gmacs, a.metric),
        [] => (Metric::Gmacs, Metric::Params),
    }
}

fn pareto_plot(out: &Path, file: &SearchFile, found: &Found<'_>, front: &[usize]) -> Result<()> {
    let (mx, my) = plot_axes(file);
    let candidates = &found.exploration.candidates;
    let xy = |e: &Evaluated| {
        Some((
            plotted(mx, e.candidate.values.get(mx)?),
            plotted(my, e.candidate.values.get(my)?),
        ))
    };
    let mut ordered: Vec<usize> = front.to_vec();
    ordered.sort_by(|&a, &b| {
        let (pa, pb) = (xy(&candidates[a]), xy(&candidates[b]));
        pa.map(|p| p.0)
            .unwrap_or(f64::NAN)
            .total_cmp(&pb.map(|p| p.0).unwrap_or(f64::NAN))
    });
    // Front members with equal values share one marker.
    let mut groups: Vec<(usize, usize, (f64, f64))> = Vec::new();
    for &i in &ordered {
        let Some(p) = xy(&candidates[i]) else {
            continue;
        };
        match groups.last_mut() {
            Some(g) if g.2 == p => g.1 += 1,
            _ => groups.push((i, 1, p)),
        }
    }
    let shown_groups: Vec<&(usize, usize, (f64, f64))> = if groups.len() <= LABELLED_FRONT {
        groups.iter().collect()
    } else {
        (0..LABELLED_FRONT)
            .map(|k| &groups[k * (groups.len() - 1) / (LABELLED_FRONT - 1)])
            .collect()
    };
    let labelled: Vec<usize> = ordered
        .iter()
        .copied()
        .filter(|&i| xy(&candidates[i]).is_some_and(|p| shown_groups.iter().any(|g| g.2 == p)))
        .collect();
    // The front is a line in this plane only when both axes are objectives to minimise or
    // maximise; a `near` objective's front is marked in the key instead.
    let monotone = [mx, my].iter().all(|&m| {
        file.objectives
            .iter()
            .any(|o| o.metric == m && !matches!(o.goal, unetlab_search::Goal::Near(_)))
    });
    let mut points: Vec<Point> = shown_groups
        .iter()
        .map(|&&(i, n, (x, y))| {
            let name = candidate_name(file, &candidates[i].candidate.hash);
            let name = match (n > 1, monotone) {
                (true, true) => format!("{name} (+{} with equal values)", n - 1),
                (true, false) => format!("{name} (+{} with equal values), on the front", n - 1),
                (false, true) => name,
                (false, false) => format!("{name}, on the front"),
            };
            Point {
                on_front: monotone,
                ..Point::new(name, x, y)
            }
        })
        .collect();
    // Feasible references only: one far outside the constraints would stretch the axes (the
    // README names it).
    points.extend(
        found
            .references
            .iter()
            .filter(|r| r.evaluated.fitness.feasible())
            .filter_map(|r| {
                let (x, y) = xy(&r.evaluated)?;
                Some(Point::new(r.config.name.clone(), x, y))
            }),
    );
    if let (Some(tx), Some(ty)) = (target(file, mx), target(file, my)) {
        points.push(Point::new(
            "target (objectives' near)",
            plotted(mx, tx),
            plotted(my, ty),
        ));
    }
    let others: Vec<(f64, f64)> = (0..candidates.len())
        .filter(|i| candidates[*i].fitness.feasible() && !labelled.contains(i))
        .filter_map(|i| xy(&candidates[i]))
        .collect();
    let stride = others.len().div_ceil(BACKGROUND_POINTS).max(1);
    let shown = if stride > 1 {
        format!("; 1 in {stride} shown")
    } else {
        String::new()
    };
    let background: Vec<(f64, f64)> = others.into_iter().step_by(stride).collect();
    if points.is_empty() {
        return Ok(());
    }
    cloud(
        &out.join("pareto"),
        (
            &format!(
                "{}: front (line) over {} feasible candidates (grey{shown})",
                file.name,
                found.exploration.feasible()
            ),
            &axis_label(mx, file),
            &axis_label(my, file),
        ),
        &background,
        &points,
        false,
    )?;
    Ok(())
}

/// The target of a `near` objective on `m`, if there is one.
fn target(file: &SearchFile, m: Metric) -> Option<f64> {
    file.objectives.iter().find_map(|o| match o.goal {
        unetlab_search::Goal::Near(t) if o.metric == m => Some(t),
        _ => None,
    })
}

fn predictor_frame(stage: &Stage<'_>, check: &[CheckRow]) -> Result<DataFrame> {
    let predictor = stage.table.predictor();
    let n = check.len();
    Ok(DataFrame::new(
        n,
        vec![
            Column::new(
                "name".into(),
                check.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "hash".into(),
                check.iter().map(|c| c.hash.as_str()).collect::<Vec<_>>(),
            ),
            Column::new(
                "on_front".into(),
                check.iter().map(|c| c.on_front).collect::<Vec<_>>(),
            ),
            Column::new(
                "predicted_s".into(),
                check.iter().map(|c| c.predicted_s).collect::<Vec<_>>(),
            ),
            Column::new(
                "measured_s".into(),
                check.iter().map(|c| c.result.median_s).collect::<Vec<_>>(),
            ),
            Column::new(
                "relative_error".into(),
                check
                    .iter()
                    .map(CheckRow::relative_error)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "fitted_blocks".into(),
                check
                    .iter()
                    .map(|c| c.fitted_blocks as u32)
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "calibration_intercept_s".into(),
                vec![predictor.calibration().0; n],
            ),
            Column::new(
                "calibration_slope".into(),
                vec![predictor.calibration().1; n],
            ),
            Column::new(
                "build".into(),
                check
                    .iter()
                    .map(|c| c.result.provenance.build.label())
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "source".into(),
                check
                    .iter()
                    .map(|c| if c.cached { "cache" } else { "measured" })
                    .collect::<Vec<_>>(),
            ),
        ],
    )?)
}

fn predictor_plot(out: &Path, stage: &Stage<'_>, check: &[CheckRow]) -> Result<()> {
    if check.is_empty() {
        return Ok(());
    }
    let points: Vec<Point> = check
        .iter()
        .map(|c| Point::new(c.name.clone(), c.result.median_s, c.predicted_s))
        .collect();
    let (median, p90) = error_summary(check);
    cloud(
        &out.join("predictor"),
        (
            &format!(
                "Per-block predictor on {} configs it did not see: median |error| {:.1} %, p90 {:.1} % ({})",
                check.len(),
                100.0 * median,
                100.0 * p90,
                stage.machine.cpu()
            ),
            "measured latency (s, whole forward, median)",
            "predicted latency (s)",
        ),
        &[],
        &points,
        true,
    )?;
    Ok(())
}

/// Median and p90 of |relative error| (nearest rank).
fn error_summary(check: &[CheckRow]) -> (f64, f64) {
    let mut e: Vec<f64> = check.iter().map(|c| c.relative_error().abs()).collect();
    e.sort_by(f64::total_cmp);
    if e.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| e[((q * e.len() as f64).ceil() as usize).clamp(1, e.len()) - 1];
    (at(0.5), at(0.9))
}

fn run_json(
    file: &SearchFile,
    found: &Found<'_>,
    (front_names, finals): (&[String], Option<&[Finalist]>),
    (budget, machine, build, started_utc): (Budget, &Machine, &Build, &str),
) -> Value {
    let x = found.exploration;
    let speed = &found.speed;
    let per_minute = |n: usize| n as f64 / speed.counting_seconds.max(1e-9) * 60.0;
    let references: Vec<Value> = found
        .references
        .iter()
        .map(|r| {
            let dominating = x.dominating(&r.evaluated.fitness);
            json!({
                "name": r.config.name,
                "hash": r.config.hash(),
                "values": values_json(&r.evaluated.candidate.values),
                "feasible": r.evaluated.fitness.feasible(),
                "dominated_by": dominating.len(),
                "dominated_by_examples": dominating.iter().take(5)
                    .map(|&i| candidate_name(file, &x.candidates[i].candidate.hash))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let latency = found.stage.map(|stage| {
        let check = found.check.unwrap_or(&[]);
        let (median, p90) = error_summary(check);
        json!({
            "device": stage.settings.device,
            "dtype": stage.settings.dtype,
            "latent_size": stage.timing.latent_size,
            "warmup": stage.timing.warmup,
            "runs": stage.timing.runs,
            "threads": stage.machine.threads,
            "table_entries": stage.table.entries.len(),
            "calibration": {
                "intercept_s": stage.table.predictor().calibration().0,
                "slope": stage.table.predictor().calibration().1,
            },
            "probes": stage.probes.iter().map(|p| json!({
                "name": p.name, "hash": p.hash, "median_s": p.result.median_s,
                "build": p.result.provenance.build.label(),
                "measured_utc": p.result.provenance.measured_utc,
                "source": if p.cached { "cache" } else { "measured" },
            })).collect::<Vec<_>>(),
            "check": {
                "configs": check.len(),
                "fully_from_table": check.iter().filter(|c| c.fitted_blocks == 0).count(),
                "median_abs_relative_error": median,
                "p90_abs_relative_error": p90,
                "max_abs_relative_error": check.iter().map(|c| c.relative_error().abs()).fold(0.0, f64::max),
            },
        })
    });
    json!({
        "search": file.name,
        "file": file.origin.display().to_string(),
        "command": command_line(),
        "budget": budget.name(),
        "date_utc": started_utc,
        "commit": build.commit,
        "build": build.label(),
        "machine": machine,
        "counting": {"latent_size": file.latent_size, "tokens": file.tokens, "batch": 1},
        "strategy": format!("{:?}", file.strategy),
        "space_size": file.space.size().to_string(),
        "genomes_evaluated": x.evaluated,
        "distinct_configs_counted": x.candidates.len(),
        "duplicates": x.duplicates,
        "skipped": x.skipped,
        "rejected_before_counting": x.rejected,
        "feasible": x.feasible(),
        "front": front_names,
        "counting": {
            "genomes_built": speed.genomes_counted,
            "configs_counted": speed.configs_counted,
            "seconds": speed.counting_seconds,
            "genomes_per_minute": per_minute(speed.genomes_counted),
            "threads": rayon_threads(),
        },
        "last_walk_seconds": speed.walk_seconds,
        "latency": latency,
        "quality": quality_json(file, found, finals),
        "references": references,
    })
}

fn values_json(values: &unetlab_search::Values) -> Value {
    let mut m = serde_json::Map::new();
    for metric in Metric::ALL {
        if let Some(v) = values.get(metric) {
            m.insert(metric.name().into(), json!(v));
        }
    }
    Value::Object(m)
}

fn readme(
    file: &SearchFile,
    found: &Found<'_>,
    (front, finals): (&[usize], Option<&[Finalist]>),
    run: &Value,
    build: &Build,
) -> String {
    let x = found.exploration;
    let mut s = format!("# Search: {}\n\n", file.name);
    if let Some(d) = &file.description {
        s.push_str(&format!("{}\n\n", d.trim()));
    }
    s.push_str(&format!(
        "Produced by `{}` at commit `{}` on {} ({} threads), {}. Every file here is written by that \
         command; measurements are cached in `cache/` and carry the build that made them.\n\n",
        run["command"].as_str().unwrap_or(""),
        build.label(),
        Machine::cpu_of_json(&run["machine"]),
        run["machine"]["threads"],
        run["date_utc"].as_str().unwrap_or("")
    ));
    s.push_str(&provenance_section(found));
    s.push_str(&space_section(file));
    let counting = &run["counting"];
    let speed = &found.speed;
    let rewalk = if found.stage.is_some() {
        format!(
            " The last walk, re-predicting every candidate's latency from the final table (counts \
             remembered), took {:.1} s.",
            speed.walk_seconds
        )
    } else {
        String::new()
    };
    s.push_str(&format!(
        "## What the walk found\n\n- The {} strategy evaluated {} genomes. Building and validating \
         {} genomes and counting the {} within the block-count constraints (the cost interpreter, at \
         full size) took {:.1} s on {} threads: {:.0} genomes per minute.{rewalk}\n- {} distinct \
         configs counted, {} duplicates of an earlier genome's config, {} invalid combinations, {} \
         rejected by a block-count constraint before counting.\n- **{} feasible**, **{} on the \
         front**.\n",
        run["strategy"].as_str().unwrap_or(""),
        x.evaluated,
        speed.genomes_counted,
        speed.configs_counted,
        speed.counting_seconds,
        counting["threads"],
        counting["genomes_per_minute"].as_f64().unwrap_or(0.0),
        x.candidates.len(),
        x.duplicates,
        x.skipped.values().sum::<usize>(),
        x.rejected.values().sum::<usize>(),
        x.feasible(),
        front.len()
    ));
    for (title, reasons) in [("Invalid", &x.skipped), ("Rejected", &x.rejected)] {
        if !reasons.is_empty() {
            let mut top: Vec<(&String, &usize)> = reasons.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            s.push_str(&format!("\n{title}, by reason (most frequent first):\n\n"));
            for (reason, n) in top.iter().take(10) {
                s.push_str(&format!("- {n} × {reason}\n"));
            }
            if top.len() > 10 {
                s.push_str(&format!("- ... and {} other reasons\n", top.len() - 10));
            }
        }
    }
    s.push_str(&references_section(file, found));
    s.push_str(&front_section(file, found, front));
    s.push_str(&latency_section(found, run));
    s.push_str(&quality_section(file, found, finals));
    s.push_str(
        "\n## Files\n\n- `candidates.{csv,parquet}`: one row per distinct config (then the references): \
         hash, the option of each axis, every count, predicted and (where measured) measured latency, \
         feasible, violation, on_front.\n- `front/*.yaml`: the front as explicit configs, ready for \
         `cargo xtask ablate`, `unetlab bench` and `unetlab export`.\n- `pareto.{svg,png}`: the front \
         over every feasible candidate, with the references.\n- `predictor.{csv,parquet,svg,png}`: the \
         latency predictor against whole-forward benchmarks (when the file measures latency).\n\
         - `run.json`: command, machine, build, counts, the latency probes and the check.\n",
    );
    s
}

/// Which builds measured what this README shows, and whether it came from the cache: the
/// counts are this build's; latency and training carry their own.
fn provenance_section(found: &Found<'_>) -> String {
    let mut groups: std::collections::BTreeMap<(&str, String, &str), usize> =
        std::collections::BTreeMap::new();
    let mut add = |kind: &'static str, p: &unetlab_provenance::Provenance, cached: bool| {
        let source = if cached {
            "read from the cache"
        } else {
            "measured by this run"
        };
        *groups.entry((kind, p.build.label(), source)).or_default() += 1;
    };
    if let Some(stage) = found.stage {
        for p in &stage.probes {
            add("latency probes", &p.result.provenance, p.cached);
        }
    }
    for c in found.check.unwrap_or(&[]) {
        add("latency checks", &c.result.provenance, c.cached);
    }
    if let Some(q) = found.quality {
        for run in q.rungs.iter().flat_map(|r| &r.runs) {
            for summary in run.2.iter().flatten() {
                add(
                    "training runs",
                    &summary.provenance,
                    q.cached.contains(&summary.run_hash),
                );
            }
        }
    }
    if groups.is_empty() {
        return "Every number here is a count, computed by this build.\n\n".into();
    }
    let lines: Vec<String> = groups
        .iter()
        .map(|((kind, build, source), n)| format!("{n} {kind} by build `{build}` ({source})"))
        .collect();
    format!(
        "Counts are computed by this build. Measured: {}. Each row's build and time are in \
         `run.json`.\n\n",
        lines.join("; ")
    )
}

fn space_section(file: &SearchFile) -> String {
    let mut s = format!(
        "## The space\n\nBase config: `{}`. Counted at latent {1}x{1}, batch 1, {2} tokens. {3} \
         combinations:\n\n",
        file.space.base.origin,
        file.latent_size,
        file.tokens,
        file.space.size()
    );
    for axis in &file.space.axes {
        let labels: Vec<&str> = axis.options.iter().map(|o| o.label.as_str()).collect();
        s.push_str(&format!("- `{}`: {}\n", axis.name, labels.join(" · ")));
    }
    s.push_str("\nConstraints: ");
    if file.constraints.is_empty() {
        s.push_str("none");
    }
    let constraints: Vec<String> = file
        .constraints
        .iter()
        .map(|(m, b)| {
            let (lo, hi) = b.interval();
            format!(
                "{m} in [{}, {}]",
                format_value(*m, lo),
                format_value(*m, hi)
            )
        })
        .collect();
    s.push_str(&constraints.join(", "));
    let objectives: Vec<String> = file.objectives.iter().map(|o| o.to_string()).collect();
    s.push_str(&format!(". Objectives: {}.\n\n", objectives.join(", ")));
    s
}

fn references_section(file: &SearchFile, found: &Found<'_>) -> String {
    if found.references.is_empty() {
        return String::new();
    }
    let x = found.exploration;
    let mut s = String::from("\n## The references\n\n");
    for r in found.references {
        let e = &r.evaluated;
        let shown: Vec<String> = file
            .cost_objectives()
            .iter()
            .map(|o| o.metric)
            .chain(file.constraints.iter().map(|(m, _)| *m))
            .fold(Vec::new(), |mut v, m| {
                if !v.contains(&m) {
                    v.push(m);
                }
                v
            })
            .into_iter()
            .filter_map(|m| {
                Some(format!(
                    "{m} {}",
                    format_value(m, e.candidate.values.get(m)?)
                ))
            })
            .collect();
        let dominating = x.dominating(&e.fitness);
        let verdict = if !e.fitness.feasible() {
            "breaks the constraints".to_string()
        } else if dominating.is_empty() {
            "feasible, and no candidate dominates it".to_string()
        } else {
            format!(
                "feasible, and **dominated by {} candidates** (e.g. `{}`)",
                dominating.len(),
                candidate_name(file, &x.candidates[dominating[0]].candidate.hash)
            )
        };
        let in_space = x
            .candidates
            .iter()
            .any(|c| c.candidate.hash == e.candidate.hash);
        s.push_str(&format!(
            "- `{}`{}: {}; {verdict}.\n",
            r.config.name,
            if in_space {
                " (also found by the walk)"
            } else {
                ""
            },
            shown.join(", ")
        ));
    }
    s
}

fn front_section(file: &SearchFile, found: &Found<'_>, front: &[usize]) -> String {
    if front.is_empty() {
        return "\n## The front\n\nNo feasible candidate.\n".into();
    }
    let x = found.exploration;
    let mut header = vec!["config".to_string()];
    header.extend(file.space.axes.iter().map(|a| a.name.clone()));
    let metrics: Vec<Metric> = file
        .cost_objectives()
        .iter()
        .map(|o| o.metric)
        .chain([Metric::Params, Metric::Gmacs])
        .fold(Vec::new(), |mut v, m| {
            if !v.contains(&m) {
                v.push(m);
            }
            v
        });
    header.extend(metrics.iter().map(|m| m.name().to_string()));
    let mut columns: Vec<Vec<String>> = vec![Vec::new(); header.len()];
    for &i in front.iter().take(40) {
        let c = &x.candidates[i].candidate;
        let mut row = vec![format!("`{}`", candidate_name(file, &c.hash))];
        row.extend(
            file.space
                .describe(&c.genome)
                .into_iter()
                .map(|(_, l)| l.to_string()),
        );
        row.extend(
            metrics
                .iter()
                .map(|&m| c.values.get(m).map_or("–".into(), |v| format_value(m, v))),
        );
        for (col, v) in columns.iter_mut().zip(row) {
            col.push(v);
        }
    }
    let frame = DataFrame::new(
        columns[0].len(),
        header
            .iter()
            .zip(columns)
            .map(|(h, c)| Column::new(h.as_str().into(), c))
            .collect(),
    );
    let table = frame.map_or_else(|e| format!("(table failed: {e})"), |f| to_markdown(&f));
    let more = if front.len() > 40 {
        format!(
            "\nThe first 40 of {} shown; all are in `front/` and `candidates.csv`.\n",
            front.len()
        )
    } else {
        String::new()
    };
    format!("\n## The front\n\n{table}{more}")
}

fn latency_section(found: &Found<'_>, run: &Value) -> String {
    let Some(stage) = found.stage else {
        return String::new();
    };
    let l = &run["latency"];
    let check = &l["check"];
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("–".into(), |v| format!("{:.1} %", 100.0 * v))
    };
    let (intercept, slope) = stage.table.predictor().calibration();
    let mut s = format!(
        "\n## Latency\n\nOne forward, batch 1, latent {0}x{0}, {1}, {2}, {3} threads, {4} warm-up + {5} \
         runs (median). The table holds {6} block signatures from {7} probe configs measured block by \
         block; a prediction is {8:+.4} s + {9:.3} × the sum of the blocks' medians (the least-squares \
         line from summed blocks to whole forwards over the probes: the time between blocks, and what \
         timing every block adds); a block no probe ran is estimated from the table's blocks of its \
         kind by a line in MACs.\n\n",
        stage.timing.latent_size,
        stage.settings.dtype,
        stage.settings.device,
        stage.machine.threads,
        stage.timing.warmup,
        stage.timing.runs,
        stage.table.entries.len(),
        stage.probes.len(),
        intercept,
        slope
    );
    s.push_str(&format!(
        "**Check** on {} configs the table did not see ({} predicted wholly from the table), against \
         whole-forward benchmarks: median |error| {}, p90 {}, max {} (`predictor.png`).\n",
        check["configs"],
        check["fully_from_table"],
        pct(&check["median_abs_relative_error"]),
        pct(&check["p90_abs_relative_error"]),
        pct(&check["max_abs_relative_error"])
    ));
    s
}

/// Every trained config (candidates, then references) with its name and whether it is a
/// reference; a candidate that is a reference's network appears once, as the reference.
fn trained_entries<'a>(file: &SearchFile, found: &Found<'a>) -> Vec<(String, bool, &'a Evaluated)> {
    let is_reference = |hash: &str| {
        found
            .references
            .iter()
            .any(|r| r.evaluated.candidate.hash == hash)
    };
    found
        .exploration
        .candidates
        .iter()
        .filter(|e| !is_reference(&e.candidate.hash))
        .map(|e| (candidate_name(file, &e.candidate.hash), false, e))
        .chain(
            found
                .references
                .iter()
                .map(|r| (r.config.name.clone(), true, &r.evaluated)),
        )
        .collect()
}

fn quality_plot(
    out: &Path,
    file: &SearchFile,
    stage: &unetlab_search::QualityStage,
    finals: &[Finalist],
) -> Result<()> {
    let objectives = final_objectives(file, stage);
    let (Some(px), Some(py)) = (objectives.first(), objectives.get(1)) else {
        return Ok(());
    };
    let points: Vec<Point> = finals
        .iter()
        .filter_map(|f| {
            let x = plotted(px.metric, f.values.get(px.metric)?);
            let y = f.values.get(py.metric)?;
            let name = if f.reference {
                format!("{} (reference)", f.name)
            } else {
                f.name.clone()
            };
            Some(Point {
                on_front: f.on_front,
                y_err: f.sd.get(py.metric),
                ..Point::new(name, x, y)
            })
        })
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let x_label = if px.metric == Metric::LatencyS {
        "latency (s; predicted, the references' measured)".to_string()
    } else {
        axis_label(px.metric, file)
    };
    let better = if py.metric.higher_is_better() {
        "higher"
    } else {
        "lower"
    };
    cloud(
        &out.join("quality"),
        (
            &format!(
                "{}: proxy quality against {} (last rung, mean ± 1 sd over seeds)",
                file.name, px.metric
            ),
            &x_label,
            &format!("{} (proxy; {better} is better)", py.metric),
        ),
        &[],
        &points,
        false,
    )?;
    Ok(())
}

fn quality_json(file: &SearchFile, found: &Found<'_>, finals: Option<&[Finalist]>) -> Value {
    let (Some(q), Some(finals), Some(stage)) = (found.quality, finals, &file.quality) else {
        return Value::Null;
    };
    let run = |s: &unetlab_train::RunSummary| {
        json!({
            "seed": s.recipe.seed,
            "steps": s.steps,
            "validation_loss": s.validation_loss,
            "fd": metric(s, Metric::Fd),
            "attribute_alignment": metric(s, Metric::AttributeAlignment),
            "text_alignment": metric(s, Metric::TextAlignment),
            "run_hash": s.run_hash,
            "build": s.provenance.build.label(),
            "measured_utc": s.provenance.measured_utc,
        })
    };
    let rung = |r: &super::quality::Rung| -> Vec<Value> {
        r.runs
            .iter()
            .map(|(name, hash, runs)| match runs {
                Ok(runs) => json!({
                    "name": name,
                    "hash": hash,
                    "seeds": runs.iter().map(run).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"name": name, "hash": hash, "error": e}),
            })
            .collect()
    };
    json!({
        "metric": q.metric.name(),
        "final_objectives": final_objectives(file, stage).iter().map(|o| o.to_string()).collect::<Vec<_>>(),
        "rungs": q.rungs.iter().map(|r| json!({"steps": r.steps, "runs": rung(r)})).collect::<Vec<_>>(),
        "pooled_seed_sd": Metric::ALL.into_iter().filter(|m| m.needs_training())
            .filter_map(|m| Some((m.name().to_string(), json!(pooled_sd(finals, m)?))))
            .collect::<serde_json::Map<_, _>>(),
        "finalists": finals.iter().map(|f| json!({
            "name": f.name,
            "hash": f.hash,
            "reference": f.reference,
            "seeds": f.seeds,
            "feasible": f.fitness.feasible(),
            "on_front": f.on_front,
            "values": values_json(&f.values),
            "sd": values_json(&f.sd),
        })).collect::<Vec<_>>(),
    })
}

/// A finalist's quality value with its seed spread: `1122.3 ± 45.1`.
fn with_sd(f: &Finalist, m: Metric) -> String {
    match (f.values.get(m), f.sd.get(m)) {
        (Some(v), Some(sd)) => format!("{} ± {}", format_value(m, v), format_value(m, sd)),
        (Some(v), None) => format_value(m, v),
        _ => "–".into(),
    }
}

fn quality_section(file: &SearchFile, found: &Found<'_>, finals: Option<&[Finalist]>) -> String {
    let (Some(q), Some(stage), Some(finals)) = (found.quality, &file.quality, finals) else {
        return String::new();
    };
    let mut s = format!(
        "\n## Quality\n\nSuccessive halving over the front: {} candidates spread along {}; each rung \
         trains from scratch (seed 0) and promotes the best {:.0} % by {} to a rung with {:.0}x the \
         steps; the last rung trains every seed and the references.\n\n| rung | steps | configs \
         trained | failed |\n|---|---|---|---|\n",
        stage.candidates,
        file.cost_objectives()
            .first()
            .map_or("the front".into(), |o| o.metric.to_string()),
        100.0 * stage.keep,
        q.metric,
        1.0 / stage.keep
    );
    for (i, r) in q.rungs.iter().enumerate() {
        let failed = r.runs.iter().filter(|x| x.2.is_err()).count();
        s.push_str(&format!(
            "| {} | {} | {} | {failed} |\n",
            i + 1,
            r.steps,
            r.runs.len()
        ));
    }
    let objectives = final_objectives(file, stage);
    s.push_str(&format!(
        "\nThe last rung ({} seeds each; mean ± sd), judged on {} (`quality.png`; a finalist is on \
         the front when no other feasible finalist is at least as good in all of them on the means \
         and better in one):\n\n",
        finals.iter().map(|f| f.seeds).max().unwrap_or(1),
        objectives
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let metrics = [
        Metric::LatencyS,
        Metric::Params,
        Metric::Gmacs,
        Metric::ValidationLoss,
        Metric::Fd,
        Metric::AttributeAlignment,
        Metric::TextAlignment,
    ];
    s.push_str("| config | on front | feasible |");
    for m in metrics {
        s.push_str(&format!(" {m} |"));
    }
    s.push_str("\n|---|---|---|");
    s.push_str(&"---|".repeat(metrics.len()));
    s.push('\n');
    for f in finals {
        s.push_str(&format!(
            "| `{}`{} | {} | {} |",
            f.name,
            if f.reference { " (reference)" } else { "" },
            if f.on_front { "yes" } else { "" },
            if f.fitness.feasible() { "yes" } else { "no" },
        ));
        for m in metrics {
            s.push_str(&format!(" {} |", with_sd(f, m)));
        }
        s.push('\n');
    }
    s.push_str(&reference_verdicts(finals, &objectives));
    s
}

/// The two questions a search asks of a reference, on the final objectives' price (the first)
/// and first quality metric: the best quality at no more than its price, and the lowest price at
/// no worse quality (on the means).
fn best_against(finals: &[Finalist], objectives: &[Objective], r: &Finalist) -> String {
    let (Some(price), Some(quality)) = (
        objectives.first(),
        objectives.iter().find(|o| o.metric.needs_training()),
    ) else {
        return String::new();
    };
    let value = |f: &Finalist, o: &Objective| f.values.get(o.metric).map(|v| o.oriented(v));
    let (Some(rp), Some(rq)) = (value(r, price), value(r, quality)) else {
        return String::new();
    };
    let feasible = || finals.iter().filter(|f| f.fitness.feasible());
    let best = feasible()
        .filter(|f| value(f, price).is_some_and(|p| p <= rp))
        .filter_map(|f| Some((value(f, quality)?, f)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let cheapest = feasible()
        .filter(|f| value(f, quality).is_some_and(|q| q <= rq))
        .filter_map(|f| Some((value(f, price)?, f)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let describe = |f: &Finalist| {
        format!(
            "`{}` ({} {}, {} {})",
            f.name,
            price.metric,
            f.values
                .get(price.metric)
                .map_or("–".into(), |v| format_value(price.metric, v)),
            quality.metric,
            with_sd(f, quality.metric)
        )
    };
    let mut s = String::new();
    if let Some((_, f)) = best {
        s.push_str(&format!(
            "Best {} at no more {} than `{}` ({}): {}. ",
            quality.metric,
            price.metric,
            r.name,
            with_sd(r, quality.metric),
            describe(f)
        ));
    }
    if let Some((_, f)) = cheapest {
        s.push_str(&format!(
            "Lowest {} at {} no worse than `{}`'s: {}. ",
            price.metric,
            quality.metric,
            r.name,
            describe(f)
        ));
    }
    s
}

/// For each reference: the finalists that dominate it on the means, and whether each quality
/// difference exceeds twice its σ (the pooled seed sd × √(1/n₁ + 1/n₂)).
fn reference_verdicts(finals: &[Finalist], objectives: &[Objective]) -> String {
    let mut s = String::from("\n**Against the references** (on the means):\n\n");
    let quality: Vec<Metric> = objectives
        .iter()
        .map(|o| o.metric)
        .filter(|m| m.needs_training())
        .collect();
    for r in finals.iter().filter(|f| f.reference) {
        s.push_str("- ");
        s.push_str(&best_against(finals, objectives, r));
        let dominating: Vec<&Finalist> = finals
            .iter()
            .filter(|f| {
                f.hash != r.hash
                    && f.fitness.feasible()
                    && unetlab_search::pareto::dominates(
                        &f.fitness.objectives,
                        &r.fitness.objectives,
                    )
            })
            .collect();
        if dominating.is_empty() {
            s.push_str(&format!("Nothing trained dominates `{}`.\n", r.name));
            continue;
        }
        let verdicts: Vec<String> = dominating
            .iter()
            .map(|f| {
                let parts: Vec<String> = quality
                    .iter()
                    .filter_map(|&m| {
                        let d = f.values.get(m)? - r.values.get(m)?;
                        let two_sigma = pooled_sd(finals, m).map(|sd| {
                            2.0 * sd * (1.0 / f.seeds as f64 + 1.0 / r.seeds as f64).sqrt()
                        });
                        Some(match two_sigma {
                            Some(t) if d.abs() > t => {
                                format!("{m} {d:+.3}, beyond 2σ = {t:.3}")
                            }
                            Some(t) => format!("{m} {d:+.3}, within 2σ = {t:.3}: not resolved"),
                            None => format!("{m} {d:+.3} (one seed: no σ)"),
                        })
                    })
                    .collect();
                format!("`{}` ({})", f.name, parts.join("; "))
            })
            .collect();
        s.push_str(&format!(
            "`{}` is dominated by {}.\n",
            r.name,
            verdicts.join(", ")
        ));
    }
    s.push_str(
        "\nProxy quality at this budget is noisy: a difference within 2σ is not a ranking.\n",
    );
    s
}

/// Threads the counting ran on (rayon's pool).
fn rayon_threads() -> usize {
    rayon::current_num_threads()
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}
