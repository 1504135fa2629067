//! The recipe's levers, checked against independent computations: the zero-terminal-SNR
//! schedule and its sampler spacing, the noise shift, min-SNR-γ weights derived from the x₀ error the sampler
//! actually makes, recipe validation, and the attribute alignment split by kind.

use candle_core::{Device, Tensor};
use unetlab_data::shapes::{Colour, Relation, Shape, Size};
use unetlab_train::evaluator::Attributes;
use unetlab_train::metrics::AttributeRates;
use unetlab_train::schedule::{NoiseSchedule, Prediction, ScheduleKind, TRAIN_STEPS};
use unetlab_train::{Budget, Recipe};

fn scalar(v: f64) -> Tensor {
    Tensor::new(&[v as f32], &Device::Cpu).unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.to_vec1::<f32>().unwrap()[0] as f64
}

#[test]
fn zero_terminal_snr_shifts_and_scales_the_scaled_linear_schedule() {
    let (linear, zero) = (
        NoiseSchedule::new(ScheduleKind::ScaledLinear),
        NoiseSchedule::new(ScheduleKind::ZeroTerminalSnr),
    );
    let last = TRAIN_STEPS - 1;
    assert!(
        zero.alphas_cumprod[last].abs() < 1e-15,
        "pure noise at t = 999"
    );
    assert_eq!(zero.snr(last), 0.0);
    assert!((zero.alphas_cumprod[0] - linear.alphas_cumprod[0]).abs() < 1e-12);
    assert!(zero.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
    // √ᾱ is an affine map of the original √ᾱ: differences keep their ratios.
    let root = |s: &NoiseSchedule, t: usize| s.alphas_cumprod[t].sqrt();
    let ratio = |t1: usize, t2: usize| {
        (root(&zero, t1) - root(&zero, t2)) / (root(&linear, t1) - root(&linear, t2))
    };
    for (t1, t2) in [(0, 999), (10, 500), (300, 700), (998, 999)] {
        assert!((ratio(t1, t2) - ratio(0, 999)).abs() < 1e-9, "{t1} {t2}");
    }
    // The original keeps a trace of the image at t = 999; the rescaled one does not.
    assert!(linear.snr(last) > 4e-3);
}

#[test]
fn a_noise_shift_divides_every_snr_by_its_square() {
    for kind in [ScheduleKind::ScaledLinear, ScheduleKind::ZeroTerminalSnr] {
        let plain = NoiseSchedule::new(kind);
        assert_eq!(
            plain.clone().shifted(1.0).alphas_cumprod,
            plain.alphas_cumprod
        );
        for shift in [0.5, 4.0, 8.0] {
            let shifted = NoiseSchedule::new(kind).shifted(shift);
            for t in [0, 1, 250, 500, 900, 998] {
                let expected = plain.snr(t) / (shift * shift);
                assert!(
                    (shifted.snr(t) / expected - 1.0).abs() < 1e-9,
                    "{kind:?} shift {shift} t {t}: {} against {expected}",
                    shifted.snr(t)
                );
            }
            assert!(shifted.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
            // The sampler's spacing belongs to the kind, not to the shift.
            assert_eq!(shifted.ddim_timesteps(10), plain.ddim_timesteps(10));
        }
    }
    // Zero terminal SNR stays zero; the scaled-linear trace at t = 999 shrinks with the shift.
    let last = TRAIN_STEPS - 1;
    let zero = NoiseSchedule::new(ScheduleKind::ZeroTerminalSnr).shifted(8.0);
    assert_eq!(zero.snr(last), 0.0);
    let linear = NoiseSchedule::new(ScheduleKind::ScaledLinear).shifted(8.0);
    assert!(linear.snr(last) < 1e-4);
    // The recipe builds its schedule with its shift.
    let recipe = Recipe {
        noise_shift: 4.0,
        ..Recipe::for_budget(Budget::Quick)
    };
    let built = recipe.noise_schedule();
    assert!((built.snr(500) * 16.0 / NoiseSchedule::default().snr(500) - 1.0).abs() < 1e-9);
}

#[test]
fn each_schedule_has_its_sampler_spacing() {
    let linear = NoiseSchedule::new(ScheduleKind::ScaledLinear);
    assert_eq!(linear.ddim_timesteps(4), [750, 500, 250, 0]);
    let zero = NoiseSchedule::new(ScheduleKind::ZeroTerminalSnr);
    // diffusers' "trailing": round(arange(1000, 0, -1000 / n)) − 1.
    assert_eq!(zero.ddim_timesteps(4), [999, 749, 499, 249]);
    assert_eq!(zero.ddim_timesteps(3), [999, 666, 332]);
    let ten = zero.ddim_timesteps(10);
    assert_eq!((ten[0], ten[9], ten.len()), (999, 99, 10));
    assert_eq!(zero.ddim_timesteps(1), [999]);
}

#[test]
fn at_zero_snr_v_prediction_still_gives_the_clean_image() {
    // x_999 is pure noise and v = −x₀ there: one DDIM step from the true v lands on x₀.
    let zero = NoiseSchedule::new(ScheduleKind::ZeroTerminalSnr);
    let (x0, eps) = (0.4, -1.1);
    let clean = zero
        .ddim_step(&scalar(eps), &scalar(-x0), Prediction::V, 999, None)
        .unwrap();
    assert!((value(&clean) - x0).abs() < 1e-6);
}

#[test]
fn min_snr_weights_put_the_x0_error_at_min_snr_gamma() {
    // For each prediction, perturb the true output by δ, let the sampler's own step recover x̂₀,
    // and check weight · δ² = min(SNR, γ) · (x̂₀ − x₀)²: the min-SNR-γ weighting of the x₀ loss.
    let schedule = NoiseSchedule::default();
    let (x0, eps, delta, gamma) = (0.3, 0.8, 0.01, 5.0);
    for t in [5, 100, 400, 800, 999] {
        let (a, b) = schedule.weights(t);
        let x_t = a * x0 + b * eps;
        for (prediction, truth) in [
            (Prediction::Epsilon, eps),
            (Prediction::V, a * eps - b * x0),
        ] {
            let x0_hat = value(
                &schedule
                    .ddim_step(&scalar(x_t), &scalar(truth + delta), prediction, t, None)
                    .unwrap(),
            );
            let snr = schedule.snr(t);
            let weighted = prediction.min_snr_weight(snr, gamma) * delta * delta;
            let x0_loss = snr.min(gamma) * (x0_hat - x0).powi(2);
            assert!(
                (weighted - x0_loss).abs() <= 2e-3 * x0_loss.max(1e-12),
                "{prediction:?} t = {t}: {weighted} vs {x0_loss}"
            );
        }
    }
}

#[test]
fn recipes_refuse_what_cannot_train() {
    let quick = Recipe::for_budget(Budget::Quick);
    assert!(quick.validate().is_ok());
    let epsilon_at_zero_snr = Recipe {
        schedule: ScheduleKind::ZeroTerminalSnr,
        prediction: Prediction::Epsilon,
        ..quick.clone()
    };
    assert!(epsilon_at_zero_snr
        .validate()
        .unwrap_err()
        .contains("v-prediction"));
    for gamma in [0.0, -1.0, f64::NAN] {
        let bad = Recipe {
            min_snr_gamma: Some(gamma),
            ..quick.clone()
        };
        assert!(bad.validate().unwrap_err().contains("gamma"), "{gamma}");
    }
    let bad_ema = Recipe {
        ema_decay: 1.0,
        ..quick.clone()
    };
    assert!(bad_ema.validate().unwrap_err().contains("EMA"));
    for shift in [0.0, -2.0, f64::INFINITY, f64::NAN] {
        let bad = Recipe {
            noise_shift: shift,
            ..quick.clone()
        };
        assert!(
            bad.validate().unwrap_err().contains("noise shift"),
            "{shift}"
        );
    }
    // The new fields stay out of older runs' identities when unused, and round-trip when used.
    let plain = Recipe {
        min_snr_gamma: None,
        ..quick.clone()
    };
    let json = serde_json::to_value(&plain).unwrap();
    assert!(json.get("min_snr_gamma").is_none() && json.get("schedule").is_none());
    assert!(json.get("noise_shift").is_none());
    assert_eq!(serde_json::from_value::<Recipe>(json).unwrap(), plain);
    let shifted = Recipe {
        noise_shift: 4.0,
        ..quick
    };
    let json = serde_json::to_value(&shifted).unwrap();
    assert_eq!(json["noise_shift"], 4.0);
    assert_eq!(serde_json::from_value::<Recipe>(json).unwrap(), shifted);
}

#[test]
fn attribute_alignment_splits_by_kind() {
    let object = |shape, colour, size| (shape, colour, size);
    let truth = Attributes {
        objects: vec![
            object(Shape::Circle, Colour::Red, Size::Small),
            object(Shape::Square, Colour::Blue, Size::Large),
        ],
        relation: Some(Relation::LeftOf),
    };
    // Right count, wrong relation; first object's colour wrong, second object's shape wrong.
    let predicted = Attributes {
        objects: vec![
            object(Shape::Circle, Colour::Green, Size::Small),
            object(Shape::Triangle, Colour::Blue, Size::Large),
        ],
        relation: Some(Relation::Above),
    };
    let kinds = truth.agreement_by_kind(&predicted);
    let names: Vec<&str> = kinds.iter().map(|k| k.0).collect();
    assert_eq!(names, ["count", "relation", "shape", "colour", "size"]);
    let counts: Vec<(usize, usize)> = kinds.iter().map(|k| (k.1, k.2)).collect();
    assert_eq!(counts, [(1, 1), (0, 1), (1, 2), (1, 2), (2, 2)]);
    assert_eq!(truth.agreement(&predicted), (5, 8));

    // A single object read as none: its three attributes and the count are misses.
    let single = Attributes {
        objects: vec![object(Shape::Triangle, Colour::White, Size::Large)],
        relation: None,
    };
    let empty = Attributes {
        objects: Vec::new(),
        relation: None,
    };
    let rates = AttributeRates::of(
        &[truth.clone(), single.clone()],
        &[predicted.clone(), empty],
    );
    assert_eq!(rates.count, 0.5);
    assert_eq!(rates.relation, 0.0);
    assert_eq!(rates.shape, 1.0 / 3.0);
    assert_eq!(rates.colour, 1.0 / 3.0);
    assert_eq!(rates.size, 2.0 / 3.0);
    // The first scene's predicted axis is wrong and the second has one object: no direction.
    assert_eq!((rates.direction, rates.direction_scenes), (None, 0));
}

/// The direction along the axis is judged only where the axis and the pair of colours were
/// drawn, so that only the order can be wrong.
#[test]
fn direction_is_the_order_along_a_drawn_axis() {
    let scene = |colours: [Colour; 2], relation| Attributes {
        objects: colours
            .iter()
            .map(|&c| (Shape::Circle, c, Size::Large))
            .collect(),
        relation,
    };
    let above = Some(Relation::Above);
    let truth = scene([Colour::Red, Colour::Blue], above);
    let in_order = scene([Colour::Red, Colour::Blue], above);
    let swapped = scene([Colour::Blue, Colour::Red], above);
    assert_eq!(truth.direction(&in_order), Some(true));
    assert_eq!(truth.direction(&swapped), Some(false));
    // Shapes and sizes do not enter: only the colours tell the objects apart.
    let mut squares = swapped.clone();
    squares.objects[0].0 = Shape::Square;
    squares.objects[1].2 = Size::Small;
    assert_eq!(truth.direction(&squares), Some(false));
    for unjudged in [
        scene([Colour::Red, Colour::Blue], Some(Relation::LeftOf)),
        scene([Colour::Red, Colour::Green], above),
        Attributes {
            objects: vec![(Shape::Circle, Colour::Red, Size::Large)],
            relation: None,
        },
    ] {
        assert_eq!(truth.direction(&unjudged), None, "{unjudged:?}");
    }
    let same_colours = scene([Colour::Red, Colour::Red], above);
    assert_eq!(same_colours.direction(&same_colours), None);

    let rates = AttributeRates::of(
        &[truth.clone(), truth.clone(), truth.clone(), truth.clone()],
        &[
            in_order,
            swapped.clone(),
            swapped,
            scene([Colour::Red, Colour::Blue], None),
        ],
    );
    assert_eq!(rates.direction_scenes, 3);
    assert_eq!(rates.direction, Some(1.0 / 3.0));
}
