//! The readers of user files under fuzz: for each, valid seed inputs, how a case is derived from
//! them, and the real reader run on the case.

mod bundle;
mod config;
mod data;
mod search;
mod study;
mod tensors;
mod tokenizer;

use std::fmt::Debug;
use std::path::Path;

use anyhow::Result;
use rand_chacha::ChaCha8Rng;

use super::case::Files;

/// How a reader ended on one input when it did not panic: read (with a remark, e.g. that inputs
/// were skipped) or a named error.
pub type Outcome = Result<Option<String>, Failure>;

/// A reader's error: its kind (the error type's variant path, e.g. `Spec::Invalid`) and message.
#[derive(Debug)]
pub struct Failure {
    /// The variant path, counted per reader.
    pub kind: String,
    /// The error's message.
    pub message: String,
}

impl Failure {
    /// The failure of a typed error: its variant path from `Debug`, its message from `Display`.
    pub fn of<E: Debug + std::fmt::Display>(error: &E) -> Failure {
        Failure {
            kind: variant_path(&format!("{error:?}")),
            message: error.to_string(),
        }
    }
}

/// The leading variant names of an error's `Debug` text: `Spec(Invalid { .. })` → `Spec::Invalid`.
fn variant_path(debug: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = debug;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let after = &rest[end..];
        let is_variant = end > 0
            && (after.is_empty() || [")", "(", " {", ","].iter().any(|p| after.starts_with(p)));
        if !is_variant {
            break;
        }
        parts.push(&rest[..end]);
        match after.strip_prefix('(') {
            Some(inner) => rest = inner,
            None => break,
        }
    }
    if parts.is_empty() {
        "unnamed".into()
    } else {
        parts.join("::")
    }
}

/// A reader under fuzz.
pub trait Target {
    /// A case: the seed inputs mutated by `rng`.
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files;
    /// Runs the reader on the case in `dir`.
    fn read(&self, dir: &Path) -> Outcome;
}

/// A reader's name, what it reads, and how its seeds are built (in `scratch`).
pub struct Reader {
    /// Name on the command line and in reports.
    pub name: &'static str,
    /// The entry points it runs.
    pub reads: &'static str,
    /// Builds the target from valid seed inputs.
    pub build: fn(scratch: &Path) -> Result<Box<dyn Target>>,
}

/// Every reader, in the order they are run.
pub const READERS: &[Reader] = &[
    Reader {
        name: "config",
        reads: "unetlab_spec::Config::load (YAML with extends chains)",
        build: config::build_yaml,
    },
    Reader {
        name: "diffusers-config",
        reads: "unetlab_spec::Config::from_diffusers_file (diffusers config.json)",
        build: config::build_diffusers,
    },
    Reader {
        name: "study",
        reads: "xtask ablate's study files (ablate::study::plan, then Config::load per config)",
        build: study::build,
    },
    Reader {
        name: "search",
        reads: "unetlab_search::SearchFile::load, then the space's first and last genome counted",
        build: search::build,
    },
    Reader {
        name: "weights",
        reads: "unetlab_model::UnetModel::load (safetensors weights)",
        build: tensors::build_weights,
    },
    Reader {
        name: "checkpoint",
        reads: "unetlab_train::checkpoint::load",
        build: tensors::build_checkpoint,
    },
    Reader {
        name: "bundle",
        reads: "unetlab_export::Bundle::open, load_model, load_text_encoder, example_io",
        build: bundle::build,
    },
    Reader {
        name: "parquet",
        reads: "unetlab_data::parquet::read_parquet",
        build: data::build_parquet,
    },
    Reader {
        name: "image-folder",
        reads: "unetlab_data::folder::ImageFolder::open and load_all",
        build: data::build_folder,
    },
    Reader {
        name: "tokenizer",
        reads: "unetlab_train::tokenizer::TextTokenizer::load, ids, one_hot",
        build: tokenizer::build,
    },
];

/// The reader called `name`.
pub fn reader(name: &str) -> Option<&'static Reader> {
    READERS.iter().find(|r| r.name == name)
}

/// The micro UNet the tensor readers use: every block kind, a few thousand parameters.
pub const MICRO_CONFIG: &str = "name: fuzz-micro
unet:
  in_channels: 4
  out_channels: 4
  latent_size: 8
  text: {dim: 8, tokens: 4}
  time: {channels: 8, dim: 16}
  norm: {groups: 4}
  attention: {heads: 2}
  feed_forward: {mult: 2, activation: gelu}
  levels:
    - channels: 8
      down: {res_blocks: 1, transformer_depth: 1}
      up: {res_blocks: 2, transformer_depth: 1}
  mid: {res_blocks: 1, transformer_depth: 0}
";

/// The micro config, loaded.
pub fn micro_config() -> Result<unetlab_spec::Config> {
    Ok(unetlab_spec::Config::from_yaml(
        MICRO_CONFIG,
        "fuzz-micro.yaml",
        None,
    )?)
}

/// One of `files`' entries, chosen by `rng`.
pub fn pick<'a>(rng: &mut ChaCha8Rng, files: &'a Files) -> (&'a String, &'a Vec<u8>) {
    use rand::Rng;
    let i = rng.random_range(0..files.len());
    files.iter().nth(i).expect("in range")
}

#[cfg(test)]
mod tests {
    use super::variant_path;

    #[test]
    fn variant_paths_follow_tuple_variants() {
        assert_eq!(
            variant_path("Spec(Invalid { origin: \"x\" })"),
            "Spec::Invalid"
        );
        assert_eq!(variant_path("Io { path: \"a\" }"), "Io");
        assert_eq!(variant_path("Tokenizer(\"bad\")"), "Tokenizer");
        assert_eq!(variant_path("\"text\""), "unnamed");
        // Errors whose Debug is their message (candle's `bail!`) stop at the free text.
        assert_eq!(variant_path("Candle(AdamW state: x)"), "Candle");
    }
}
