//! Helpers of the kernels' tests.

use candle_core::{Device, Tensor};

/// Values in [-1, 1) from a small LCG: the tests need varied values, not a distribution.
pub fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Largest absolute difference relative to the largest magnitude of `b`.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
}

/// The gradients of `Σ ours·u` and of `Σ reference·u`, for one non-uniform upstream gradient `u`
/// (seeded by `seed`), so every output element weighs differently.
pub fn backward_both(
    ours: &Tensor,
    reference: &Tensor,
    seed: u64,
) -> (
    candle_core::backprop::GradStore,
    candle_core::backprop::GradStore,
) {
    let upstream = random(ours.dims(), seed);
    let loss = |y: &Tensor| (y * &upstream).unwrap().sum_all().unwrap();
    (
        loss(ours).backward().unwrap(),
        loss(reference).backward().unwrap(),
    )
}
