//! Deterministic example inputs for benchmarks, smoke runs and tests.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use unetlab_graph::UnetInputs;
use unetlab_spec::{UnetSpec, SDXL_TIME_IDS};

use crate::error::ModelError;

/// Standard-normal values from a seeded ChaCha8 stream (Box–Muller).
pub fn standard_normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// SDXL's size conditioning for an image of `side` pixels, uncropped, as `n` values of rows of six
/// time ids (original height and width, crop top and left, target height and width).
pub fn size_conditioning(n: usize, side: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if (i % SDXL_TIME_IDS) / 2 == 1 {
                0.0
            } else {
                side
            }
        })
        .collect()
}

/// Inputs shaped for `spec` with a square latent: see [`example_inputs_sized`].
pub fn example_inputs(
    spec: &UnetSpec,
    batch: usize,
    latent_size: usize,
    tokens: usize,
    seed: u64,
    device: &Device,
) -> Result<UnetInputs<Tensor>, ModelError> {
    example_inputs_sized(spec, batch, [latent_size; 2], tokens, seed, device)
}

/// Inputs shaped for `spec` with a latent `[height, width]`: N(0, 1) latents and text states,
/// timesteps spread over [0, 1000), and for `text_time` configs N(0, 1) pooled text plus
/// SDXL-style size conditioning (8 × the latent height).
pub fn example_inputs_sized(
    spec: &UnetSpec,
    batch: usize,
    latent: [usize; 2],
    tokens: usize,
    seed: u64,
    device: &Device,
) -> Result<UnetInputs<Tensor>, ModelError> {
    let shapes = UnetInputs::shapes(spec, batch, latent, tokens);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pixels = (8 * latent[0]) as f32;
    let inputs = shapes.try_map(|name, dims| {
        let n: usize = dims.iter().product();
        let values = match name {
            "timestep" => (0..n).map(|i| ((i * 997 + 13) % 1000) as f32).collect(),
            "time_ids" => size_conditioning(n, pixels),
            _ => standard_normal(&mut rng, n),
        };
        Tensor::from_vec(values, dims.as_slice(), device)
    })?;
    Ok(inputs)
}
