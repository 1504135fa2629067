//! The bundle's `README.md`: what the model is, what it costs, how it was made and how to run it.

use std::fmt::Write;

use unetlab_spec::Config;

use crate::bundle::Manifest;

/// The model card of a bundle.
pub fn model_card(config: &Config, m: &Manifest) -> String {
    let spec = &config.spec;
    let mut s = String::new();
    let _ = writeln!(s, "# {} — unetlab inference bundle\n", m.name);
    if let Some(d) = &config.description {
        let _ = writeln!(s, "{d}\n");
    }
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| parameters | {} ({:.1} M) |",
        m.parameters,
        m.parameters as f64 / 1e6
    );
    let _ = writeln!(
        s,
        "| compute | {:.1} G MACs per sample at a {}×{} latent ({} tokens) |",
        m.macs as f64 / 1e9,
        m.latent_size,
        m.latent_size,
        m.tokens
    );
    let _ = match m.dynamic_shapes {
        true => writeln!(
            s,
            "| ONNX inputs | any batch, latent height and width (multiples of {}), token count |",
            1usize << (spec.levels.len() - 1)
        ),
        false => writeln!(
            s,
            "| ONNX inputs | any batch; a {0}×{0} latent and {1} tokens only (static graph) |",
            m.latent_size, m.tokens
        ),
    };
    let _ = writeln!(
        s,
        "| structure | {} levels ({}), {} res blocks, {} transformer blocks |",
        spec.levels.len(),
        spec.levels
            .iter()
            .map(|l| l.channels.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        spec.res_block_count(),
        spec.transformer_block_count()
    );
    let _ = writeln!(s, "| weights | {} ({}) |", m.weights, m.dtype);
    if let Some(q) = &m.int8 {
        let _ = writeln!(
            s,
            "| int8 | {} convs and linears as QDQ (int8 weights per output channel, int8 inputs per tensor); error against f32 on the test vector: max |Δ| {:.3e} ({:.2e} of max |output|); calibration: {} |",
            q.quantized_ops, q.max_abs_error, q.relative_error, q.calibration
        );
    }
    match &m.training {
        Some(t) => {
            let _ = writeln!(
                s,
                "| training | {} steps of batch {} on {}, seed {} (proxy run; recipe in manifest.json) |",
                t["steps"], t["recipe"]["batch"], t["data"], t["recipe"]["seed"]
            );
            let _ = writeln!(
                s,
                "| quality metrics | validation denoising loss {:.4} (untrained {}); FD and text alignment not computed |",
                t["validation_loss"].as_f64().unwrap_or(f64::NAN),
                t["initial_validation_loss"]
                    .as_f64()
                    .map_or("n/a".to_string(), |v| format!("{v:.4}"))
            );
        }
        None => {
            let _ = writeln!(
                s,
                "| quality metrics | none: this bundle was not trained by unetlab |"
            );
        }
    }
    match &m.latency {
        Some(l) => {
            let _ = writeln!(
                s,
                "| measured latency | {:.3} s median of {} runs ({}) |",
                l.median_s, l.runs, l.setting
            );
        }
        None => {
            let _ = writeln!(s, "| measured latency | not measured (`--bench-runs 0`) |");
        }
    }
    for l in &m.runtime_latencies {
        let _ = writeln!(
            s,
            "| measured latency | {:.3} s median of {} runs ({}) |",
            l.median_s, l.runs, l.setting
        );
    }
    let _ = writeln!(s, "| config hash | `{}` |", m.config_hash);
    let _ = writeln!(s, "| written by | unetlab {} |\n", m.unetlab_version);

    let _ = writeln!(s, "Made with:\n\n```sh\n{}\n```\n", m.command);
    let _ = writeln!(s, "## Files\n");
    let _ = writeln!(
        s,
        "- `config.yaml` / `config.json`: the resolved unetlab config (load it with `unetlab`)."
    );
    let _ = writeln!(
        s,
        "- `model.safetensors`: weights under diffusers names; the config and its hash are in the metadata."
    );
    let _ = writeln!(
        s,
        "- `model.onnx`: opset {}, inputs {}, output `output` {}.",
        m.opset,
        m.inputs
            .iter()
            .map(|i| format!("`{}` {} {}", i.name, i.dtype, shape(&i.shape)))
            .collect::<Vec<_>>()
            .join(", "),
        shape(&m.output.shape)
    );
    let _ = writeln!(
        s,
        "- `example_io.safetensors`: a test vector (batch 2) with unetlab's candle output, to check any runtime{}.",
        match m.dynamic_shapes {
            true => "; `dynamic.*` is a second one at batch 3, a taller latent and 5 more tokens",
            false => "",
        }
    );
    if m.int8.is_some() {
        let _ = writeln!(
            s,
            "  `output` is the int8 computation's (candle), `output_f32` the f32 model's: a runtime's int8 output matches `output` up to rounding-boundary flips, and its error against `output_f32` should be about the card's."
        );
    }
    match &m.diffusers {
        Ok(_) => {
            let _ = writeln!(
                s,
                "- `diffusers/`: a diffusers `UNet2DConditionModel` (`UNet2DConditionModel.from_pretrained(\"BUNDLE/diffusers\")`)."
            );
        }
        Err(why) => {
            let _ = writeln!(s, "- no `diffusers/`: {why}.");
        }
    }
    if m.text_encoder.is_some() {
        let _ = writeln!(
            s,
            "- `text_encoder.safetensors` / `text_encoder.onnx` (input `tokens_one_hot`, outputs `hidden_states`, `pooled`) and `tokenizer.json`: the text side, so the bundle alone can generate (`unetlab sample --export BUNDLE`)."
        );
    }
    let _ = writeln!(
        s,
        "- `manifest.json`: sizes and SHA-256 of every file; `unetlab forward --export BUNDLE` checks them."
    );
    s
}

fn shape(dims: &[serde_json::Value]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            serde_json::Value::String(s) => s.clone(),
            d => d.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
