//! `unetlab forward`: one UNet evaluation from safetensors inputs to a safetensors output.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use unetlab_bench::DeviceArgs;
use unetlab_export::Bundle;
use unetlab_graph::UnetInputs;
use unetlab_model::{max_abs_diff, write_safetensors, UnetModel};
use unetlab_spec::Config;

/// Run one UNet evaluation (for golden tests and debugging).
///
/// INPUTS holds `sample` `[B, C, S, S]`, `timestep` `[B]`, `encoder_hidden_states` `[B, T, D]`, and for
/// `text_time` configs `text_embeds` and `time_ids`. OUTPUT gets `output` (f32).
///
/// With --export BUNDLE the network and weights come from a bundle written by `unetlab export`
/// (checked first); without --inputs it runs the bundle's own test vector and reports the largest
/// difference from the output stored there.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("network").required(true).args(["config", "diffusers_config", "export"]))]
pub struct ForwardArgs {
    /// A preset name or unetlab YAML config.
    #[arg(long)]
    config: Option<String>,
    /// A diffusers UNet2DConditionModel config.json instead of --config.
    #[arg(long, value_name = "CONFIG_JSON")]
    diffusers_config: Option<PathBuf>,
    /// A bundle directory written by `unetlab export` (config and weights from there).
    #[arg(long, value_name = "BUNDLE", conflicts_with_all = ["weights", "seed"])]
    export: Option<PathBuf>,
    /// Weights with diffusers names (e.g. diffusion_pytorch_model.safetensors).
    #[arg(long, conflicts_with = "seed")]
    weights: Option<PathBuf>,
    /// Seed for random weights when no --weights are given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The inputs (safetensors; default with --export: the bundle's example_io.safetensors).
    #[arg(long, required_unless_present = "export")]
    inputs: Option<PathBuf>,
    /// Where to write the output (safetensors, tensor `output`).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    run_on: DeviceArgs,
}

/// Runs `unetlab forward`.
pub fn run(args: &ForwardArgs) -> Result<()> {
    let (device, dtype) = args.run_on.open().map_err(|e| anyhow!(e))?;
    let bundle = args.export.as_deref().map(Bundle::open).transpose()?;
    let config = match (&args.config, &args.diffusers_config, &bundle) {
        (Some(c), _, _) => Config::load(c)?,
        (None, Some(path), _) => Config::from_diffusers_file(path)?.0,
        (None, None, Some(b)) => b.config.clone(),
        (None, None, None) => unreachable!("clap requires one"),
    };
    let spec = config.spec.clone();
    let inputs_path = match (&args.inputs, &bundle) {
        (Some(p), _) => p.clone(),
        (None, Some(b)) => b.dir.join("example_io.safetensors"),
        (None, None) => unreachable!("clap requires --inputs without --export"),
    };
    let mut tensors = candle_core::safetensors::load(&inputs_path, &device)
        .with_context(|| format!("reading inputs {}", inputs_path.display()))?;
    let reference = match (&args.inputs, &bundle) {
        (None, Some(_)) => {
            // The text encoder's part and the second (resized) vector are not these inputs.
            tensors.retain(|name, _| {
                !name.starts_with("text.")
                    && !name.starts_with(unetlab_export::bundle::DYNAMIC_PREFIX)
                    && name != unetlab_export::bundle::F32_OUTPUT
            });
            tensors.remove("output")
        }
        _ => None,
    };
    let inputs = take_inputs(&mut tensors, &config)?;
    if !tensors.is_empty() {
        let mut extra: Vec<&String> = tensors.keys().collect();
        extra.sort();
        eprintln!(
            "ignoring tensors in {} that are not inputs: {extra:?}",
            inputs_path.display()
        );
    }

    let model = match (&bundle, &args.weights) {
        (Some(b), _) => b.load_model(&device, dtype)?,
        (None, Some(w)) => UnetModel::load(spec, w, &device, dtype)?,
        (None, None) => {
            eprintln!("no --weights: random weights from seed {}", args.seed);
            UnetModel::init(spec, args.seed, &device, dtype)?
        }
    };
    let start = Instant::now();
    let output = model.forward(&inputs)?.to_dtype(DType::F32)?;
    eprintln!(
        "{}: output {:?} ({:?} on {}) in {:.3} s",
        config.name,
        output.dims(),
        dtype,
        args.run_on.device,
        start.elapsed().as_secs_f64()
    );
    if let Some(reference) = reference {
        let diff = max_abs_diff(&output, &reference)?;
        let int8 = bundle.as_ref().is_some_and(|b| b.manifest.int8.is_some());
        let note = match int8 {
            true => " (it holds the int8 graph's output; this forward computes in float)",
            false => "",
        };
        eprintln!("max |Δ| against the bundle's test vector: {diff:.3e}{note}");
    }
    let metadata = HashMap::from([
        ("unetlab.config".to_string(), config.name.clone()),
        ("unetlab.config_hash".to_string(), config.hash()),
    ]);
    write_safetensors(&args.output, &[("output", &output)], metadata)?;
    Ok(())
}

/// Takes the named inputs out of `tensors`, checking their shapes against the config.
fn take_inputs(
    tensors: &mut HashMap<String, Tensor>,
    config: &Config,
) -> Result<UnetInputs<Tensor>> {
    let spec = &config.spec;
    let mut take = |name: &str| {
        tensors
            .remove(name)
            .ok_or_else(|| anyhow!("inputs: missing tensor `{name}`"))
    };
    let sample = take("sample")?;
    let ehs = take("encoder_hidden_states")?;
    let (text_embeds, time_ids) = if spec.addition.is_some() {
        (Some(take("text_embeds")?), Some(take("time_ids")?))
    } else {
        (None, None)
    };
    let timestep = take("timestep")?;
    let &[batch, _, height, width] = sample.dims() else {
        bail!(
            "inputs: `sample` must be [B, C, H, W], found {:?}",
            sample.dims()
        );
    };
    let tokens = ehs.dims().get(1).copied().unwrap_or(0);
    for (what, size) in [("height", height), ("width", width)] {
        unetlab_spec::check_latent_size(spec.levels.len(), size)
            .map_err(|m| anyhow!("inputs: `sample` {what} {m}"))?;
    }
    let inputs = UnetInputs {
        sample,
        timestep,
        encoder_hidden_states: ehs,
        text_embeds,
        time_ids,
    };
    let expected = UnetInputs::shapes(spec, batch, [height, width], tokens);
    for ((name, t), (_, want)) in inputs.named().into_iter().zip(expected.named()) {
        if t.dims() != want.as_slice() {
            bail!(
                "inputs: `{name}` has shape {:?}, {} expects {want:?}",
                t.dims(),
                config.name
            );
        }
    }
    Ok(inputs)
}
