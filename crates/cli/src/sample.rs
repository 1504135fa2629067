//! `unetlab sample`: images from a trained run (DDIM with classifier-free guidance).

use std::path::PathBuf;

use anyhow::{bail, Result};
use unetlab_train::sample::{sample, write_grid, SampleOptions, TrainedRun};

/// Generate images from a training run's EMA weights: deterministic DDIM (η = 0) with
/// classifier-free guidance, one grid row per prompt.
#[derive(clap::Args)]
pub struct SampleArgs {
    /// A run directory written by `unetlab train`.
    run: PathBuf,
    /// A caption (repeat for several rows).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Images per prompt (one per grid column).
    #[arg(long, default_value_t = 4)]
    count: usize,
    /// DDIM steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Classifier-free guidance scale (1: none).
    #[arg(long, default_value_t = 4.0)]
    cfg: f64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pixel zoom of the grid.
    #[arg(long, default_value_t = 4)]
    zoom: usize,
    /// The PNG grid to write.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `unetlab sample`.
pub fn run(args: &SampleArgs) -> Result<()> {
    if args.count == 0 || args.steps == 0 || args.zoom == 0 {
        bail!("--count, --steps and --zoom must be at least 1");
    }
    let run = TrainedRun::open(&args.run)?;
    let prompts: Vec<&str> = args
        .prompt
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.as_str(), args.count))
        .collect();
    let options = SampleOptions {
        steps: args.steps,
        cfg: args.cfg,
        seed: args.seed,
    };
    let images = sample(&run.model, &run.tokenizer, &prompts, options)?;
    write_grid(&images, args.count, args.zoom, &args.out)?;
    eprintln!(
        "{}: {} image(s), {} DDIM steps, guidance {}, seed {} -> {}",
        run.summary.config,
        prompts.len(),
        args.steps,
        args.cfg,
        args.seed,
        args.out.display()
    );
    Ok(())
}
