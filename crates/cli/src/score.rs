//! `unetlab score`: re-score a finished training run with other sampler settings.

use std::path::PathBuf;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use unetlab_train::evaluator::{default_cache_dir, EvaluatorRecipe};
use unetlab_train::metrics::MetricOptions;
use unetlab_train::sample::TrainedRun;
use unetlab_train::trainer::{score, MetricsSetup};
use unetlab_train::{Budget, Progress};

/// Score a `shapes` training run's EMA weights with other sampler settings than its own: FD,
/// attribute and text alignment through the budget's evaluator, on the first `--images`
/// validation captions. The run is not changed; `--samples` writes the first 32 images.
#[derive(clap::Args)]
pub struct ScoreArgs {
    /// A run directory written by `unetlab train` on `shapes`.
    run: PathBuf,
    /// Whose scoring to start from (images, DDIM steps, guidance; and the evaluator).
    #[arg(long, value_enum, default_value = "quick")]
    budget: Budget,
    /// Validation captions scored (default: the budget's).
    #[arg(long)]
    images: Option<usize>,
    /// DDIM steps (default: the budget's).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale, 1 for none (default: the budget's).
    #[arg(long)]
    cfg: Option<f64>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the first 32 generated images to this PNG grid.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Where the evaluator is cached (as for `unetlab train`).
    #[arg(long)]
    evaluator_cache: Option<PathBuf>,
    /// Print the metrics as JSON.
    #[arg(long)]
    json: bool,
}

/// The evaluator's one-time training, then the images generated, on a bar on stderr.
fn show_progress(bar: &ProgressBar, p: Progress) {
    let style = |what: &str| {
        ProgressStyle::with_template(&format!(
            "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {what}  ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> ")
    };
    match p {
        Progress::EvaluatorTraining { done, total } => {
            if done == 1 {
                bar.set_style(style("steps"));
                bar.set_prefix("evaluator (once)");
                bar.set_length(total);
            }
            bar.set_position(done);
        }
        Progress::Scoring { images } => {
            bar.set_style(style("images"));
            bar.set_prefix("generating");
            bar.set_length(images as u64);
            bar.set_position(0);
        }
        Progress::Sampled { done, .. } => bar.set_position(done as u64),
        Progress::Started { .. } | Progress::Step { .. } | Progress::Validation { .. } => {}
    }
}

/// Runs `unetlab score`.
pub fn run(args: &ScoreArgs) -> Result<()> {
    let run = TrainedRun::open(&args.run)?;
    let recipe = &run.summary.recipe;
    if run.summary.data != unetlab_train::data::DataSource::Shapes {
        bail!(
            "{}: trained on {:?}; only `shapes` runs can be scored",
            args.run.display(),
            run.summary.data
        );
    }
    let base = MetricOptions::for_budget(args.budget);
    let options = MetricOptions {
        images: args.images.unwrap_or(base.images),
        ddim_steps: args.steps.unwrap_or(base.ddim_steps),
        cfg: args.cfg.unwrap_or(base.cfg),
        seed: args.seed,
    };
    if options.images < 2 || options.ddim_steps == 0 || !(options.cfg.is_finite()) {
        bail!("--images must be at least 2, --steps at least 1, --cfg a number");
    }
    let setup = MetricsSetup {
        cache: args
            .evaluator_cache
            .clone()
            .unwrap_or_else(default_cache_dir),
        evaluator: EvaluatorRecipe::for_budget(args.budget),
        options,
        every: None,
    };
    let bar = ProgressBar::new(0);
    let metrics = score(
        &setup,
        &run.model,
        &run.tokenizer,
        recipe,
        args.samples.as_deref(),
        &mut |p| show_progress(&bar, p),
    )?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
    } else {
        let q = metrics.quality;
        println!(
            "{}: {} images, {} DDIM steps, guidance {}: FD {:.1} (real floor {:.1}), attribute alignment {:.3}, text alignment {:.3}",
            args.run.display(),
            options.images,
            options.ddim_steps,
            options.cfg,
            q.fd,
            metrics.real_fd,
            q.attribute_alignment,
            q.text_alignment
        );
        if let Some(k) = q.by_kind {
            println!(
                "  attributes found by kind: count {:.3}, relation {:.3}, shape {:.3}, colour {:.3}, size {:.3}",
                k.count, k.relation, k.shape, k.colour, k.size
            );
            if let Some(direction) = k.direction {
                println!(
                    "  direction along the axis: {direction:.3} of {} judged scenes (chance 0.5)",
                    k.direction_scenes
                );
            }
        }
    }
    Ok(())
}
