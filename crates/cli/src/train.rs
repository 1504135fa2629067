//! `unetlab train`: one short proxy training run.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressStyle};
use polars::prelude::DataType;
use unetlab_bench::set_threads;
use unetlab_report::{lines, read_csv, write_parquet};
use unetlab_spec::Config;
use unetlab_train::data::DataSource;
use unetlab_train::proxy::proxy_spec;
use unetlab_train::{train, Budget, Progress, Recipe, RunOptions};

/// Train a config's proxy: the same structure and design choices at a small width, on 32×32
/// images with a small text encoder trained jointly (see `unetlab_train::proxy`).
///
/// DDPM noise prediction on Stable Diffusion's schedule, 10 % caption dropout (for classifier-free
/// guidance), AdamW with warm-up and cosine decay, gradient clipping and EMA weights. The run
/// directory gets loss.csv/.parquet, validation.csv/.parquet, the loss curves (loss.svg, loss.png),
/// run.json, tokenizer.json, config.yaml, proxy.yaml and checkpoint.safetensors. Run the same
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
    /// Seed of initialisation, data order and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint every N steps (default: the budget's).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// A tokenizer.json to use instead of training a word-level one on the captions.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Initialise parameters from another run's checkpoint by name (e.g. softmax → ReLU attention).
    #[arg(long, value_name = "CHECKPOINT_OR_RUN")]
    init_from: Option<PathBuf>,
    /// The run directory (default: runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Ignore a checkpoint in --out and start over.
    #[arg(long)]
    restart: bool,
    /// CPU threads (default: all).
    #[arg(long)]
    threads: Option<usize>,
    /// Print run.json to stdout when done.
    #[arg(long)]
    json: bool,
}

/// Runs `unetlab train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    set_threads(args.threads).map_err(|e| anyhow!(e))?;
    let config = Config::load(&args.config)?;
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
    if let Some(c) = args.checkpoint_every {
        recipe.checkpoint_every = c;
    }
    recipe.validate().map_err(|e| anyhow!(e))?;
    recipe.warmup = recipe.warmup.min(recipe.steps / 2).max(1);
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
        out,
        restart: args.restart,
    };
    let bar = ProgressBar::hidden();
    let mut on_progress = |p: Progress| match p {
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
    };
    let out = options.out.clone();
    let summary = train(&options, &mut on_progress);
    bar.finish_and_clear();
    let summary = summary?;
    write_loss_report(&out, &summary.config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
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
    }
    Ok(())
}

/// `loss.parquet`, `validation.parquet` and the loss curves (`loss.svg`, `loss.png`) from the
/// run's CSV logs.
fn write_loss_report(run: &Path, name: &str) -> Result<()> {
    let mut curves = Vec::new();
    for (stem, column, label) in [
        ("loss", "loss", "training loss"),
        ("validation", "validation_loss", "validation loss (EMA)"),
    ] {
        let mut df = read_csv(&run.join(format!("{stem}.csv")))?;
        write_parquet(&mut df, &run.join(format!("{stem}.parquet")))?;
        let steps = df.column("step")?.cast(&DataType::Float64)?;
        let values = df.column(column)?.cast(&DataType::Float64)?;
        let points = steps
            .f64()?
            .into_no_null_iter()
            .zip(values.f64()?.into_no_null_iter())
            .collect();
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
