//! One proxy training run: data → DDPM noise-prediction loss → AdamW, with EMA weights,
//! validation loss, logs, checkpoints and bit-identical resume.
//!
//! Determinism: everything random in step `s` (caption dropout, timesteps, noise) comes from a
//! ChaCha8 stream keyed by (seed, s), and the examples of step `s` are positions `s·batch ..` of
//! the data order. A checkpoint therefore only needs weights, EMA, AdamW moments and `s`; resuming
//! from it replays exactly what an uninterrupted run does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use unetlab_bench::Machine;
use unetlab_data::Example;
use unetlab_graph::TextEncoderSpec;
use unetlab_provenance::{Code, Provenance};
use unetlab_spec::explicit::explicit_yaml;
use unetlab_spec::{Config, UnetSpec};

use crate::checkpoint::{self, CheckpointInfo};
use crate::data::{DataSource, TrainData};
use crate::error::TrainError;
use crate::evaluator::{Accuracy, Evaluator, EvaluatorRecipe};
use crate::metrics::{evaluate, MetricOptions, Quality, Reference};
use crate::model::ProxyModel;
use crate::optim::{ema_init, AdamW};
use crate::proxy::proxy_spec;
use crate::recipe::Recipe;
use crate::run_report::write_loss_report;
use crate::sample::write_grid;
use crate::schedule::{NoiseSchedule, Prediction, TRAIN_STEPS};
use crate::step::{denoising_loss, StepOutcome, Stepper};
use crate::tokenizer::TextTokenizer;

/// Seed of the validation noise: the same for every run, so validation losses compare.
pub const VALIDATION_NOISE_SEED: u64 = 0x0005_eed0_f7a1;

/// What to train and where.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The full-size config (its proxy is trained).
    pub config: Config,
    /// The recipe.
    pub recipe: Recipe,
    /// The data.
    pub data: DataSource,
    /// A `tokenizer.json` to use instead of training one on the captions.
    pub tokenizer: Option<PathBuf>,
    /// A checkpoint (or run directory) to initialise matching parameters from, by name.
    pub init_from: Option<PathBuf>,
    /// A run (or its checkpoint) whose text encoder this run takes and keeps frozen: its EMA
    /// `text.*` weights and, unless `tokenizer` says otherwise, the run's `tokenizer.json`.
    pub frozen_text_encoder: Option<PathBuf>,
    /// The run directory.
    pub out: PathBuf,
    /// Start over even if the run directory holds a checkpoint of this run.
    pub restart: bool,
    /// Score the finished run (shapes data only): FD and text alignment through the evaluator.
    pub metrics: Option<MetricsSetup>,
}

/// How a finished run is scored.
#[derive(Debug, Clone)]
pub struct MetricsSetup {
    /// Where the evaluator's weights are cached (trained there if missing).
    pub cache: PathBuf,
    /// The evaluator's recipe.
    pub evaluator: EvaluatorRecipe,
    /// What is generated and scored.
    pub options: MetricOptions,
    /// Also score every this many steps during training (a quality curve in `quality.csv`).
    pub every: Option<u64>,
}

/// A run's metrics (`metrics` in `run.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunMetrics {
    /// What was generated and scored.
    pub options: MetricOptions,
    /// The evaluator's recipe hash (first 16 hex digits).
    pub evaluator: String,
    /// The evaluator's attribute and exact accuracy on 512 real validation images: how far the
    /// alignment metric can be trusted.
    pub evaluator_accuracy: Accuracy,
    /// FD between the reference images and as many other real validation images: the floor a
    /// perfect generator would reach with this many samples.
    pub real_fd: f64,
    /// The EMA weights' quality.
    pub quality: Quality,
}

/// Progress of a run, for progress bars.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Training starts (or resumes) at `start` of `total` steps.
    Started {
        /// First step to run.
        start: u64,
        /// Last step.
        total: u64,
    },
    /// A step finished.
    Step {
        /// Steps completed.
        done: u64,
        /// Its loss.
        loss: f64,
        /// Throughput of this session so far.
        steps_per_s: f64,
    },
    /// A validation loss was computed.
    Validation {
        /// After this many steps.
        done: u64,
        /// Mean validation loss.
        loss: f64,
    },
    /// The evaluator is being trained (the first time only; then cached).
    EvaluatorTraining {
        /// Steps done.
        done: u64,
        /// Steps in all.
        total: u64,
    },
    /// Images are being generated and scored.
    Scoring {
        /// How many.
        images: usize,
    },
    /// Images generated so far for scoring (after each chunk of
    /// [`crate::sample::SAMPLE_CHUNK`]).
    Sampled {
        /// Generated.
        done: usize,
        /// To generate.
        total: usize,
    },
}

/// The outcome, also written to `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    /// Config name.
    pub config: String,
    /// Hash of the full-size config.
    pub config_hash: String,
    /// Hash of the run identity (config, recipe, data, vocabulary, initial weights).
    pub run_hash: String,
    /// The run hash of the checkpoint whose EMA weights this run started from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialised_from: Option<String>,
    /// The run hash of the checkpoint whose text encoder this run kept frozen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_text_encoder: Option<String>,
    /// The recipe.
    pub recipe: Recipe,
    /// The data.
    pub data: DataSource,
    /// Inputs skipped while reading the data.
    pub skipped_inputs: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Parameters of the full-size UNet.
    pub full_params: u64,
    /// MACs of the full-size UNet per sample at its latent size.
    pub full_macs: u64,
    /// Parameters of the proxy UNet.
    pub proxy_params: u64,
    /// MACs of the proxy UNet per sample.
    pub proxy_macs: u64,
    /// Parameters of the text encoder.
    pub text_encoder_params: u64,
    /// Steps completed.
    pub steps: u64,
    /// The step this session resumed from, if any.
    pub resumed_from: Option<u64>,
    /// Mean training loss of the last (up to) 20 steps of this session.
    pub final_train_loss: f64,
    /// Validation loss of the EMA weights after the last step.
    pub validation_loss: f64,
    /// Validation loss of the initial weights (fresh runs only).
    pub initial_validation_loss: Option<f64>,
    /// Training steps per second in this session (validation and checkpoints excluded); NaN
    /// when unknown (a run resumed with nothing left to train whose earlier session never wrote
    /// its summary), which JSON writes as `null`.
    #[serde(deserialize_with = "nan_if_null")]
    pub steps_per_s: f64,
    /// FD and text alignment of the EMA weights (shapes data with metrics requested).
    pub metrics: Option<RunMetrics>,
    /// The build that finished (and scored) the run, and when.
    pub provenance: Provenance,
    /// The build that ran the last training step, and when: `provenance` when this session
    /// trained, else carried over from the session that did (a re-score changes only
    /// `provenance`). None in run files recorded before this field.
    #[serde(default)]
    pub trained_by: Option<Provenance>,
    /// The machine that ran the last training step, carried over like `trained_by`. None in run
    /// files recorded before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_on: Option<Machine>,
}

/// Runs (or resumes) a training run in three parts: set-up (tokenizer, identity, weights, run
/// files), the step loop (validation, curve points, checkpoints) and the finish (costs, scoring,
/// `run.json`, the loss report). The run directory's contents are the same
/// whichever frontend calls this.
pub fn train(
    opts: &RunOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunSummary, TrainError> {
    let mut session = Session::open(opts)?;
    session.run_steps(progress)?;
    session.finish(progress)
}

/// A run being trained: everything set up, and the figures the loop accumulates.
struct Session<'a> {
    opts: &'a RunOptions,
    proxy: UnetSpec,
    data: TrainData,
    skipped_inputs: usize,
    tokenizer: TextTokenizer,
    text_spec: TextEncoderSpec,
    run_hash: String,
    initialised_from: Option<String>,
    /// The run hash of the frozen text encoder's run, if any.
    frozen_text_encoder: Option<String>,
    model: ProxyModel,
    ema: BTreeMap<String, Tensor>,
    adam: AdamW,
    /// The step the session started at (> 0 when resuming).
    start: u64,
    logs: Logs,
    schedule: NoiseSchedule,
    validation: Vec<Example>,
    initial_validation_loss: Option<f64>,
    validation_loss: f64,
    /// Training losses of every step so far (kept rows of a resumed run first).
    losses: Vec<f64>,
    training_time: f64,
}

/// The run's CSV logs.
struct Logs {
    loss: Log,
    validation: Log,
    /// `quality.csv`, when the run is scored.
    quality: Option<Log>,
}

impl<'a> Session<'a> {
    /// Validates the recipe, opens the data, loads or trains the tokenizer, computes the run's
    /// identity, and resumes from the checkpoint or initialises (from a parent run if asked),
    /// writing `tokenizer.json`, `config.yaml` and `proxy.yaml` for a new run.
    fn open(opts: &'a RunOptions) -> Result<Self, TrainError> {
        let recipe = &opts.recipe;
        let out = &opts.out;
        recipe.validate().map_err(|message| TrainError::Run {
            run: out.clone(),
            message,
        })?;
        std::fs::create_dir_all(out).map_err(TrainError::io(out))?;
        let proxy = proxy_spec(&opts.config.spec, &recipe.proxy);
        let (data, skipped) = TrainData::open(&opts.data, recipe.proxy.image_size, recipe.seed)?;
        for reason in skipped.reasons.iter().take(5) {
            eprintln!("skipped: {reason}");
        }
        if skipped.count > 0 {
            eprintln!("skipped {} unreadable input(s) in total", skipped.count);
        }

        let resuming = checkpoint_path(out).is_file() && !opts.restart;
        let tokenizer_path = out.join("tokenizer.json");
        let tokens = recipe.proxy.tokens;
        let frozen_text_tokenizer = opts.frozen_text_encoder.as_deref().map(|source| {
            checkpoint_file(source)
                .parent()
                .unwrap_or(Path::new("."))
                .join("tokenizer.json")
        });
        let tokenizer = match (
            &opts.tokenizer,
            resuming && tokenizer_path.is_file(),
            &frozen_text_tokenizer,
        ) {
            (Some(path), _, _) => TextTokenizer::load(path, tokens)?,
            (None, true, _) => TextTokenizer::load(&tokenizer_path, tokens)?,
            (None, false, Some(path)) => TextTokenizer::load(path, tokens)?,
            (None, false, None) => {
                let captions = data.vocabulary_captions();
                TextTokenizer::train(captions.iter().map(String::as_str), tokens)?
            }
        };
        let text_spec = recipe.text_encoder(tokenizer.vocab());
        let load_parent = |source: &Option<PathBuf>| {
            source
                .as_deref()
                .map(|source| checkpoint::load(&checkpoint_file(source)))
                .transpose()
        };
        let parent = load_parent(&opts.init_from)?;
        let text_parent = load_parent(&opts.frozen_text_encoder)?;
        let initialised_from = parent.as_ref().map(|ck| ck.info.run_hash.clone());
        let frozen_text_encoder = text_parent.as_ref().map(|ck| ck.info.run_hash.clone());
        let run_hash = run_identity(
            opts,
            text_spec,
            initialised_from.as_deref(),
            frozen_text_encoder.as_deref(),
        );

        let (model, ema, adam, start) = if resuming {
            let ck = checkpoint::load(&checkpoint_path(out))?;
            if ck.info.run_hash != run_hash {
                return Err(TrainError::Run {
                    run: out.clone(),
                    message: "holds a checkpoint of a different run (config, recipe or data \
                              changed): pass --restart to start over, or choose another --out"
                        .into(),
                });
            }
            let model = ProxyModel::from_tensors(proxy.clone(), text_spec, &ck.weights)?;
            let adam = AdamW::from_tensors(recipe.optimizer, ck.adam_step, ck.adam_m, ck.adam_v)?;
            (model, ck.ema, adam, ck.info.step)
        } else {
            let model = ProxyModel::init(proxy.clone(), text_spec, recipe.seed)?;
            if let (Some(source), Some(parent)) = (&opts.init_from, &parent) {
                init_from(&model, source, parent)?;
            }
            if let (Some(source), Some(parent)) = (&opts.frozen_text_encoder, &text_parent) {
                take_text_encoder(&model, source, parent)?;
            }
            let vars = model.named_vars();
            let trained = trained_vars(opts, &vars);
            let adam = AdamW::new(
                recipe.optimizer,
                trained.iter().map(|(n, v)| (n.as_str(), v)),
            )?;
            let ema = ema_init(&vars)?;
            // Also a given --tokenizer: the run directory alone must be enough to sample from.
            if opts.tokenizer.as_deref() != Some(tokenizer_path.as_path()) {
                tokenizer.save(&tokenizer_path)?;
            }
            write(&out.join("config.yaml"), &explicit_yaml(&opts.config))?;
            let proxy_config = Config {
                name: format!("{} (proxy)", opts.config.name),
                spec: proxy.clone(),
                ..opts.config.clone()
            };
            write(&out.join("proxy.yaml"), &explicit_yaml(&proxy_config))?;
            (model, ema, adam, 0)
        };

        let scored = scoring(opts).is_some();
        let logs = Logs {
            loss: Log::open(&out.join("loss.csv"), "step,loss,lr,grad_norm", start)?,
            validation: Log::open(&out.join("validation.csv"), "step,validation_loss", start)?,
            quality: scored
                .then(|| {
                    Log::open(
                        &out.join("quality.csv"),
                        "step,images,fd,attribute_alignment,text_alignment",
                        // A finished run is scored again: its last row is written anew.
                        start.min(recipe.steps.saturating_sub(1)),
                    )
                })
                .transpose()?,
        };
        // A resumed run's figures continue from its logs.
        let losses = logs.loss.kept.iter().map(|(_, v)| *v).collect();
        let initial_validation_loss = logs
            .validation
            .kept
            .first()
            .filter(|(s, _)| *s == 0)
            .map(|(_, v)| *v);
        let validation_loss = logs.validation.kept.last().map_or(f64::NAN, |(_, v)| *v);
        Ok(Session {
            opts,
            proxy,
            skipped_inputs: skipped.count,
            validation: data.validation(recipe.val_examples),
            data,
            tokenizer,
            text_spec,
            run_hash,
            initialised_from,
            frozen_text_encoder,
            model,
            ema,
            adam,
            start,
            logs,
            schedule: recipe.noise_schedule(),
            initial_validation_loss,
            validation_loss,
            losses,
            training_time: 0.0,
        })
    }

    /// Validation loss of `model` on the run's validation examples.
    fn validate(&self, model: &ProxyModel) -> Result<f64, TrainError> {
        let recipe = &self.opts.recipe;
        validation_loss(
            model,
            &self.tokenizer,
            &self.validation,
            &self.schedule,
            recipe.prediction,
            recipe.batch,
        )
    }

    /// The EMA weights as a model.
    fn ema_model(&self) -> Result<ProxyModel, TrainError> {
        ProxyModel::from_tensors(self.proxy.clone(), self.text_spec, &self.ema)
    }

    /// Trains from the session's start to the recipe's last step: logs every step, validates the
    /// EMA weights every `val_every` steps and at the end, scores curve points, checkpoints.
    fn run_steps(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), TrainError> {
        let recipe = &self.opts.recipe;
        let out = &self.opts.out;
        if self.start == 0 {
            let v = self.validate(&self.model)?;
            self.logs.validation.line(&format!("0,{v}"))?;
            self.initial_validation_loss = Some(v);
            self.validation_loss = v;
        }
        progress(Progress::Started {
            start: self.start,
            total: recipe.steps,
        });
        let vars = self.model.named_vars();
        let trained = trained_vars(self.opts, &vars);
        let mut last_checkpoint = self.start;
        for step in self.start..recipe.steps {
            let began = Instant::now();
            let stepper = Stepper {
                model: &self.model,
                vars: &trained,
                tokenizer: &self.tokenizer,
                data: &self.data,
                schedule: &self.schedule,
                recipe,
            };
            let (loss, lr, norm) = match stepper.step(&mut self.adam, &mut self.ema, step)? {
                StepOutcome::Updated {
                    loss,
                    lr,
                    grad_norm,
                    ..
                } => (loss, lr, grad_norm),
                StepOutcome::Diverged { value } => {
                    return Err(diverged(step, value, last_checkpoint, out))
                }
            };
            self.training_time += began.elapsed().as_secs_f64();

            let done = step + 1;
            self.logs.loss.line(&format!("{done},{loss},{lr},{norm}"))?;
            self.losses.push(loss);
            progress(Progress::Step {
                done,
                loss,
                steps_per_s: (done - self.start) as f64 / self.training_time.max(1e-9),
            });
            let last = done == recipe.steps;
            if done % recipe.val_every == 0 || last {
                self.validation_loss = self.validate(&self.ema_model()?)?;
                self.logs
                    .validation
                    .line(&format!("{done},{}", self.validation_loss))?;
                progress(Progress::Validation {
                    done,
                    loss: self.validation_loss,
                });
            }
            let every = scoring(self.opts).and_then(|s| s.every);
            if let (Some(setup), Some(every)) = (scoring(self.opts), every) {
                if done % every == 0 && !last {
                    let m = score(
                        setup,
                        &self.ema_model()?,
                        &self.tokenizer,
                        recipe,
                        None,
                        progress,
                    )?;
                    self.quality_line(done, &m)?;
                }
            }
            if done % recipe.checkpoint_every == 0 || last {
                let weights: Vec<(String, Tensor)> = vars
                    .iter()
                    .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                    .collect();
                let info = CheckpointInfo {
                    step: done,
                    run_hash: self.run_hash.clone(),
                };
                checkpoint::save(
                    &checkpoint_path(out),
                    &info,
                    &weights,
                    &self.ema,
                    &self.adam,
                )?;
                last_checkpoint = done;
            }
        }
        Ok(())
    }

    /// Appends a `quality.csv` line: step, images seen, FD, attribute and text alignment.
    fn quality_line(&mut self, step: u64, m: &RunMetrics) -> Result<(), TrainError> {
        let Some(log) = self.logs.quality.as_mut() else {
            return Ok(());
        };
        let q = m.quality;
        log.line(&format!(
            "{step},{},{},{},{}",
            step * self.opts.recipe.batch as u64,
            q.fd,
            q.attribute_alignment,
            q.text_alignment
        ))
    }

    /// Counts the proxy and the full network, scores the EMA weights (with `samples.png`),
    /// writes `run.json` and the loss report (`loss.parquet`, `validation.parquet`, the loss
    /// curves).
    fn finish(mut self, progress: &mut dyn FnMut(Progress)) -> Result<RunSummary, TrainError> {
        let opts = self.opts;
        let recipe = &opts.recipe;
        let out = &opts.out;
        let count = |spec: &UnetSpec, latent_size, tokens| {
            let conditions = unetlab_cost::Conditions {
                batch: 1,
                latent_size,
                tokens,
            };
            unetlab_cost::count(spec, conditions).map_err(unetlab_model::ModelError::from)
        };
        let proxy_cost = count(&self.proxy, self.proxy.latent_size, recipe.proxy.tokens)?;
        let full = &opts.config.spec;
        let full_cost = count(full, full.latent_size, full.text_tokens)?;
        let metrics = match scoring(opts) {
            Some(setup) => {
                let samples = out.join("samples.png");
                let model = self.ema_model()?;
                let m = score(
                    setup,
                    &model,
                    &self.tokenizer,
                    recipe,
                    Some(&samples),
                    progress,
                )?;
                self.quality_line(recipe.steps, &m)?;
                Some(m)
            }
            None => None,
        };
        // Whether this session ran any step; if not, the finished run's own figures carry over.
        let trained = self.start < recipe.steps;
        let previous = (!trained)
            .then(|| previous_summary(out, &self.run_hash))
            .flatten();
        let provenance = Provenance::now(Code::Training);
        let tail = &self.losses[self.losses.len().saturating_sub(20)..];
        let summary = RunSummary {
            config: opts.config.name.clone(),
            config_hash: opts.config.hash(),
            run_hash: self.run_hash.clone(),
            initialised_from: self.initialised_from,
            frozen_text_encoder: self.frozen_text_encoder,
            recipe: recipe.clone(),
            data: opts.data.clone(),
            skipped_inputs: self.skipped_inputs,
            vocab: self.tokenizer.vocab(),
            full_params: full_cost.params(),
            full_macs: full_cost.macs.total(),
            proxy_params: proxy_cost.params(),
            proxy_macs: proxy_cost.macs.total(),
            text_encoder_params: self
                .model
                .text
                .vars()
                .map(|(_, v)| v.elem_count() as u64)
                .sum(),
            steps: recipe.steps,
            resumed_from: (self.start > 0).then_some(self.start),
            final_train_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
            validation_loss: self.validation_loss,
            initial_validation_loss: self.initial_validation_loss,
            steps_per_s: if trained {
                (recipe.steps - self.start) as f64 / self.training_time.max(1e-9)
            } else {
                // Nothing left to train: the finished run's own throughput.
                previous.as_ref().map_or(f64::NAN, |p| p.steps_per_s)
            },
            metrics,
            trained_by: if trained {
                Some(provenance.clone())
            } else {
                previous
                    .clone()
                    .and_then(|p| p.trained_by.or(Some(p.provenance)))
            },
            trained_on: if trained {
                Some(Machine::current())
            } else {
                previous.and_then(|p| p.trained_on)
            },
            provenance,
        };
        write(
            &out.join("run.json"),
            &(serde_json::to_string_pretty(&summary).expect("JSON always prints") + "\n"),
        )?;
        write_loss_report(out, &summary.config)?;
        Ok(summary)
    }
}

/// The run's identity: config hash, recipe, data, text encoder, the parent run's hash and the
/// frozen text encoder's run hash.
fn run_identity(
    opts: &RunOptions,
    text_spec: TextEncoderSpec,
    initialised_from: Option<&str>,
    frozen_text_encoder: Option<&str>,
) -> String {
    let mut identity = serde_json::json!({
        "config": opts.config.hash(),
        "recipe": opts.recipe,
        "data": opts.data,
        "text": text_spec,
    });
    if let Some(hash) = initialised_from {
        identity["init_from"] = serde_json::json!(hash);
    }
    if let Some(hash) = frozen_text_encoder {
        identity["frozen_text_encoder"] = serde_json::json!(hash);
    }
    unetlab_files::sha256_hex(identity.to_string().as_bytes())
}

/// How the run is scored: only runs on `shapes` with metrics asked for.
fn scoring(opts: &RunOptions) -> Option<&MetricsSetup> {
    match (&opts.metrics, &opts.data) {
        (Some(setup), DataSource::Shapes) => Some(setup),
        _ => None,
    }
}

fn checkpoint_path(run: &Path) -> PathBuf {
    run.join("checkpoint.safetensors")
}

/// A number, or NaN where JSON has `null` (how serde_json writes NaN).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The run.json in `out`, if it belongs to this run (an earlier session's summary).
fn previous_summary(out: &Path, run_hash: &str) -> Option<RunSummary> {
    let text = std::fs::read_to_string(out.join("run.json")).ok()?;
    let previous: RunSummary = serde_json::from_str(&text).ok()?;
    (previous.run_hash == run_hash).then_some(previous)
}

/// Scores a trained proxy (EMA weights) with the evaluator; writes its first 32 images to
/// `samples` (a PNG grid) if given.
pub fn score(
    setup: &MetricsSetup,
    model: &ProxyModel,
    tokenizer: &TextTokenizer,
    recipe: &Recipe,
    samples: Option<&Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunMetrics, TrainError> {
    let image_size = recipe.proxy.image_size;
    let evaluator = Evaluator::cached(&setup.cache, setup.evaluator, &mut |done, total, _| {
        progress(Progress::EvaluatorTraining { done, total })
    })?;
    progress(Progress::Scoring {
        images: setup.options.images,
    });
    let reference = Reference::new(&evaluator, setup.options.images, image_size)?;
    let (quality, images) = evaluate(
        model,
        tokenizer,
        &evaluator,
        &reference,
        setup.options,
        recipe,
        &mut |done| {
            progress(Progress::Sampled {
                done,
                total: setup.options.images,
            })
        },
    )?;
    if let Some(path) = samples {
        let shown = images.dim(0)?.min(32);
        write_grid(&images.narrow(0, 0, shown)?, 8, 2, path)?;
    }
    Ok(RunMetrics {
        options: setup.options,
        evaluator: setup.evaluator.hash()[..16].to_string(),
        evaluator_accuracy: evaluator.accuracy(512)?,
        real_fd: reference.real_floor(&evaluator, image_size)?,
        quality,
    })
}

/// Validation loss: the mean denoising loss over `examples` with their real captions, at fixed
/// timesteps spread over the schedule and noise from [`VALIDATION_NOISE_SEED`].
pub fn validation_loss(
    model: &ProxyModel,
    tokenizer: &TextTokenizer,
    examples: &[Example],
    schedule: &NoiseSchedule,
    prediction: Prediction,
    batch: usize,
) -> Result<f64, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(VALIDATION_NOISE_SEED);
    let mut total = 0.0;
    for (c, chunk) in examples.chunks(batch.max(1)).enumerate() {
        let captions: Vec<&str> = chunk.iter().map(|e| e.caption.as_str()).collect();
        let timesteps: Vec<usize> = (0..chunk.len())
            .map(|i| ((c * batch + i) * 997 + 13) % TRAIN_STEPS)
            .collect();
        let loss = denoising_loss(
            model, tokenizer, chunk, &captions, &timesteps, &mut rng, schedule, prediction, None,
            false,
        )?;
        total += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
    }
    Ok(total / examples.len().max(1) as f64)
}

/// The checkpoint of `--init-from`: a file, or a run directory's checkpoint.
pub(crate) fn checkpoint_file(source: &Path) -> PathBuf {
    if source.is_dir() {
        source.join("checkpoint.safetensors")
    } else {
        source.to_path_buf()
    }
}

/// Copies every parameter whose name and shape match from another run's EMA weights (the
/// weights that run sampled and was scored with); reports what matched.
fn init_from(
    model: &ProxyModel,
    source: &Path,
    ck: &checkpoint::Checkpoint,
) -> Result<(), TrainError> {
    let path = checkpoint_file(source);
    let (mut copied, mut reshaped, mut missing) = (0, 0, 0);
    for (name, var) in model.named_vars() {
        match ck.ema.get(&name) {
            Some(t) if t.dims() == var.dims() => {
                var.set(t)?;
                copied += 1;
            }
            Some(_) => reshaped += 1,
            None => missing += 1,
        }
    }
    eprintln!(
        "--init-from {}: {copied} parameters copied, {reshaped} with another shape and {missing} absent kept at their initialisation",
        path.display()
    );
    if copied == 0 {
        return Err(TrainError::Run {
            run: path,
            message: "--init-from: no parameter matches this config by name and shape".into(),
        });
    }
    Ok(())
}

/// Copies every text-encoder parameter (`text.*`) from another run's EMA weights; all must be
/// there with the same shapes (the same text encoder size and vocabulary).
fn take_text_encoder(
    model: &ProxyModel,
    source: &Path,
    ck: &checkpoint::Checkpoint,
) -> Result<(), TrainError> {
    let path = checkpoint_file(source);
    let vars = model.named_vars();
    let text = vars.iter().filter(|(name, _)| is_text_encoder(name));
    for (name, var) in text.clone() {
        match ck.ema.get(name) {
            Some(t) if t.dims() == var.dims() => var.set(t)?,
            found => {
                let shape = found.map_or("absent".to_string(), |t| format!("{:?}", t.dims()));
                return Err(TrainError::Run {
                    run: path,
                    message: format!(
                        "--frozen-text-encoder: `{name}` is {shape} there, {:?} here: the text \
                         encoder must have the same layers, width and vocabulary",
                        var.dims()
                    ),
                });
            }
        }
    }
    eprintln!(
        "--frozen-text-encoder {}: {} text-encoder parameters taken and frozen",
        path.display(),
        text.count()
    );
    Ok(())
}

/// Whether a variable of [`ProxyModel::named_vars`] belongs to the text encoder.
pub(crate) fn is_text_encoder(name: &str) -> bool {
    name.starts_with("text.")
}

/// The variables the optimizer updates: all of them, or the UNet's alone when the text encoder
/// is frozen.
fn trained_vars(opts: &RunOptions, vars: &[(String, Var)]) -> Vec<(String, Var)> {
    vars.iter()
        .filter(|(name, _)| opts.frozen_text_encoder.is_none() || !is_text_encoder(name))
        .cloned()
        .collect()
}

fn diverged(step: u64, loss: f64, checkpoint_step: u64, run: &Path) -> TrainError {
    TrainError::Diverged {
        step,
        loss,
        checkpoint_step,
        run: run.to_path_buf(),
    }
}

/// Writes a whole file atomically (beside it, then renamed into place).
fn write(path: &Path, text: &str) -> Result<(), TrainError> {
    unetlab_files::write_file(path, text).map_err(TrainError::io(path))
}

/// An append-only CSV log whose rows are keyed by step; rows at or after the resume step (written
/// after the checkpoint by an interrupted session) are dropped on open.
struct Log {
    file: std::fs::File,
    path: PathBuf,
    /// (step, first value) of the rows kept from before a resume.
    kept: Vec<(u64, f64)>,
}

impl Log {
    fn open(path: &Path, header: &str, resume_step: u64) -> Result<Log, TrainError> {
        let kept: Vec<String> = if resume_step > 0 {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter(|l| {
                    l.split(',')
                        .next()
                        .and_then(|s| s.parse::<u64>().ok())
                        .is_some_and(|s| s <= resume_step)
                })
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let kept_values = kept
            .iter()
            .filter_map(|l| {
                let mut fields = l.split(',');
                let step = fields.next()?.parse().ok()?;
                Some((step, fields.next()?.parse().ok()?))
            })
            .collect();
        let mut text = format!("{header}\n");
        for line in kept {
            text.push_str(&line);
            text.push('\n');
        }
        // Rewritten beside the old log and renamed, so a kill here loses no rows.
        unetlab_files::write_via_temp(
            path,
            |tmp| std::fs::write(tmp, &text),
            std::convert::identity,
        )
        .map_err(TrainError::io(path))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(TrainError::io(path))?;
        Ok(Log {
            file,
            path: path.to_path_buf(),
            kept: kept_values,
        })
    }

    fn line(&mut self, line: &str) -> Result<(), TrainError> {
        writeln!(self.file, "{line}").map_err(TrainError::io(&self.path))
    }
}
