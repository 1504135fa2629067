//! A finished run's text encoder alone: its EMA weights, tokenizer and `run.json` in a folder of a
//! few hundred KB that `--frozen-text-encoder` takes like the run itself. The paper trains every
//! UNet under one frozen, pretrained text encoder; a kept encoder can be committed and shared by
//! studies where the run's whole checkpoint (UNet, EMA and optimizer moments) could not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use unetlab_bench::Machine;
use unetlab_provenance::{now_utc, Build};

use crate::checkpoint;
use crate::error::TrainError;
use crate::trainer::{checkpoint_file, is_text_encoder, RunSummary};

/// The files of a run (and of a kept encoder) that `--frozen-text-encoder` reads besides the
/// checkpoint.
const RUN_FILES: [&str; 2] = ["run.json", "tokenizer.json"];

/// What [`keep_text_encoder`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct KeptTextEncoder {
    /// The source run's identity (what a run trained under the encoder records as
    /// `frozen_text_encoder`).
    pub run_hash: String,
    /// Tensors kept.
    pub tensors: usize,
    /// Parameters kept (the source run's `text_encoder_params`).
    pub parameters: u64,
    /// Size of the kept checkpoint.
    pub checkpoint_bytes: u64,
}

/// Writes the finished run `run`'s text encoder to the folder `out`: `checkpoint.safetensors`
/// with the EMA text-encoder weights alone (the weights `--frozen-text-encoder` takes) under the
/// run's checkpoint metadata, its `tokenizer.json` and `run.json`, and a README naming the run.
pub fn keep_text_encoder(run: &Path, out: &Path) -> Result<KeptTextEncoder, TrainError> {
    let bad = |message: String| TrainError::Run {
        run: run.to_path_buf(),
        message,
    };
    let summary_path = run.join("run.json");
    let summary_text = std::fs::read_to_string(&summary_path)
        .map_err(|e| bad(format!("no finished run here (run.json: {e})")))?;
    let summary: RunSummary = serde_json::from_str(&summary_text)
        .map_err(|e| bad(format!("run.json is not a run summary: {e}")))?;
    let ck = checkpoint::load(&checkpoint_file(run))?;
    if ck.info.run_hash != summary.run_hash || ck.info.step != summary.steps {
        return Err(bad(format!(
            "the checkpoint (run {}, step {}) is not the finished run of run.json (run {}, step \
             {}): resume the run to its end first",
            short(&ck.info.run_hash),
            ck.info.step,
            short(&summary.run_hash),
            summary.steps
        )));
    }
    let text: BTreeMap<_, _> = ck
        .ema
        .into_iter()
        .filter(|(name, _)| is_text_encoder(name))
        .collect();
    let parameters: u64 = text.values().map(|t| t.elem_count() as u64).sum();
    if text.is_empty() || parameters != summary.text_encoder_params {
        return Err(bad(format!(
            "the checkpoint's EMA weights hold {parameters} text-encoder parameters, run.json \
             says {}",
            summary.text_encoder_params
        )));
    }
    std::fs::create_dir_all(out).map_err(TrainError::io(out))?;
    let kept = out.join("checkpoint.safetensors");
    checkpoint::save_ema_only(&kept, &ck.info, &text)?;
    for name in RUN_FILES {
        let bytes = std::fs::read(run.join(name)).map_err(TrainError::io(&run.join(name)))?;
        let path = out.join(name);
        unetlab_files::write_file(&path, bytes).map_err(TrainError::io(&path))?;
    }
    let checkpoint_bytes = std::fs::metadata(&kept)
        .map_err(TrainError::io(&kept))?
        .len();
    let result = KeptTextEncoder {
        run_hash: summary.run_hash.clone(),
        tensors: text.len(),
        parameters,
        checkpoint_bytes,
    };
    let readme = out.join("README.md");
    unetlab_files::write_file(&readme, readme_text((run, out), &summary, &result))
        .map_err(TrainError::io(&readme))?;
    Ok(result)
}

/// The kept encoder's README: where it came from and how its run was trained.
fn readme_text((run, out): (&Path, &Path), summary: &RunSummary, kept: &KeptTextEncoder) -> String {
    let r = &summary.recipe;
    let weighting = r
        .min_snr_gamma
        .map_or("uniform".to_string(), |g| format!("min-SNR-{g}"));
    let trained = summary.trained_by.as_ref().unwrap_or(&summary.provenance);
    let mut s = format!(
        "# Text encoder of run `{}`\n\nWritten by `unetlab text-encoder {} --out {}` (build `{}`, \
         {}). Nothing here is edited by hand.\n\n",
        short(&summary.run_hash),
        run.display(),
        out.display(),
        Build::current().label(),
        now_utc(),
    );
    let _ = write!(
        s,
        "The EMA weights of the text encoder ({} parameters in {} tensors, {} layers of width {}, \
         a vocabulary of {}) of one finished `unetlab train` run, with its tokenizer and \
         `run.json`. `unetlab train --frozen-text-encoder <this folder>` and `cargo xtask ablate \
         --frozen-text-encoder <this folder>` take it like the run itself: every proxy then \
         trains its UNet alone under this encoder, kept frozen, as the paper trains every UNet \
         under a frozen pretrained CLIP.\n\n",
        kept.parameters, kept.tensors, r.text_layers, r.proxy.text_dim, summary.vocab,
    );
    let _ = writeln!(
        s,
        "| source run | config | proxy base width | steps x batch | images | peak lr | loss \
         weighting | noise shift | validation loss | trained by | trained on |\n|---|---|---:|\
         ---|---:|---:|---|---:|---:|---|---|\n| `{}` | {} | {} | {} x {} | {} | {} | {weighting} | {} | \
         {:.4} | {} {} | {} |",
        short(&summary.run_hash),
        summary.config,
        r.proxy.base_width,
        summary.steps,
        r.batch,
        summary.steps * r.batch as u64,
        r.optimizer.lr,
        r.noise_shift,
        summary.validation_loss,
        trained.build.label(),
        trained.measured_utc,
        summary
            .trained_on
            .as_ref()
            .map_or("not recorded".to_string(), Machine::cpu),
    );
    if let Some(parent) = &summary.initialised_from {
        let _ = writeln!(
            s,
            "\nThe source run started from the final EMA weights of run `{}` (`--init-from`), its \
             text encoder's included, so this encoder has seen that run's images too; `images` \
             counts the source run's own.",
            short(parent)
        );
    }
    if let Some(frozen) = &summary.frozen_text_encoder {
        let _ = writeln!(
            s,
            "\nThe source run kept the text encoder of run `{}` frozen: these are that run's \
             weights.",
            short(frozen)
        );
    }
    if let Some(m) = &summary.metrics {
        let q = &m.quality;
        let _ = writeln!(
            s,
            "\nThe source run's own scores ({} validation captions, {} DDIM steps, guidance {}): \
             FD {:.1} (real against real: {:.1}), attribute alignment {:.3}, text alignment \
             {:.3}.",
            m.options.images,
            m.options.ddim_steps,
            m.options.cfg,
            q.fd,
            m.real_fd,
            q.attribute_alignment,
            q.text_alignment,
        );
    }
    s
}

/// A run hash's first 16 characters, as the READMEs and messages name runs (the whole string if
/// a hand-edited `run.json` holds a shorter one).
fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}
