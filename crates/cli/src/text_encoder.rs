//! `unetlab text-encoder`: keep a finished run's text encoder alone, for `--frozen-text-encoder`.

use std::path::PathBuf;

use anyhow::Result;
use unetlab_train::text_encoder::keep_text_encoder;

/// Keep a finished training run's text encoder alone: its EMA weights (a few hundred KB), its
/// tokenizer and `run.json`, with a README naming the run, in a folder that `unetlab train
/// --frozen-text-encoder` and `cargo xtask ablate --frozen-text-encoder` take like the run
/// itself. The run's whole checkpoint (UNet, EMA and optimizer moments: tens of MB) is left
/// behind, so the encoder can be committed and shared by studies.
#[derive(clap::Args)]
pub struct TextEncoderArgs {
    /// A finished run directory written by `unetlab train`.
    run: PathBuf,
    /// The folder to write (created; its files are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Print what was kept as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &TextEncoderArgs) -> Result<()> {
    let kept = keep_text_encoder(&args.run, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&kept)?);
    } else {
        println!(
            "{}: the text encoder of run {} ({} parameters, {} tensors, checkpoint {:.1} KiB)",
            args.out.display(),
            &kept.run_hash[..16],
            kept.parameters,
            kept.tensors,
            kept.checkpoint_bytes as f64 / 1024.0
        );
    }
    Ok(())
}
