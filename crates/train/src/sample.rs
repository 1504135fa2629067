//! Sampling from a trained run: DDIM with classifier-free guidance, and image grids.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use unetlab_model::standard_normal;
use unetlab_spec::Config;

use crate::checkpoint;
use crate::error::TrainError;
use crate::model::{latents_to_images, ProxyModel};
use crate::proxy::proxy_spec;
use crate::schedule::{NoiseSchedule, Prediction, ScheduleKind};
use crate::tokenizer::TextTokenizer;
use crate::trainer::RunSummary;

/// A finished (or checkpointed) run, loaded for sampling with its EMA weights.
pub struct TrainedRun {
    /// The run directory.
    pub dir: PathBuf,
    /// Its summary (`run.json`).
    pub summary: RunSummary,
    /// The full-size config it is a proxy of.
    pub config: Config,
    /// The EMA weights as a model.
    pub model: ProxyModel,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
}

impl TrainedRun {
    /// Loads `run.json`, `config.yaml`, `tokenizer.json` and the checkpoint's EMA weights.
    pub fn open(dir: &Path) -> Result<TrainedRun, TrainError> {
        let bad = |message: String| TrainError::Run {
            run: dir.to_path_buf(),
            message,
        };
        let summary_path = dir.join("run.json");
        let text = std::fs::read_to_string(&summary_path)
            .map_err(|e| bad(format!("no run.json ({e}): not a finished training run")))?;
        let summary: RunSummary =
            serde_json::from_str(&text).map_err(|e| bad(format!("run.json: {e}")))?;
        let config_path = dir.join("config.yaml");
        let yaml = std::fs::read_to_string(&config_path).map_err(TrainError::io(&config_path))?;
        let config = Config::from_yaml(&yaml, &config_path.display().to_string(), Some(dir))
            .map_err(|e| bad(e.to_string()))?;
        if config.hash() != summary.config_hash {
            return Err(bad("config.yaml does not match run.json".into()));
        }
        let recipe = &summary.recipe;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"), recipe.proxy.tokens)?;
        let text_spec = recipe.text_encoder(tokenizer.vocab());
        let ck = checkpoint::load(&dir.join("checkpoint.safetensors"))?;
        if ck.info.run_hash != summary.run_hash {
            return Err(bad(
                "the checkpoint belongs to another run than run.json".into()
            ));
        }
        let proxy = proxy_spec(&config.spec, &recipe.proxy);
        let model = ProxyModel::from_tensors(proxy, text_spec, &ck.ema)?;
        Ok(TrainedRun {
            dir: dir.to_path_buf(),
            summary,
            config,
            model,
            tokenizer,
        })
    }
}

/// DDIM settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1 = no guidance).
    pub cfg: f64,
    /// Seed of the initial noise.
    pub seed: u64,
    /// What the network predicts (the run's recipe says).
    pub prediction: Prediction,
    /// The schedule it was trained on (the run's recipe says).
    pub schedule: ScheduleKind,
    /// The schedule's noise shift (the run's recipe says; [`NoiseSchedule::shifted`]).
    pub noise_shift: f64,
}

/// Prompts denoised together: memory stays bounded whatever the number of prompts, and every
/// committed score (at most 512 captions) ran as one batch, as before chunking.
pub const SAMPLE_CHUNK: usize = 512;

/// Images `[N, 3, S, S]` in [-1, 1] for `prompts`, by deterministic DDIM (η = 0) with
/// classifier-free guidance `ε = ε(∅) + s · (ε(c) − ε(∅))`, [`SAMPLE_CHUNK`] prompts at a time;
/// `progress(done)` after each chunk. Each image's initial noise is its slice of one draw for
/// all prompts, so the chunking does not change which noise an image starts from.
pub fn sample(
    model: &ProxyModel,
    tokenizer: &TextTokenizer,
    prompts: &[&str],
    options: SampleOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor, TrainError> {
    let device = Device::Cpu;
    let spec = &model.unet.spec;
    let n = prompts.len();
    let dims = (n, spec.in_channels, spec.latent_size, spec.latent_size);
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let count = n * spec.in_channels * spec.latent_size * spec.latent_size;
    let noise = Tensor::from_vec(standard_normal(&mut rng, count), dims, &device)?;
    let schedule = NoiseSchedule::new(options.schedule).shifted(options.noise_shift);
    let timesteps = schedule.ddim_timesteps(options.steps);
    let mut images = Vec::with_capacity(n.div_ceil(SAMPLE_CHUNK));
    for start in (0..n).step_by(SAMPLE_CHUNK) {
        let chunk = &prompts[start..n.min(start + SAMPLE_CHUNK)];
        let m = chunk.len();
        let mut x = noise.narrow(0, start, m)?;
        let empty = vec![""; m];
        let text = tokenizer.one_hot(&[chunk, &empty[..]].concat(), &device)?;
        for (i, &t) in timesteps.iter().enumerate() {
            let both = Tensor::cat(&[&x, &x], 0)?;
            let t_in = Tensor::full(t as f32, 2 * m, &device)?;
            let output = model.predict(&both, &t_in, &text, false)?;
            let (cond, uncond) = (output.narrow(0, 0, m)?, output.narrow(0, m, m)?);
            let guided = (&uncond + ((cond - &uncond)? * options.cfg)?)?;
            let prev = timesteps.get(i + 1).copied();
            x = schedule.ddim_step(&x, &guided, options.prediction, t, prev)?;
        }
        images.push(latents_to_images(&x)?.clamp(-1f32, 1f32)?);
        progress(start + m);
    }
    Ok(Tensor::cat(&images, 0)?)
}

/// Writes images `[N, 3, S, S]` in [-1, 1] as one PNG grid, `columns` wide, each image scaled up
/// `zoom` times (nearest neighbour) with a 2-pixel gap.
pub fn write_grid(
    images: &Tensor,
    columns: usize,
    zoom: usize,
    path: &Path,
) -> Result<(), TrainError> {
    let (n, _, s, _) = images.dims4()?;
    let columns = columns.clamp(1, n.max(1));
    let rows = n.div_ceil(columns);
    let (gap, cell) = (2, s * zoom);
    let width = columns * (cell + gap) + gap;
    let height = rows * (cell + gap) + gap;
    let pixels = ((images.to_dtype(DType::F32)? + 1.0)? * 127.5)?
        .clamp(0f32, 255f32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut canvas = vec![255u8; width * height * 3];
    for k in 0..n {
        let (r, c) = (k / columns, k % columns);
        let (top, left) = (gap + r * (cell + gap), gap + c * (cell + gap));
        for y in 0..cell {
            for x in 0..cell {
                for ch in 0..3 {
                    let v = pixels[((k * 3 + ch) * s + y / zoom) * s + x / zoom];
                    canvas[((top + y) * width + left + x) * 3 + ch] = v.round() as u8;
                }
            }
        }
    }
    unetlab_files::write_via_temp(
        path,
        |tmp| {
            let file = std::fs::File::create(tmp).map_err(TrainError::io(tmp))?;
            image::ImageEncoder::write_image(
                image::codecs::png::PngEncoder::new(std::io::BufWriter::new(file)),
                &canvas,
                width as u32,
                height as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| TrainError::Run {
                run: path.to_path_buf(),
                message: format!("cannot write PNG: {e}"),
            })
        },
        TrainError::io(path),
    )
}
