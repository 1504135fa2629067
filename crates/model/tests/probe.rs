//! The probe interpreter: unquantized it is the candle forward; its block maxima and int8
//! arithmetic match direct computations.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use unetlab_model::probe::{fake_quantize, quantize_per_channel, OUTSIDE_BLOCKS};
use unetlab_model::{example_inputs, max_abs_diff, ModelError, Precision, UnetModel};
use unetlab_spec::Config;

fn every_choice() -> (Config, UnetModel) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/fixtures/every-choice.yaml");
    let config = Config::load(path.to_str().unwrap()).unwrap();
    let model = UnetModel::init(config.spec.clone(), 11, &Device::Cpu, DType::F32).unwrap();
    (config, model)
}

fn max_abs(t: &Tensor) -> f32 {
    unetlab_model::max_abs(t).unwrap()
}

#[test]
fn unquantized_the_probe_is_the_candle_forward() {
    let (config, model) = every_choice();
    let inputs = example_inputs(&config.spec, 2, 8, 5, 3, &Device::Cpu).unwrap();
    let expected = model.forward(&inputs).unwrap();
    let (watched, probe) = model.forward_probed(&inputs, Precision::Float).unwrap();
    assert!(max_abs_diff(&watched, &expected).unwrap() <= 1e-5);

    // conv_in's largest activation, computed directly.
    let param = |name: &str| {
        let (_, v) = model.params.vars().find(|(n, _)| *n == name).unwrap();
        v.as_tensor().clone()
    };
    let (w, b) = (param("conv_in.weight"), param("conv_in.bias"));
    let direct = inputs
        .sample
        .conv2d(&w, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
        .unwrap();
    let maxima = probe.block_maxima();
    let conv_in = maxima.iter().find(|m| m.path == "conv_in").unwrap();
    assert!((conv_in.max_abs - max_abs(&direct)).abs() <= 1e-5 * conv_in.max_abs);
    // Every block was watched; the output conv's maximum bounds the output.
    assert!(maxima.len() > 10);
    assert!(maxima
        .iter()
        .all(|m| m.max_abs > 0.0 && m.max_abs.is_finite()));
    let conv_out = maxima.iter().find(|m| m.path == "conv_out").unwrap();
    assert!((conv_out.max_abs - max_abs(&expected)).abs() <= 1e-4 * conv_out.max_abs);
    assert!(maxima
        .iter()
        .all(|m| m.path != OUTSIDE_BLOCKS || m.max_abs > 0.0));

    // One calibrated range per conv and linear: one per matrix or kernel weight.
    let matrices = model
        .params
        .vars()
        .filter(|(_, v)| matches!(v.rank(), 2 | 4))
        .count();
    assert_eq!(probe.input_ranges().len(), matrices);
}

#[test]
fn int8_quantization_is_symmetric_and_saturates() {
    let x = Tensor::new(&[0.0f32, 0.3, -1.0, 1.0, 2.0, -2.0], &Device::Cpu).unwrap();
    let q = fake_quantize(&x, 1.0).unwrap().to_vec1::<f32>().unwrap();
    let s = 1.0f32 / 127.0;
    let expected = [0.0, 38.0 * s, -127.0 * s, 127.0 * s, 127.0 * s, -128.0 * s];
    for (a, b) in q.iter().zip(expected) {
        assert!((a - b).abs() <= 1e-7, "{q:?} vs {expected:?}");
    }

    // Per output channel: each channel's extreme survives exactly, every value within half a
    // step of its channel's scale, an all-zero channel stays zero.
    let w = Tensor::new(
        &[[0.5f32, -0.25, 0.1], [0.0, 0.0, 0.0], [-3.0, 1.0, 2.9]],
        &Device::Cpu,
    )
    .unwrap();
    let q = quantize_per_channel(&w).unwrap().to_vec2::<f32>().unwrap();
    let w = w.to_vec2::<f32>().unwrap();
    for (row_q, row) in q.iter().zip(&w) {
        let range = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = if range == 0.0 {
            1.0 / 127.0
        } else {
            range / 127.0
        };
        for (a, b) in row_q.iter().zip(row) {
            assert!((a - b).abs() <= step / 2.0 + 1e-7);
            if b.abs() == range {
                assert!((a - b).abs() <= 1e-6);
            }
        }
    }
    assert_eq!(q[1], [0.0, 0.0, 0.0]);
}

#[test]
fn int8_convs_and_linears_cost_a_little_accuracy() {
    let (config, model) = every_choice();
    let inputs = example_inputs(&config.spec, 2, 8, 5, 3, &Device::Cpu).unwrap();
    let calibration = example_inputs(&config.spec, 2, 8, 5, 4, &Device::Cpu).unwrap();
    let (reference, _) = model.forward_probed(&inputs, Precision::Float).unwrap();
    let (_, calibrated) = model
        .forward_probed(&calibration, Precision::Float)
        .unwrap();
    let ranges = calibrated.input_ranges().to_vec();
    let (int8, _) = model
        .forward_probed(
            &inputs,
            Precision::Int8 {
                ranges: ranges.clone(),
            },
        )
        .unwrap();
    let relative = max_abs_diff(&int8, &reference).unwrap() / max_abs(&reference);
    assert!(
        relative > 1e-4 && relative < 0.1,
        "int8 relative error {relative}"
    );

    // Too few ranges: the uncalibrated call is named.
    let Err(e) = model.forward_probed(
        &inputs,
        Precision::Int8 {
            ranges: ranges[..3].to_vec(),
        },
    ) else {
        panic!("an uncalibrated conv must fail");
    };
    assert!(matches!(e, ModelError::Probe(_)));
    assert!(e.to_string().contains("call 3"), "{e}");
}
