//! `unetlab sample`: images from a trained run (DDIM with classifier-free guidance).

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use unetlab_export::Bundle;
use unetlab_train::model::ProxyModel;
use unetlab_train::sample::{sample, write_grid, SampleOptions, TrainedRun};
use unetlab_train::schedule::{Prediction, ScheduleKind};
use unetlab_train::tokenizer::TextTokenizer;
use unetlab_train::Recipe;

/// Generate images from a training run's EMA weights (or from its exported bundle):
/// deterministic DDIM (η = 0) with classifier-free guidance, one grid row per prompt.
#[derive(clap::Args)]
pub struct SampleArgs {
    /// A run directory written by `unetlab train`.
    #[arg(required_unless_present = "export", conflicts_with = "export")]
    run: Option<PathBuf>,
    /// A bundle written by `unetlab export --run` instead of a run directory.
    #[arg(long, value_name = "BUNDLE")]
    export: Option<PathBuf>,
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
    /// Start every row from the same noise, so that a column shows what the prompt alone
    /// changes (e.g. a caption and the same caption with another relation).
    #[arg(long)]
    same_noise: bool,
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
    let (name, model, tokenizer, (prediction, schedule, noise_shift)) = match (
        &args.run,
        &args.export,
    ) {
        (Some(dir), _) => {
            let run = TrainedRun::open(dir)?;
            let recipe = &run.summary.recipe;
            let trained_with = (recipe.prediction, recipe.schedule, recipe.noise_shift);
            (run.summary.config, run.model, run.tokenizer, trained_with)
        }
        (None, Some(dir)) => {
            let bundle = Bundle::open(dir)?;
            let Some((text_spec, text, tokenizer)) = bundle.load_text_encoder(&Device::Cpu)? else {
                bail!(
                    "{}: this bundle has no text encoder (export a training run with --run to sample from it)",
                    dir.display()
                );
            };
            let unet = bundle.load_model(&Device::Cpu, DType::F32)?;
            let tokenizer = TextTokenizer::load(&tokenizer, text_spec.tokens)?;
            let model = ProxyModel {
                unet,
                text,
                text_spec,
            };
            // The run's recipe travels in the manifest; runs recorded before `prediction` and
            // `schedule` existed predicted ε on the unshifted scaled-linear schedule (the defaults).
            let trained_with = bundle
                .manifest
                .training
                .as_ref()
                .and_then(|t| t.get("recipe"))
                .and_then(|r| serde_json::from_value::<Recipe>(r.clone()).ok())
                .map(|r| (r.prediction, r.schedule, r.noise_shift))
                .unwrap_or((Prediction::default(), ScheduleKind::default(), 1.0));
            (bundle.manifest.name, model, tokenizer, trained_with)
        }
        (None, None) => unreachable!("clap requires a run or --export"),
    };
    let prompts: Vec<&str> = args
        .prompt
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.as_str(), args.count))
        .collect();
    let options = SampleOptions {
        steps: args.steps,
        cfg: args.cfg,
        seed: args.seed,
        prediction,
        schedule,
        noise_shift,
    };
    let images = if args.same_noise {
        let rows = prompts
            .chunks(args.count)
            .map(|row| sample(&model, &tokenizer, row, options, &mut |_| {}))
            .collect::<Result<Vec<_>, _>>()?;
        Tensor::cat(&rows, 0)?
    } else {
        sample(&model, &tokenizer, &prompts, options, &mut |_| {})?
    };
    write_grid(&images, args.count, args.zoom, &args.out)?;
    eprintln!(
        "{}: {} image(s), {} DDIM steps, guidance {}, seed {}{} -> {}",
        name,
        prompts.len(),
        args.steps,
        args.cfg,
        args.seed,
        if args.same_noise {
            " (the same noise in every row)"
        } else {
            ""
        },
        args.out.display()
    );
    Ok(())
}
