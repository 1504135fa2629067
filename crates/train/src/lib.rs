//! Short proxy training runs: the quality side of the study.
//!
//! A full-size UNet cannot be trained on a CPU, so each config is trained as its **proxy**
//! ([`proxy`]): the same structure and design choices at a small width on 32 × 32 images, with a
//! small text encoder trained jointly ([`model`]). Every variant gets the same [`recipe`], data
//! order and noise, so validation losses compare. [`trainer`] runs the loop: DDPM
//! noise-prediction loss on Stable Diffusion's schedule ([`schedule`]), classifier-free-guidance
//! caption dropout, AdamW with saveable state, warm-up + cosine learning rate, gradient clipping
//! and EMA weights ([`optim`]); checkpoints ([`checkpoint`]) make an interrupted run resume
//! bit-identically. Quality is scored by [`metrics`]: Fréchet distance ([`frechet`]) and text
//! alignment through an [`evaluator`] network trained once on `shapes`.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod evaluator;
pub mod frechet;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod proxy;
pub mod recipe;
pub mod run_report;
pub mod sample;
pub mod schedule;
pub mod step;
pub mod text_encoder;
pub mod throughput;
pub mod tokenizer;
pub mod trainer;

pub use error::TrainError;
pub use recipe::{Budget, Recipe};
pub use trainer::{train, Progress, RunOptions, RunSummary};
