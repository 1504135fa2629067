//! Where training images and captions come from, and in which order.

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use unetlab_data::shapes::{Shapes, Split};
use unetlab_data::{Example, Skipped};

use crate::error::TrainError;

/// `--data`: the procedural `shapes` dataset, a folder of images with `.txt` captions, or a
/// Parquet file in the Hugging Face datasets layout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// `shapes`.
    Shapes,
    /// A directory.
    Folder(PathBuf),
    /// A `.parquet` file.
    Parquet(PathBuf),
}

impl DataSource {
    /// `shapes`, a directory, or a `.parquet` file.
    pub fn parse(text: &str) -> Result<DataSource, String> {
        let path = PathBuf::from(text);
        if text == "shapes" {
            Ok(DataSource::Shapes)
        } else if path.is_dir() {
            Ok(DataSource::Folder(path))
        } else if path.extension().is_some_and(|e| e == "parquet") && path.is_file() {
            Ok(DataSource::Parquet(path))
        } else {
            Err(format!(
                "--data {text}: not `shapes`, a directory of images with .txt captions, or a .parquet file"
            ))
        }
    }
}

/// Images of one side length, in a deterministic order.
pub enum TrainData {
    /// Unbounded procedural data.
    Shapes(Shapes),
    /// A finite dataset split into training and validation examples.
    Finite {
        /// Training examples.
        train: Vec<Example>,
        /// Held-out examples (every 20th).
        validation: Vec<Example>,
    },
}

impl TrainData {
    /// Opens `source` at `image_size`; also returns what was skipped while reading it.
    pub fn open(
        source: &DataSource,
        image_size: usize,
        seed: u64,
    ) -> Result<(TrainData, Skipped), TrainError> {
        let (all, skipped) = match source {
            DataSource::Shapes => {
                let none = Skipped {
                    count: 0,
                    reasons: Vec::new(),
                };
                return Ok((TrainData::Shapes(Shapes::new(image_size, seed)), none));
            }
            DataSource::Folder(dir) => {
                unetlab_data::folder::ImageFolder::open(dir, image_size)?.load_all()
            }
            DataSource::Parquet(path) => {
                unetlab_data::parquet::read_parquet(path, image_size, None)?
            }
        };
        if all.len() < 2 {
            return Err(TrainError::Run {
                run: PathBuf::from("--data"),
                message: format!(
                    "only {} usable example(s) ({} skipped)",
                    all.len(),
                    skipped.count
                ),
            });
        }
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for (i, e) in all.into_iter().enumerate() {
            if i % 20 == 19 {
                validation.push(e);
            } else {
                train.push(e);
            }
        }
        if validation.is_empty() {
            validation.push(train.pop().expect("at least two examples"));
        }
        Ok((TrainData::Finite { train, validation }, skipped))
    }

    /// The examples of optimizer step `step`: positions `step·batch ..` of an endless stream
    /// (finite data: a fresh seeded shuffle per epoch).
    pub fn batch(&self, step: u64, batch: usize, seed: u64) -> Vec<Example> {
        let first = step * batch as u64;
        match self {
            TrainData::Shapes(s) => (first..first + batch as u64).map(|i| s.train(i)).collect(),
            TrainData::Finite { train, .. } => {
                let n = train.len() as u64;
                let mut order: Option<(u64, Vec<usize>)> = None;
                (first..first + batch as u64)
                    .map(|p| {
                        let epoch = p / n;
                        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                            order = Some((epoch, shuffled(train.len(), seed, epoch)));
                        }
                        let perm = &order.as_ref().expect("just set").1;
                        train[perm[(p % n) as usize]].clone()
                    })
                    .collect()
            }
        }
    }

    /// The first `n` validation examples (the same for every seed and variant).
    pub fn validation(&self, n: usize) -> Vec<Example> {
        match self {
            TrainData::Shapes(s) => (0..n as u64).map(|i| s.validation(i)).collect(),
            TrainData::Finite { validation, .. } => validation.iter().take(n).cloned().collect(),
        }
    }

    /// Captions to build a vocabulary from.
    pub fn vocabulary_captions(&self) -> Vec<String> {
        match self {
            TrainData::Shapes(s) => (0..4096)
                .map(|i| s.scene(Split::Train, i).1)
                .chain((0..512).map(|i| s.scene(Split::Validation, i).1))
                .collect(),
            TrainData::Finite { train, validation } => train
                .iter()
                .chain(validation)
                .map(|e| e.caption.clone())
                .collect(),
        }
    }
}

/// A seeded Fisher–Yates permutation of `0..n` for one epoch.
fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
    v
}
