//! `unetlab convert`: diffusers configs to unetlab YAML.

use std::path::PathBuf;

use anyhow::{Context, Result};
use unetlab_spec::Config;

/// Convert a diffusers UNet2DConditionModel config (`unet/config.json`) to unetlab YAML.
///
/// Fails, naming the field, on any diffusers feature unetlab does not model.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The diffusers config.json.
    #[arg(long, value_name = "CONFIG_JSON")]
    from_diffusers: PathBuf,
    /// Write the YAML here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `unetlab convert`.
pub fn run(args: &ConvertArgs) -> Result<()> {
    let (config, yaml) = Config::from_diffusers_file(&args.from_diffusers)?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, &yaml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({}, hash {})",
                path.display(),
                config.name,
                &config.hash()[..12]
            );
        }
        None => print!("{yaml}"),
    }
    Ok(())
}
