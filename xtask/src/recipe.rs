//! `cargo xtask recipe`: the training-recipe study. Each experiment of a recipe file is one
//! `unetlab train` run scored along the way (`--score-every`); the study writes its curves
//! against images seen, a summary table, plots and a README to `results/<study>/`.
//!
//! Runs live in `target/recipe-runs/<experiment>/` and are resumable: `unetlab train` continues
//! an interrupted run from its checkpoint and only re-scores a finished one (and refuses a run
//! directory that holds another recipe's checkpoint). `--replot` redraws the plots from the
//! study's curves alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use unetlab_provenance::{now_utc, Build, Code};
use unetlab_report::{lines, to_markdown, write_tables, write_text};
use unetlab_train::metrics::{AttributeRates, MetricOptions};
use unetlab_train::trainer::RunMetrics;
use unetlab_train::RunSummary;

use crate::ablate::Budget;

mod claims;
mod kept;
use kept::Kept;

/// Train the experiments of a recipe file (`ablations/recipe.yaml`) and compare their quality
/// against images seen: curves, table, plots and README in `results/<study>/`.
#[derive(clap::Args)]
pub struct RecipeArgs {
    /// The recipe file.
    #[arg(default_value = "ablations/recipe.yaml")]
    file: PathBuf,
    /// Output folder (default: `results/<study>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where runs are kept (default: target/recipe-runs).
    #[arg(long)]
    runs: Option<PathBuf>,
    /// Only these experiments (by name; repeat), e.g. to add one to a finished study.
    #[arg(long)]
    only: Vec<String>,
    /// Runs at a time, one thread each (two single-threaded runs train 1.3-1.5x as many
    /// images per second as one run on two threads on this 2-core machine).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Whose recipe (data, optimizer, proxy) and scoring the runs start from: `quick` (the
    /// study: 128 scoring captions), `smoke` (a tiny proxy and 16 captions: seconds, for tests)
    /// or `full` (256 scoring captions). Each experiment's steps, batch and arguments override
    /// the budget's.
    #[arg(long, value_enum, default_value_t = Budget::Quick, hide_possible_values = true)]
    budget: Budget,
    /// Only redraw `plots/` from the study's `curves.parquet` under the file's plot groups
    /// (e.g. after regrouping them): nothing trains, scores or samples, and the tables, grids
    /// and README stay as they are.
    #[arg(long, conflicts_with_all = ["only", "runs", "jobs"])]
    replot: bool,
}

/// A recipe file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    /// Study name (the output folder).
    study: String,
    /// What the study asks.
    description: String,
    /// Score every this many images seen (each run scores every `images / batch` steps).
    score_every_images: u64,
    /// The experiments.
    experiments: Vec<Experiment>,
    /// Sampler settings to score one finished experiment with (`unetlab score`).
    #[serde(default)]
    rescore: Option<Rescore>,
    /// Captions every finished experiment draws from the same noise (`unetlab sample
    /// --same-noise`), to show what changing only their words changes.
    #[serde(default)]
    same_noise: Option<SameNoise>,
    /// Groups of experiments plotted together (`plots/<name>-<metric>`); without any, one group
    /// `all` of every experiment.
    #[serde(default)]
    plots: Vec<Group>,
    /// Groups of experiments of several configs trained the same way, seeds apart, whose
    /// configs' paper claims are judged against each other (`claims/<name>.*`).
    #[serde(default)]
    claims: Vec<Group>,
}

/// Some experiments shown together: curves in one set of plots, or configs whose claims are
/// judged against each other.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    /// The files' name (prefix): lower-case letters, digits and `-`.
    name: String,
    /// What the group compares (in titles).
    title: String,
    /// The experiments, by name.
    experiments: Vec<String>,
}

/// The metrics plotted against images seen, with their titles.
const CURVES: [(&str, &str); 4] = [
    ("fd", "FD of the samples (lower is better)"),
    (
        "attribute_alignment",
        "attribute alignment (higher is better)",
    ),
    ("text_alignment", "text alignment (higher is better)"),
    ("validation_loss", "validation loss of the EMA weights"),
];

/// A same-noise grid per experiment: one row per caption, each column one initial noise.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SameNoise {
    /// The captions (rows).
    prompts: Vec<String>,
    /// Images per caption (columns).
    count: usize,
    /// DDIM steps.
    steps: usize,
    /// Guidance scale.
    cfg: f64,
}

/// Other sampler settings for one experiment's final weights.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rescore {
    /// The experiment.
    experiment: String,
    /// Validation captions scored (default: the budget's).
    #[serde(default)]
    images: Option<usize>,
    /// (DDIM steps, guidance scale) pairs.
    settings: Vec<(usize, f64)>,
}

/// One training run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Experiment {
    /// Unique name (the run directory).
    name: String,
    /// Config (preset or file).
    config: String,
    /// Images per step.
    batch: u64,
    /// Steps.
    steps: u64,
    /// Further `unetlab train` arguments (`--lr 1e-3`, `--min-snr-gamma 5`, ...).
    #[serde(default)]
    args: Vec<String>,
    /// An earlier experiment whose final weights this one starts from (`unetlab train
    /// --init-from`): it trains after that one.
    #[serde(default)]
    init_from: Option<String>,
    /// An earlier experiment whose text encoder this one takes and keeps frozen (`unetlab
    /// train --frozen-text-encoder`): it trains after that one.
    #[serde(default)]
    frozen_text_encoder: Option<String>,
    /// Why it is in the study.
    note: String,
}

impl Experiment {
    /// The earlier experiments it starts from, with their `unetlab train` flags.
    fn parents(&self) -> impl Iterator<Item = (&'static str, &String)> {
        let init = self.init_from.iter().map(|p| ("--init-from", p));
        let text = self.frozen_text_encoder.iter();
        init.chain(text.map(|p| ("--frozen-text-encoder", p)))
    }

    /// Its arguments as the table shows them: the parents by experiment name.
    fn arguments(&self) -> String {
        let parents = self.parents().map(|(flag, p)| format!("{flag} {p}"));
        let args: Vec<String> = self.args.iter().cloned().chain(parents).collect();
        args.join(" ")
    }

    fn train_args(&self, score_every: u64, budget: Budget, runs: &Path) -> Vec<String> {
        let mut args: Vec<String> = [
            "train",
            &self.config,
            "--budget",
            budget.name(),
            "--batch",
            &self.batch.to_string(),
            "--steps",
            &self.steps.to_string(),
            "--score-every",
            &score_every.max(1).to_string(),
            "--checkpoint-every",
            &score_every.max(1).to_string(),
            "--threads",
            "1",
            "--json",
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.args.iter().cloned());
        for (flag, parent) in self.parents() {
            args.push(flag.into());
            args.push(runs.join(parent).display().to_string());
        }
        args
    }
}

/// Runs `cargo xtask recipe`.
pub fn run(args: &RecipeArgs, workspace: PathBuf) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let file: RecipeFile = serde_norway::from_str(&text)
        .with_context(|| format!("{}: not a recipe file", args.file.display()))?;
    for (i, e) in file.experiments.iter().enumerate() {
        if file.experiments[..i].iter().any(|o| o.name == e.name) {
            bail!(
                "{}: experiments[{i}].name: `{}` is used twice",
                args.file.display(),
                e.name
            );
        }
        if e.batch == 0 || e.steps == 0 {
            bail!(
                "{}: experiments[{i}]: batch and steps must be at least 1",
                args.file.display()
            );
        }
        for (flag, parent) in e.parents() {
            if !file.experiments[..i].iter().any(|o| &o.name == parent) {
                let field = flag.trim_start_matches("--").replace('-', "_");
                bail!(
                    "{}: experiments[{i}].{field}: `{parent}` is not an experiment listed before `{}`",
                    args.file.display(),
                    e.name
                );
            }
        }
    }
    for (field, groups) in [("plots", &file.plots), ("claims", &file.claims)] {
        check_groups(&args.file, field, groups, &file.experiments)?;
    }
    claims::check(&args.file, &file.claims, &file.experiments)?;
    if let Some(r) = &file.rescore {
        if !file.experiments.iter().any(|e| e.name == r.experiment) {
            bail!(
                "{}: rescore.experiment: no experiment is named `{}`",
                args.file.display(),
                r.experiment
            );
        }
    }
    if let Some(g) = &file.same_noise {
        if g.prompts.is_empty() || g.count == 0 || g.steps == 0 || !g.cfg.is_finite() {
            bail!(
                "{}: same_noise: needs at least one prompt, count and steps of at least 1 and a finite cfg",
                args.file.display()
            );
        }
    }
    if let Some(unknown) = args
        .only
        .iter()
        .find(|n| !file.experiments.iter().any(|e| &e.name == *n))
    {
        bail!(
            "--only {unknown}: no such experiment in {}",
            args.file.display()
        );
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace.join("results").join(&file.study));
    if args.replot {
        let path = out.join("curves.parquet");
        let curves = unetlab_report::read_parquet(&path).with_context(|| {
            format!(
                "{}: no curves to redraw (run the study first)",
                path.display()
            )
        })?;
        draw_plots(&out.join("plots"), &curves, &plot_groups(&file))?;
        eprintln!("redrew {}", out.join("plots").display());
        return Ok(());
    }
    let runs = args
        .runs
        .clone()
        .unwrap_or_else(|| crate::tools::target_dir(&workspace).join("recipe-runs"));
    std::fs::create_dir_all(&runs)?;
    let selected: Vec<&Experiment> = file
        .experiments
        .iter()
        .filter(|e| args.only.is_empty() || args.only.contains(&e.name))
        .collect();
    for e in &selected {
        for (_, parent) in e.parents() {
            if !selected.iter().any(|o| &o.name == parent)
                && !runs.join(parent).join("run.json").is_file()
            {
                bail!(
                    "{}: starts from `{parent}`, which has no finished run in {}; select it too",
                    e.name,
                    runs.display()
                );
            }
        }
    }
    let (build, started) = (Build::current(), now_utc());
    let unetlab = crate::tools::build_unetlab(&workspace)?;
    let evaluator_cache = crate::tools::target_dir(&workspace).join("unetlab-cache");

    for wave in waves(&selected) {
        train_wave(wave, args, (&file, &runs), (&unetlab, &evaluator_cache))?;
    }
    // The study: every experiment with a finished run (also those not selected this time).
    let done: Vec<(Experiment, PathBuf, RunSummary)> = file
        .experiments
        .iter()
        .filter_map(|e| {
            let dir = runs.join(&e.name);
            let text = std::fs::read_to_string(dir.join("run.json")).ok()?;
            Some((e.clone(), dir, serde_json::from_str(&text).ok()?))
        })
        .collect();
    let trained: Vec<&str> = done.iter().map(|(e, _, _)| e.name.as_str()).collect();
    let kept = Kept::read(&out, &file.experiments, &trained)?;
    let rescored = match &file.rescore {
        Some(r) if done.iter().any(|(e, _, _)| e.name == r.experiment) => rescore(
            &unetlab,
            &runs.join(&r.experiment),
            (r, args.budget),
            &evaluator_cache,
        )?,
        _ => Vec::new(),
    };
    if let Some(grid) = &file.same_noise {
        same_noise_grids(&unetlab, &out.join("same-noise"), (&done, &kept), grid)?;
    }
    write(
        &out,
        &file,
        (&done, &kept),
        &rescored,
        args.budget,
        (&build, &started),
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Checks the groups of `field` (`plots` or `claims`): unique file names, at least one
/// experiment, every experiment listed in the file.
fn check_groups(
    file: &Path,
    field: &str,
    groups: &[Group],
    experiments: &[Experiment],
) -> Result<()> {
    for (i, g) in groups.iter().enumerate() {
        let valid_name = !g.name.is_empty()
            && g.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name || groups[..i].iter().any(|o| o.name == g.name) {
            bail!(
                "{}: {field}[{i}].name: `{}` must be unique and of lower-case letters, digits and `-`",
                file.display(),
                g.name
            );
        }
        if g.experiments.is_empty() {
            bail!(
                "{}: {field}[{i}] ({}) names no experiment",
                file.display(),
                g.name
            );
        }
        if let Some(unknown) = g
            .experiments
            .iter()
            .find(|n| !experiments.iter().any(|e| &e.name == *n))
        {
            bail!(
                "{}: {field}[{i}] ({}): no experiment is named `{unknown}`",
                file.display(),
                g.name
            );
        }
    }
    Ok(())
}

/// The selected experiments in waves: a parent (`init_from` or `frozen_text_encoder`), if selected, trains in an
/// earlier wave than the experiments that start from it. Parents are listed before them.
fn waves<'a>(selected: &[&'a Experiment]) -> Vec<Vec<&'a Experiment>> {
    let mut waves: Vec<Vec<&Experiment>> = Vec::new();
    let mut depth = std::collections::HashMap::new();
    for e in selected {
        let d = e
            .parents()
            .filter_map(|(_, p)| depth.get(p.as_str()))
            .max()
            .map_or(0, |d| d + 1);
        depth.insert(e.name.as_str(), d);
        if waves.len() <= d {
            waves.resize_with(d + 1, Vec::new);
        }
        waves[d].push(*e);
    }
    waves
}

/// Trains one wave of experiments, `args.jobs` at a time; the longest start first.
fn train_wave(
    mut wave: Vec<&Experiment>,
    args: &RecipeArgs,
    (file, runs): (&RecipeFile, &Path),
    (unetlab, evaluator_cache): (&Path, &Path),
) -> Result<()> {
    // Smallest first in the queue, which is taken from the end.
    wave.sort_by_key(|e| e.steps * e.batch);
    let queue = std::sync::Mutex::new(wave);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| loop {
                let Some(e) = queue.lock().expect("queue").pop() else {
                    break;
                };
                let train_args = e.train_args(file.score_every_images / e.batch, args.budget, runs);
                eprintln!("{}: unetlab {} ...", e.name, train_args.join(" "));
                let dir = runs.join(&e.name);
                match train(unetlab, &dir, &train_args, evaluator_cache) {
                    Ok(s) => eprintln!(
                        "{}: {} images, validation loss {:.4}",
                        e.name,
                        s.steps * s.recipe.batch as u64,
                        s.validation_loss
                    ),
                    Err(err) => failures.lock().expect("failures").push(format!("{err:#}")),
                }
            });
        }
    });
    let failures = failures.into_inner().expect("failures");
    if !failures.is_empty() {
        bail!("{} run(s) failed:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

fn train(
    unetlab: &Path,
    dir: &Path,
    train_args: &[String],
    evaluator_cache: &Path,
) -> Result<RunSummary> {
    std::fs::create_dir_all(dir)?;
    let log_path = dir.with_extension("log");
    let log = std::fs::File::create(&log_path)?;
    let output = Command::new(unetlab)
        .args(train_args)
        .arg("--out")
        .arg(dir)
        .arg("--evaluator-cache")
        .arg(evaluator_cache)
        .stderr(log)
        .output()
        .with_context(|| format!("running {}", unetlab.display()))?;
    if !output.status.success() {
        bail!(
            "unetlab {} failed ({}); see {}",
            train_args.join(" "),
            output.status,
            log_path.display()
        );
    }
    serde_json::from_slice(&output.stdout).context("unreadable run.json")
}

/// What a rescore's metrics depend on: the run's final weights, the sampler settings and the
/// scoring code. A rescore with the same key is read back instead of sampled again.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RescoreKey {
    /// SHA-256 of the run's checkpoint.
    checkpoint: String,
    /// DDIM steps.
    steps: usize,
    /// Guidance scale.
    cfg: f64,
    /// Validation captions (`None`: the budget's).
    images: Option<usize>,
    /// The budget whose scoring is used.
    budget: String,
    /// [`Code::Training`]'s identity of the build that scores.
    code: String,
}

/// A rescore kept beside its run (`<run>/rescore/<steps>-steps-cfg-<cfg>.json`).
#[derive(Serialize, Deserialize)]
struct CachedRescore {
    key: RescoreKey,
    metrics: RunMetrics,
}

/// `unetlab score` of one run at each of the settings: (steps, cfg, its metrics). A setting
/// already scored on the same weights by the same scoring code is read from the run's folder.
fn rescore(
    unetlab: &Path,
    dir: &Path,
    (r, budget): (&Rescore, Budget),
    evaluator_cache: &Path,
) -> Result<Vec<(usize, f64, RunMetrics)>> {
    let checkpoint = dir.join("checkpoint.safetensors");
    let (_, digest) = unetlab_files::sha256_file(&checkpoint)
        .with_context(|| format!("reading {}", checkpoint.display()))?;
    r.settings
        .iter()
        .map(|&(steps, cfg)| {
            let key = RescoreKey {
                checkpoint: digest.clone(),
                steps,
                cfg,
                images: r.images,
                budget: budget.name().into(),
                code: Code::Training.identity().into(),
            };
            let cached = dir
                .join("rescore")
                .join(format!("{steps}-steps-cfg-{cfg}.json"));
            let kept = std::fs::read_to_string(&cached)
                .ok()
                .and_then(|t| serde_json::from_str::<CachedRescore>(&t).ok())
                .filter(|c| c.key == key);
            if let Some(c) = kept {
                eprintln!(
                    "{}: {steps} DDIM steps, guidance {cfg}: scored before ({})",
                    r.experiment,
                    cached.display()
                );
                return Ok((steps, cfg, c.metrics));
            }
            eprintln!(
                "{}: scoring with {steps} DDIM steps, guidance {cfg} ...",
                r.experiment
            );
            let mut command = Command::new(unetlab);
            command
                .arg("score")
                .arg(dir)
                .args(["--budget", budget.name()])
                .args(["--steps", &steps.to_string(), "--cfg", &cfg.to_string()]);
            if let Some(images) = r.images {
                command.args(["--images", &images.to_string()]);
            }
            command
                .arg("--evaluator-cache")
                .arg(evaluator_cache)
                .arg("--json");
            let stdout = stdout_of(&mut command, dir)?;
            let metrics: RunMetrics = serde_json::from_slice(&stdout)?;
            let record = CachedRescore { key, metrics };
            std::fs::create_dir_all(cached.parent().expect("a file in a folder"))?;
            unetlab_files::write_file(&cached, serde_json::to_string_pretty(&record)? + "\n")?;
            Ok((steps, cfg, record.metrics))
        })
        .collect()
}

/// `<folder>/<experiment>.png`: each finished run's same-noise grid.
fn same_noise_grids(
    unetlab: &Path,
    folder: &Path,
    (done, kept): (&[(Experiment, PathBuf, RunSummary)], &Kept),
    grid: &SameNoise,
) -> Result<()> {
    std::fs::create_dir_all(folder)?;
    remove_stale(folder, &|stem| shown(stem, done, kept))?;
    for (e, dir, _) in done {
        let out = folder.join(format!("{}.png", e.name));
        let mut command = Command::new(unetlab);
        command.arg("sample").arg(dir).arg("--same-noise");
        for prompt in &grid.prompts {
            command.args(["--prompt", prompt]);
        }
        command
            .args(["--count", &grid.count.to_string()])
            .args(["--steps", &grid.steps.to_string()])
            .args(["--cfg", &grid.cfg.to_string(), "--zoom", "2"])
            .arg("--out")
            .arg(&out);
        stdout_of(&mut command, dir)?;
    }
    Ok(())
}

/// Runs a `unetlab` subcommand on the run in `dir`: its stdout, or an error with its stderr.
fn stdout_of(command: &mut Command, dir: &Path) -> Result<Vec<u8>> {
    let program = command.get_program().to_string_lossy().into_owned();
    let subcommand = command
        .get_args()
        .next()
        .map_or(String::new(), |a| a.to_string_lossy().into_owned());
    let output = command
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "unetlab {subcommand} {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Each finished run's sample grid, as `samples/<experiment>.png`.
fn write_samples(
    out: &Path,
    (done, kept): (&[(Experiment, PathBuf, RunSummary)], &Kept),
) -> Result<()> {
    let folder = out.join("samples");
    std::fs::create_dir_all(&folder)?;
    remove_stale(&folder, &|stem| shown(stem, done, kept))?;
    for (e, dir, _) in done {
        let from = dir.join("samples.png");
        if let Ok(png) = std::fs::read(&from) {
            let to = folder.join(format!("{}.png", e.name));
            unetlab_files::write_file(&to, png)
                .with_context(|| format!("writing {}", to.display()))?;
        }
    }
    Ok(())
}

/// Whether the study shows the experiment `name`: trained here, or kept from the committed study.
fn shown(name: &str, done: &[(Experiment, PathBuf, RunSummary)], kept: &Kept) -> bool {
    done.iter().any(|(e, _, _)| e.name == name) || kept.names.iter().any(|k| k == name)
}

/// Removes the images (`.png`, `.svg`) in `folder` whose name `keep` does not accept: grids of
/// experiments without a finished run (renamed, or no longer in the file), plots of old groups.
fn remove_stale(folder: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        let stale = path.extension().is_some_and(|x| x == "png" || x == "svg")
            && path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .is_some_and(|stem| !keep(stem));
        if stale {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// (step, values...) rows of a run's CSV log.
fn read_log(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split(',').filter_map(|v| v.parse().ok()).collect())
        .collect()
}

fn write(
    out: &Path,
    file: &RecipeFile,
    (done, kept): (&[(Experiment, PathBuf, RunSummary)], &Kept),
    rescored: &[(usize, f64, RunMetrics)],
    budget: Budget,
    (build, started): (&Build, &str),
) -> Result<()> {
    std::fs::create_dir_all(out)?;
    // The plots live in `plots/`; images beside the tables are an older layout's.
    remove_stale(out, &|_| false)?;
    write_curves(out, file, (done, kept))?;
    write_samples(out, (done, kept))?;
    let mut table = kept.table(&runs_table(done)?, &file.experiments)?;
    write_tables(&mut table, out, "table")?;
    let sampler_section = sampler_section(out, file, (rescored, kept))?;
    let claims_sections = claims::write(out, &file.claims, &file.experiments, &table)?;
    let scoring = MetricOptions::for_budget(budget.training());
    let real_fd = done
        .iter()
        .find_map(|(_, _, s)| s.metrics.as_ref().map(|m| m.real_fd));
    let machine = unetlab_bench::Machine::current();
    let readme = format!(
        "# Study `{}`\n\n{}\n\nProduced by `cargo xtask recipe {}` on {} (build {}, {} UTC); each run is `unetlab train` \
         with the arguments in `table.md`, scored every {} images seen on the {} scoring ({} validation captions, {} DDIM \
         steps, guidance {}){}. `trained by` names the build that ran each run's last training step (for runs recorded before that was kept, the build of their last session, which may only have re-scored them), and `trained on` the machine (empty for runs recorded before that was kept). Nothing here is \
         edited by hand.{}\n\n## Runs\n\n{}\n\n`images` and the curves count the images of the run an experiment started from (`init_from`, shown as `--init-from` \
         in `arguments`); a run with `--frozen-text-encoder` takes that run's text encoder and trains its UNet alone, and counts only its own images. The attribute columns (`count` … `size`) split the attribute alignment by kind. \
         `direction` is not one of them: of the `direction scenes` drawn with the caption's two colours on its axis, the \
         fraction in the caption's order (chance 0.5; both empty where no scene could be judged, and for runs scored before it existed). \
         `training s` is the training time of the run's last session (one thread, two runs at a time).\n{}{}\n## Files\n\n\
         - `table.{{md,csv,parquet}}`: one row per run.\n- `curves.{{md,csv,parquet}}`: (experiment, images seen, metric, \
         value) along each run.\n- `sampler.{{md,csv,parquet}}`: the sampler settings, if the file asks for them.\n\
         - `plots/<group>-<metric>.{{png,svg}}`: the curves of FD, attribute and text alignment and validation loss \
         against images seen, one set per group of experiments ({}).\n{}\
         - `samples/<experiment>.png`: each run's final EMA weights sampled on the first validation captions \
         (the run's `samples.png`).\n{}",
        file.study,
        file.description.trim(),
        std::env::args().skip(2).collect::<Vec<_>>().join(" "),
        machine.cpu(),
        build.label(),
        started,
        file.score_every_images,
        budget.name(),
        scoring.images,
        scoring.ddim_steps,
        scoring.cfg,
        real_fd.map_or(String::new(), |f| format!(
            "; real images against other real ones score FD {f:.1}"
        )),
        kept_note(kept),
        to_markdown(&table),
        sampler_section,
        if claims_sections.is_empty() {
            String::new()
        } else {
            format!("\n{claims_sections}")
        },
        plot_groups(file)
            .iter()
            .map(|g| format!("`{}`: {}", g.name, g.title))
            .collect::<Vec<_>>()
            .join("; "),
        if file.claims.is_empty() {
            ""
        } else {
            "- `claims/<group>.{md,csv,parquet,png,svg}`: per claim group, each claim of its configs with the \
             effect against the baseline, 2σ and the verdict (the section above).\n"
        },
        file.same_noise.as_ref().map_or(String::new(), |g| format!(
            "- `same-noise/<experiment>.png`: each run's final EMA weights on {} captions, one row each ({}), \
             {} columns, {} DDIM steps, guidance {}; every row of a column starts from the same noise \
             (`unetlab sample --same-noise`), so what differs between rows is what the words changed.\n",
            g.prompts.len(),
            g.prompts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", "),
            g.count,
            g.steps,
            g.cfg
        )),
    );
    write_text(&out.join("README.md"), &readme)?;
    Ok(())
}

/// What the README says of the rows kept from the committed study, if any.
fn kept_note(kept: &Kept) -> String {
    if kept.names.is_empty() {
        return String::new();
    }
    format!(
        " The rows of {} experiments whose runs this machine did not hold are kept from the study \
         as it was, with their curves and grids, where the recipe file still states them the same \
         way; `trained by` names the build that trained each: {}.",
        kept.names.len(),
        kept.names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The file's plot groups, or one group `all` of every experiment.
fn plot_groups(file: &RecipeFile) -> Vec<Group> {
    if !file.plots.is_empty() {
        return file.plots.clone();
    }
    vec![Group {
        name: "all".into(),
        title: "every experiment".into(),
        experiments: file.experiments.iter().map(|e| e.name.clone()).collect(),
    }]
}

/// `curves.{md,csv,parquet}` (experiment, images seen, metric, value) and, per plot group with
/// a finished run, `plots/<group>-<metric>.{png,svg}`; other plots in `plots/` are removed.
fn write_curves(
    out: &Path,
    file: &RecipeFile,
    (done, kept): (&[(Experiment, PathBuf, RunSummary)], &Kept),
) -> Result<()> {
    // Long curves: experiment, images seen, metric, value.
    let (mut names, mut images, mut metrics, mut values) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut push = |name: &str, seen: f64, metric: &str, value: f64| {
        names.push(name.to_string());
        images.push(seen);
        metrics.push(metric.to_string());
        values.push(value);
    };
    for (e, dir, _) in done {
        // A run started from another's weights continues that run's count of images seen.
        let before = parents_images(e, done);
        for row in read_log(&dir.join("quality.csv")) {
            if let [_, seen, fd, attribute, text] = row[..] {
                push(&e.name, before + seen, "fd", fd);
                push(&e.name, before + seen, "attribute_alignment", attribute);
                push(&e.name, before + seen, "text_alignment", text);
            }
        }
        for row in read_log(&dir.join("validation.csv")) {
            if let [step, loss] = row[..] {
                push(
                    &e.name,
                    before + step * e.batch as f64,
                    "validation_loss",
                    loss,
                );
            }
        }
    }
    let fresh = DataFrame::new(
        names.len(),
        vec![
            Column::new("experiment".into(), names),
            Column::new("images".into(), images),
            Column::new("metric".into(), metrics),
            Column::new("value".into(), values),
        ],
    )?;
    let mut curves = kept.curves(&fresh, &file.experiments)?;
    write_tables(&mut curves, out, "curves")?;
    draw_plots(&out.join("plots"), &curves, &plot_groups(file))
}

/// Per plot group with a curve in `curves` (experiment, images, metric, value),
/// `<group>-<metric>.{png,svg}` in `folder`; other images in `folder` are removed.
fn draw_plots(folder: &Path, curves: &DataFrame, groups: &[Group]) -> Result<()> {
    use polars::prelude::DataType;
    let text = |name: &str| -> Result<Vec<String>> {
        let c = curves.column(name)?.str()?;
        Ok((0..c.len())
            .map(|i| c.get(i).unwrap_or_default().to_string())
            .collect())
    };
    let number = |name: &str| -> Result<Vec<f64>> {
        let c = curves.column(name)?.cast(&DataType::Float64)?;
        Ok(c.f64()?.into_no_null_iter().collect())
    };
    let (names, metrics) = (text("experiment")?, text("metric")?);
    let (images, values) = (number("images")?, number("value")?);
    std::fs::create_dir_all(folder)?;
    let mut written = Vec::new();
    for group in groups {
        let members: Vec<&String> = group
            .experiments
            .iter()
            .filter(|e| names.contains(e))
            .collect();
        if members.is_empty() {
            continue;
        }
        for (metric, what) in CURVES {
            let series: Vec<(String, Vec<(f64, f64)>)> = members
                .iter()
                .map(|e| {
                    let points = (0..names.len())
                        .filter(|&i| &names[i] == *e && metrics[i] == metric && images[i] > 0.0)
                        .map(|i| (images[i], values[i]))
                        .collect();
                    (e.to_string(), points)
                })
                .collect();
            let stem = format!("{}-{metric}", group.name);
            let title = format!("{}: {what}", group.title);
            lines(&folder.join(&stem), &title, "images seen", metric, &series)?;
            written.push(stem);
        }
    }
    remove_stale(folder, &|stem| written.iter().any(|w| w == stem))
}

/// The images its `init_from` ancestors trained on (0 for a run from scratch).
fn parents_images(e: &Experiment, done: &[(Experiment, PathBuf, RunSummary)]) -> f64 {
    let parent = e
        .init_from
        .as_ref()
        .and_then(|p| done.iter().find(|(o, _, _)| &o.name == p));
    parent.map_or(0.0, |(p, _, _)| {
        (p.steps * p.batch) as f64 + parents_images(p, done)
    })
}

/// One row per run: its arguments, images, training time and final metrics.
fn runs_table(done: &[(Experiment, PathBuf, RunSummary)]) -> Result<DataFrame> {
    let summary = |f: &dyn Fn(&RunSummary) -> Option<f64>| -> Vec<Option<f64>> {
        done.iter().map(|(_, _, s)| f(s)).collect()
    };
    let quality = |f: fn(&unetlab_train::metrics::Quality) -> Option<f64>| {
        summary(&|s: &RunSummary| s.metrics.as_ref().and_then(|m| f(&m.quality)))
    };
    let text = |f: &dyn Fn(&Experiment, &RunSummary) -> String| -> Vec<String> {
        done.iter().map(|(e, _, s)| f(e, s)).collect()
    };
    Ok(DataFrame::new(
        done.len(),
        vec![
            Column::new("experiment".into(), text(&|e, _| e.name.clone())),
            Column::new("config".into(), text(&|e, _| e.config.clone())),
            Column::new(
                "steps x batch".into(),
                text(&|e, _| format!("{} x {}", e.steps, e.batch)),
            ),
            Column::new("arguments".into(), text(&|e, _| e.arguments())),
            Column::new(
                "images".into(),
                done.iter()
                    .map(|(e, _, s)| {
                        Some((s.steps * s.recipe.batch as u64) as f64 + parents_images(e, done))
                    })
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "training s".into(),
                summary(&|s| Some(s.steps as f64 / s.steps_per_s)),
            ),
            Column::new(
                "validation loss".into(),
                summary(&|s| Some(s.validation_loss)),
            ),
            Column::new("FD".into(), quality(|q| Some(q.fd))),
            Column::new(
                "attribute alignment".into(),
                quality(|q| Some(q.attribute_alignment)),
            ),
            Column::new("text alignment".into(), quality(|q| Some(q.text_alignment))),
        ]
        .into_iter()
        .chain(by_kind_columns(
            &done
                .iter()
                .map(|(_, _, s)| s.metrics.as_ref().map(|m| &m.quality))
                .collect::<Vec<_>>(),
        ))
        .chain([
            Column::new(
                "trained by".into(),
                text(&|_, s| s.trained_by.as_ref().unwrap_or(&s.provenance).build.label()),
            ),
            Column::new(
                "trained on".into(),
                done.iter()
                    .map(|(_, _, s)| s.trained_on.as_ref().map(unetlab_bench::Machine::cpu))
                    .collect::<Vec<_>>(),
            ),
            Column::new("note".into(), text(&|e, _| e.note.clone())),
        ])
        .collect(),
    )?)
}

/// The attribute alignment by kind (count, relation, shape, colour, size) and the direction
/// along the axis with the scenes it judged, as columns, one row per score; empty where a score
/// has none.
fn by_kind_columns(scores: &[Option<&unetlab_train::metrics::Quality>]) -> Vec<Column> {
    let column = |name: &str, f: fn(&AttributeRates) -> f64| {
        let values: Vec<Option<f64>> = scores
            .iter()
            .map(|q| q.and_then(|q| q.by_kind.as_ref()).map(f))
            .collect();
        Column::new(name.into(), values)
    };
    vec![
        column("count", |k| k.count),
        column("relation", |k| k.relation),
        column("shape", |k| k.shape),
        column("colour", |k| k.colour),
        column("size", |k| k.size),
        Column::new(
            "direction".into(),
            scores
                .iter()
                .map(|q| q.and_then(|q| q.by_kind.as_ref()).and_then(|k| k.direction))
                .collect::<Vec<Option<f64>>>(),
        ),
        Column::new(
            "direction scenes".into(),
            scores
                .iter()
                .map(|q| q.and_then(|q| q.by_kind.as_ref()))
                .map(|k| k.and_then(|k| k.direction.map(|_| k.direction_scenes as u64)))
                .collect::<Vec<Option<u64>>>(),
        ),
    ]
}

/// `sampler.{md,csv,parquet}` from the rescored sampler settings, and the README's section on
/// them (empty when the file asks for none).
fn sampler_section(
    out: &Path,
    file: &RecipeFile,
    (rescored, kept): (&[(usize, f64, RunMetrics)], &Kept),
) -> Result<String> {
    let Some(r) = &file.rescore else {
        return Ok(String::new());
    };
    let sampler = if !rescored.is_empty() {
        let q = |f: fn(&unetlab_train::metrics::Quality) -> f64| {
            rescored
                .iter()
                .map(|(_, _, m)| f(&m.quality))
                .collect::<Vec<f64>>()
        };
        let mut sampler = DataFrame::new(
            rescored.len(),
            vec![
                Column::new(
                    "DDIM steps".into(),
                    rescored.iter().map(|s| s.0 as u64).collect::<Vec<_>>(),
                ),
                Column::new(
                    "guidance".into(),
                    rescored.iter().map(|s| s.1).collect::<Vec<_>>(),
                ),
                Column::new("FD".into(), q(|q| q.fd)),
                Column::new("attribute alignment".into(), q(|q| q.attribute_alignment)),
                Column::new("text alignment".into(), q(|q| q.text_alignment)),
            ]
            .into_iter()
            .chain(by_kind_columns(
                &rescored
                    .iter()
                    .map(|(_, _, m)| Some(&m.quality))
                    .collect::<Vec<_>>(),
            ))
            .collect(),
        )?;
        write_tables(&mut sampler, out, "sampler")?;
        sampler
    } else if kept.names.contains(&r.experiment) && out.join("sampler.parquet").is_file() {
        // Its run is not here: the settings as the study scored them.
        unetlab_report::read_parquet(&out.join("sampler.parquet"))?
    } else {
        return Ok(String::new());
    };
    let captions = r.images.map_or("the budget's captions".to_string(), |n| {
        format!("the first {n} validation captions")
    });
    Ok(format!(
        "\n## Sampler settings\n\nThe final weights of `{}` scored with other DDIM step counts and guidance scales \
         (`unetlab score` on {captions}; the same noise and evaluator for every setting; the \
         by-kind columns are the attribute alignment of each kind):\n\n{}\n",
        r.experiment,
        to_markdown(&sampler)
    ))
}
