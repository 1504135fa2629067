//! `unetlab convert`: a config from one form to another (diffusers config.json, unetlab YAML,
//! self-contained unetlab YAML).

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use unetlab_spec::diffusers::diffusers_from_spec;
use unetlab_spec::explicit::explicit_yaml;
use unetlab_spec::Config;

/// Convert a config between its forms: a diffusers UNet2DConditionModel config (`unet/config.json`)
/// to unetlab YAML, a unetlab config to a diffusers config.json, or a unetlab config to
/// self-contained YAML (`extends` flattened, every default written).
///
/// Fails, naming the field, on any feature the other side does not model.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// A diffusers config.json, to unetlab YAML.
    #[arg(
        long,
        value_name = "CONFIG_JSON",
        required_unless_present_any = ["to_diffusers", "explicit"],
        conflicts_with_all = ["to_diffusers", "explicit"]
    )]
    from_diffusers: Option<PathBuf>,
    /// A preset or YAML config, to a diffusers UNet2DConditionModel config.json (only networks
    /// diffusers can build: softmax attention with separate K and V, GEGLU, dense convs, ...).
    #[arg(long, value_name = "CONFIG", conflicts_with = "explicit")]
    to_diffusers: Option<String>,
    /// A preset or YAML config, to self-contained unetlab YAML.
    #[arg(long, value_name = "CONFIG")]
    explicit: Option<String>,
    /// Write the result here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `unetlab convert`.
pub fn run(args: &ConvertArgs) -> Result<()> {
    let (config, text) = if let Some(json) = &args.from_diffusers {
        Config::from_diffusers_file(json)?
    } else if let Some(reference) = &args.to_diffusers {
        let config = Config::load(reference)?;
        let value = diffusers_from_spec(&config.spec)
            .map_err(|e| anyhow!("{}: diffusers cannot build this network: {e}", config.name))?;
        let json = serde_json::to_string_pretty(&value)? + "\n";
        (config, json)
    } else {
        let reference = args.explicit.as_ref().expect("clap requires one form");
        let config = Config::load(reference)?;
        let yaml = explicit_yaml(&config);
        (config, yaml)
    };
    match &args.out {
        Some(path) => {
            unetlab_files::write_file(path, &text)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({}, hash {})",
                path.display(),
                config.name,
                &config.hash()[..12]
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}
