//! The evaluator and the metrics built on it: it reads `shapes` images back accurately, training
//! is deterministic and cached, and the Fréchet distance separates real from noise.

use candle_core::{Device, Tensor};
use unetlab_model::standard_normal;
use unetlab_train::evaluator::{validation_batch, Evaluator, EvaluatorRecipe};
use unetlab_train::metrics::Reference;

#[test]
fn evaluator_reads_attributes_and_fd_separates_real_from_noise() {
    let cache = tempfile::tempdir().unwrap();
    let recipe = EvaluatorRecipe::default();
    let mut last_loss = f64::NAN;
    let evaluator =
        Evaluator::cached(cache.path(), recipe, &mut |_, _, loss| last_loss = loss).unwrap();
    assert!(last_loss.is_finite(), "training ran and reported its loss");
    assert!(Evaluator::cache_path(cache.path(), &recipe).is_file());

    // Attribute accuracy on validation images it never saw (the split has its own seed).
    let accuracy = evaluator.accuracy(512).unwrap();
    eprintln!("evaluator accuracy: {accuracy:?}");
    assert!(accuracy.attribute >= 0.95, "{accuracy:?}");

    // Loaded from the cache: the same predictions without training (a failing trainer would be
    // called otherwise).
    let cached = Evaluator::cached(cache.path(), recipe, &mut |_, _, _| {
        panic!("the cached evaluator must not be retrained")
    })
    .unwrap();
    assert_eq!(cached.accuracy(512).unwrap(), accuracy);

    // FD: real validation images 0..n against held-out real images n..2n and against noise.
    let n = 256;
    let reference = Reference::new(&evaluator, n, 32).unwrap();
    let (_, held_out) = validation_batch(32, n as u64..2 * n as u64).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let noise = standard_normal(&mut rng, n * 3 * 32 * 32);
    let noise = (Tensor::from_vec(noise, (n, 3, 32, 32), &Device::Cpu).unwrap() * 0.5)
        .unwrap()
        .clamp(-1f32, 1f32)
        .unwrap();
    let real = reference.score(&evaluator, &held_out).unwrap();
    let fake = reference.score(&evaluator, &noise).unwrap();
    eprintln!("held-out real: {real:?}\nnoise: {fake:?}");
    assert!(real.fd * 10.0 < fake.fd, "{real:?} vs {fake:?}");
    // Held-out images have other captions, so they align with the reference captions no better
    // than chance; the reference's own images align as well as the evaluator is accurate.
    let (_, own) = validation_batch(32, 0..n as u64).unwrap();
    let matched = reference.score(&evaluator, &own).unwrap();
    assert!(matched.fd < 1e-6, "identical sets: {matched:?}");
    assert!(matched.text_alignment > 0.8, "{matched:?}");
    assert!(real.text_alignment < 0.05, "{real:?}");
    // A covariance needs two samples: one image is an error, not a panic.
    assert!(Reference::new(&evaluator, 1, 32).is_err());
}

#[test]
fn evaluator_training_is_deterministic() {
    let recipe = EvaluatorRecipe {
        steps: 6,
        batch: 8,
        ..EvaluatorRecipe::default()
    };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    Evaluator::cached(a.path(), recipe, &mut |_, _, _| {}).unwrap();
    Evaluator::cached(b.path(), recipe, &mut |_, _, _| {}).unwrap();
    let read = |dir: &std::path::Path| std::fs::read(Evaluator::cache_path(dir, &recipe)).unwrap();
    assert_eq!(read(a.path()), read(b.path()));
    let other = EvaluatorRecipe { seed: 1, ..recipe };
    assert_ne!(
        Evaluator::cache_path(a.path(), &recipe),
        Evaluator::cache_path(a.path(), &other),
        "the recipe is part of the cache key"
    );
}
