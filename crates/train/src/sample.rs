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
}

/// Images `[N, 3, S, S]` in [-1, 1] for `prompts`, by deterministic DDIM (η = 0) with
/// classifier-free guidance `ε = ε(∅) + s · (ε(c) − ε(∅))`.
pub fn sample(
    model: &ProxyModel,
    tokenizer: &TextTokenizer,
    prompts: &[&str],
    options: SampleOptions,
) -> Result<Tensor, TrainError> {
    let device = Device::Cpu;
    let spec = &model.unet.spec;
    let n = prompts.len();
    let dims = (n, spec.in_channels, spec.latent_size, spec.latent_size);
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let count = n * spec.in_channels * spec.latent_size * spec.latent_size;
    let mut x = Tensor::from_vec(standard_normal(&mut rng, count), dims, &device)?;
    let empty = vec![""; n];
    let text = tokenizer.one_hot(&[prompts, &empty[..]].concat(), &device)?;
    let schedule = NoiseSchedule::new(options.schedule);
    let timesteps = schedule.ddim_timesteps(options.steps);
    for (i, &t) in timesteps.iter().enumerate() {
        let both = Tensor::cat(&[&x, &x], 0)?;
        let t_in = Tensor::full(t as f32, 2 * n, &device)?;
        let output = model.predict(&both, &t_in, &text, false)?;
        let (cond, uncond) = (output.narrow(0, 0, n)?, output.narrow(0, n, n)?);
        let guided = (&uncond + ((cond - &uncond)? * options.cfg)?)?;
        let prev = timesteps.get(i + 1).copied();
        x = schedule.ddim_step(&x, &guided, options.prediction, t, prev)?;
    }
    Ok(latents_to_images(&x)?.clamp(-1f32, 1f32)?)
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
