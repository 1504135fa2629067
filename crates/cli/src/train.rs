//! `unetlab train`: one short proxy training run.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use unetlab_bench::prepare_process;
use unetlab_spec::Config;
use unetlab_train::data::DataSource;
use unetlab_train::evaluator::{default_cache_dir, EvaluatorRecipe};
use unetlab_train::metrics::MetricOptions;
use unetlab_train::proxy::proxy_spec;
use unetlab_train::schedule::{Prediction, ScheduleKind};
use unetlab_train::trainer::MetricsSetup;
use unetlab_train::{train, Budget, Progress, Recipe, RunOptions, RunSummary};

/// Train a config's proxy: the same structure and design choices at a small width, on 32×32
/// images with a small text encoder trained jointly (see `unetlab_train::proxy`).
///
/// The DDPM objective on Stable Diffusion's schedule (v-prediction by default), 10 % caption dropout (for classifier-free
/// guidance), AdamW with warm-up and cosine decay, gradient clipping and EMA weights. The run
/// directory gets loss.csv/.parquet, validation.csv/.parquet, the loss curves (loss.svg, loss.png),
/// run.json, tokenizer.json, config.yaml, proxy.yaml and checkpoint.safetensors. On `shapes` the
/// finished run is scored on fixed validation captions: Fréchet distance and text alignment
/// through an evaluator network (trained once and cached), with samples.png. Run the same
/// command again to resume an interrupted run: it continues from the last checkpoint and ends
/// bit-identical to an uninterrupted run.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// A preset name or YAML config file.
    config: String,
    /// `shapes` (procedural, captioned), a folder of images with same-name .txt captions, or a
    /// Parquet file with image and caption columns.
    #[arg(long, default_value = "shapes")]
    data: String,
    /// Recipe size: smoke (seconds), quick (a few hundred steps), full.
    #[arg(long, value_enum, default_value = "quick")]
    budget: Budget,
    /// Optimizer steps (default: the budget's).
    #[arg(long)]
    steps: Option<u64>,
    /// Images per step (default: the budget's).
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate (default: the budget's).
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW's second-moment decay β₂ (default: the budget's). A smaller β₂ lets the step-size
    /// normaliser follow a sudden rise of the gradients, where 0.999 remembers a thousand quiet
    /// steps and lets the update grow several times the learning rate.
    #[arg(long)]
    beta2: Option<f64>,
    /// Linear warm-up steps before the cosine decay (default: the budget's; at most half the steps).
    #[arg(long)]
    warmup: Option<u64>,
    /// What the network predicts (default: the budget's, v): v-prediction and ε-prediction are
    /// the same DDPM objective; ε's x̂₀ at high noise divides its error by √ᾱ (×15 at t = 999),
    /// which makes samples of short runs noise.
    #[arg(long, value_enum)]
    prediction: Option<Prediction>,
    /// Min-SNR-γ loss weighting with this γ (default: the budget's): weights each timestep's
    /// loss by min(SNR, γ) / SNR on the x₀ scale, so nearly clean timesteps weigh less.
    #[arg(long, value_name = "GAMMA")]
    min_snr_gamma: Option<f64>,
    /// Weigh every timestep's loss the same (no min-SNR-γ, whatever the budget says).
    #[arg(long, conflicts_with = "min_snr_gamma")]
    uniform_weighting: bool,
    /// Noise schedule (default: the budget's).
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Divide the schedule's signal-to-noise ratios by this squared (default: the budget's,
    /// 1: none): more of training at the noise levels where the layout must come from the
    /// caption, as `results/recipe` found the 32 × 32 proxy needs.
    #[arg(long, value_name = "SHIFT")]
    noise_shift: Option<f64>,
    /// EMA decay of the weights that are sampled and scored (default: the budget's).
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Channels of the proxy's first level (default: the budget's, 32); every level scales with
    /// it, as the proxy transform scales the config's widths. A multiple of 8 (the norm groups).
    #[arg(long, value_name = "CHANNELS")]
    base_width: Option<usize>,
    /// Transformer layers of the proxy's text encoder (default: the budget's, 2); 0 leaves token
    /// and position embeddings under a layer norm.
    #[arg(long, value_name = "LAYERS")]
    text_layers: Option<usize>,
    /// Seed of initialisation, data order and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint every N steps (default: the budget's).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// A tokenizer.json to use instead of training a word-level one on the captions.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Initialise parameters from another run's EMA weights, matched by name and shape (e.g. softmax →
    /// ReLU attention, as the paper fine-tunes); the parent's run hash becomes part of this run's.
    #[arg(long, value_name = "CHECKPOINT_OR_RUN")]
    init_from: Option<PathBuf>,
    /// Take another run's text encoder (its EMA weights and tokenizer.json) and keep it frozen,
    /// training the UNet alone, as the paper trains its UNets under a frozen pretrained CLIP
    /// text encoder; that run's hash becomes part of this run's. A folder written by `unetlab
    /// text-encoder` (the run's text encoder alone) is taken like the run itself.
    #[arg(long, value_name = "CHECKPOINT_OR_RUN")]
    frozen_text_encoder: Option<PathBuf>,
    /// The run directory (default: `runs/<config name>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Ignore a checkpoint in --out and start over.
    #[arg(long)]
    restart: bool,
    /// CPU threads (default: all).
    #[arg(long)]
    threads: Option<usize>,
    /// Also score the EMA weights every N steps while training (FD and alignment against
    /// images seen, in quality.csv); the finished run is always scored.
    #[arg(long, value_name = "N", conflicts_with = "no_metrics")]
    score_every: Option<u64>,
    /// Skip the metrics (FD and text alignment, scored on shapes runs after training).
    #[arg(long)]
    no_metrics: bool,
    /// Where the evaluator network is cached (default: $UNETLAB_CACHE, else
    /// $XDG_CACHE_HOME/unetlab, else ~/.cache/unetlab). It is trained there the first time.
    #[arg(long)]
    evaluator_cache: Option<PathBuf>,
    /// Print run.json to stdout when done.
    #[arg(long)]
    json: bool,
}

/// Runs `unetlab train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    prepare_process(args.threads).map_err(|e| anyhow!(e))?;
    let config = Config::load(&args.config)?;
    let recipe = recipe(args)?;
    if args.score_every == Some(0) {
        bail!("--score-every must be at least 1");
    }
    let data = DataSource::parse(&args.data).map_err(|e| anyhow!(e))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
    let proxy = proxy_spec(&config.spec, &recipe.proxy);
    eprintln!(
        "{}: proxy {} (levels {}), {} steps of batch {} on {}, run directory {}",
        config.name,
        proxy
            .levels
            .iter()
            .map(|l| l.channels.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        proxy.levels.len(),
        recipe.steps,
        recipe.batch,
        args.data,
        out.display()
    );
    let options = RunOptions {
        config,
        recipe,
        data,
        tokenizer: args.tokenizer.clone(),
        init_from: args.init_from.clone(),
        frozen_text_encoder: args.frozen_text_encoder.clone(),
        out,
        restart: args.restart,
        metrics: (!args.no_metrics).then(|| MetricsSetup {
            cache: args
                .evaluator_cache
                .clone()
                .unwrap_or_else(default_cache_dir),
            evaluator: EvaluatorRecipe::for_budget(args.budget),
            options: MetricOptions::for_budget(args.budget),
            every: args.score_every,
        }),
    };
    let bar = ProgressBar::hidden();
    let summary = train(&options, &mut |p| show_progress(&bar, p));
    bar.finish_and_clear();
    let summary = summary?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// The budget's recipe with the flags' overrides, validated.
fn recipe(args: &TrainArgs) -> Result<Recipe> {
    let mut recipe = Recipe::for_budget(args.budget);
    recipe.seed = args.seed;
    if let Some(s) = args.steps {
        recipe.steps = s;
    }
    if let Some(b) = args.batch {
        recipe.batch = b;
    }
    if let Some(lr) = args.lr {
        recipe.optimizer.lr = lr;
    }
    if let Some(beta2) = args.beta2 {
        recipe.optimizer.beta2 = beta2;
    }
    if let Some(w) = args.warmup {
        recipe.warmup = w;
    }
    if let Some(p) = args.prediction {
        recipe.prediction = p;
    }
    if let Some(gamma) = args.min_snr_gamma {
        recipe.min_snr_gamma = Some(gamma);
    }
    if args.uniform_weighting {
        recipe.min_snr_gamma = None;
    }
    if let Some(schedule) = args.schedule {
        recipe.schedule = schedule;
    }
    if let Some(shift) = args.noise_shift {
        recipe.noise_shift = shift;
    }
    if let Some(decay) = args.ema_decay {
        recipe.ema_decay = decay;
    }
    if let Some(c) = args.checkpoint_every {
        recipe.checkpoint_every = c;
    }
    if let Some(width) = args.base_width {
        if width == 0 || !width.is_multiple_of(recipe.proxy.norm_groups) {
            bail!(
                "--base-width {width}: must be a positive multiple of {} (the proxy's norm groups)",
                recipe.proxy.norm_groups
            );
        }
        recipe.proxy.base_width = width;
    }
    if let Some(layers) = args.text_layers {
        recipe.text_layers = layers;
    }
    recipe.validate().map_err(|e| anyhow!(e))?;
    recipe.warmup = recipe.warmup.min(recipe.steps / 2).max(1);
    Ok(recipe)
}

/// Shows one progress event on the terminal's bar.
fn show_progress(bar: &ProgressBar, p: Progress) {
    match p {
        Progress::Started { start, total } => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total);
            bar.set_position(start);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix("train");
            if start > 0 {
                bar.suspend(|| eprintln!("resuming from the checkpoint at step {start}"));
            }
        }
        Progress::Step {
            done,
            loss,
            steps_per_s,
        } => {
            bar.set_position(done);
            bar.set_message(format!("loss {loss:.4}  {steps_per_s:.2} steps/s"));
        }
        Progress::Validation { done, loss } => {
            bar.suspend(|| eprintln!("step {done}: validation loss {loss:.4}"));
        }
        Progress::EvaluatorTraining { done, total } => {
            if done == 1 {
                bar.set_prefix("evaluator (once)");
                bar.set_length(total);
            }
            bar.set_position(done);
            bar.set_message("");
        }
        Progress::Scoring { images } => {
            bar.set_prefix("scoring");
            bar.set_message(format!("generating and scoring {images} images"));
        }
        Progress::Sampled { done, total } => {
            bar.set_message(format!("generated {done} of {total} images"));
        }
    }
}

/// The finished run in two lines.
fn print_summary(summary: &RunSummary) {
    println!(
        "{}: {} steps, train loss {:.4}, validation loss {:.4}{}, {:.2} steps/s; proxy {:.2} M params ({:.2} G MACs) for a {:.1} M-param full-size UNet",
        summary.config,
        summary.steps,
        summary.final_train_loss,
        summary.validation_loss,
        summary
            .initial_validation_loss
            .map_or(String::new(), |v| format!(" (from {v:.4})")),
        summary.steps_per_s,
        summary.proxy_params as f64 / 1e6,
        summary.proxy_macs as f64 / 1e9,
        summary.full_params as f64 / 1e6,
    );
    if let Some(m) = &summary.metrics {
        println!(
            "metrics on {} validation captions: FD {:.1} (real images: {:.1}), text alignment {:.3}, attribute alignment {:.3} (evaluator accuracy {:.3}); samples.png",
            m.options.images,
            m.quality.fd,
            m.real_fd,
            m.quality.text_alignment,
            m.quality.attribute_alignment,
            m.evaluator_accuracy.attribute,
        );
    }
}
