//! Every preset and every config under `configs/` runs in candle, touching exactly the parameters
//! the cost interpreter counts; SD 1.5 runs once at full size.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use unetlab_cost::{count, Conditions};
use unetlab_graph::unet_forward;
use unetlab_model::{example_inputs, CandleOps, UnetModel};
use unetlab_spec::{presets, Config};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    files.sort();
    files
}

/// Runs one forward at `latent_size` and checks parameters and output against the cost interpreter.
fn check(reference: &str, latent_size: usize, dtype: DType) {
    let config = Config::load(reference).unwrap();
    let spec = config.spec.clone();
    let conditions = Conditions {
        batch: 1,
        latent_size,
        tokens: 3,
    };
    let cost = count(&spec, conditions).unwrap();
    let model = UnetModel::init(spec.clone(), 0, &Device::Cpu, dtype).unwrap();
    let mut ops = CandleOps::new(&model.params);
    let inputs = example_inputs(&spec, 1, latent_size, 3, 0, &Device::Cpu).unwrap();
    let inputs = model.cast_inputs(&inputs).unwrap();
    let out = unet_forward(&mut ops, &spec, &inputs).unwrap();

    let declared: Vec<&str> = cost.parameters.iter().map(|p| p.name.as_str()).collect();
    let accessed: Vec<&str> = ops.accessed().iter().map(String::as_str).collect();
    assert_eq!(
        accessed, declared,
        "{reference}: the candle forward used other parameters"
    );
    let candle_params: usize = model.params.vars().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(candle_params as u64, cost.params(), "{reference}");
    assert_eq!(
        out.dims(),
        [1, spec.out_channels, latent_size, latent_size],
        "{reference}"
    );
    let finite = out
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        finite.iter().all(|x| x.is_finite()),
        "{reference}: non-finite output"
    );
}

#[test]
fn every_preset_and_config_file_at_a_small_latent() {
    let mut refs: Vec<String> = presets::NAMES.iter().map(|s| s.to_string()).collect();
    refs.extend(yaml_files(&configs_dir()));
    refs.extend(yaml_files(&configs_dir().join("fixtures")));
    for reference in refs {
        let spec = Config::load(&reference).unwrap().spec;
        let smallest = 1 << (spec.levels.len() - 1);
        // SDXL is 2.6 B parameters: f16 keeps it at 5 GB.
        let dtype = if reference == "sdxl" {
            DType::F16
        } else {
            DType::F32
        };
        check(&reference, smallest, dtype);
    }
}

#[test]
fn sd15_at_full_size() {
    check("sd15", 64, DType::F32);
}
