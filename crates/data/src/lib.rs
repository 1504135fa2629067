//! Captioned image data for short proxy training runs, with no network access.
//!
//! Every source yields [`Example`]s: an RGB image in CHW layout (`3 × size × size`, values in
//! `[-1, 1]`) and its caption.
//!
//! # The procedural dataset ([`shapes`])
//!
//! [`shapes::Shapes`] draws one or two flat-coloured objects on a dark grey background
//! ([`shapes::BACKGROUND`], which is none of the object colours). Each object has three
//! attributes:
//!
//! - shape: circle, square, triangle ([`shapes::Shape`]);
//! - colour: red, green, blue, yellow, purple, white ([`shapes::Colour`]);
//! - size: small (about a quarter of the image side) or large (about 0.42 of it) ([`shapes::Size`]).
//!
//! A scene with two objects also has a spatial relation ([`shapes::Relation`]: left of, right of,
//! above, below) saying where the first object is relative to the second. Positions are drawn so
//! that the relation holds with a clear margin (the bounding boxes are at least
//! [`shapes::GAP`] of the image side apart along the relation's axis, and the offset across that
//! axis is at most [`shapes::MAX_SLOPE`] times the offset along it) and the objects never overlap.
//! The two objects always differ in at least one attribute.
//!
//! Captions come from [`shapes::TEMPLATES`] templates, chosen by the same random stream as the
//! scene:
//!
//! | template | one object                           | two objects                                    |
//! |----------|--------------------------------------|------------------------------------------------|
//! | 0        | `a small red circle`                 | `a small red circle above a large blue square` |
//! | 1        | `a picture of a small red circle`    | `a picture of a small red circle above a large blue square` |
//! | 2        | `an image of a small red circle`     | `a large blue square below a small red circle` (inverse phrasing) |
//! | 3        | `a small red circle on a dark background` | `an image of a small red circle above a large blue square` |
//!
//! [`shapes::parse_caption`] reads any caption produced by [`shapes::caption`] back into its
//! attributes, so a model's samples can be checked against the prompt that produced them;
//! [`shapes::Scene::canonical`] gives the two phrasings of the same picture one form.
//!
//! Splits: training example `i` is drawn from a ChaCha8 stream keyed by `(seed, Train, i)`;
//! validation example `i` from a stream keyed by `(VALIDATION_SEED, Validation, i)`, which does
//! not depend on the training seed. Every run and every variant is therefore evaluated on the same
//! validation images, and the two splits never share a stream. Both are unbounded and
//! deterministic: the same index always gives bit-identical pixels and caption.
//!
//! # User data ([`folder`], [`parquet`])
//!
//! [`folder::ImageFolder`] reads a directory of PNG/JPEG images, each with a same-name `.txt`
//! caption; [`parquet::read_parquet`] reads Parquet files in the Hugging Face `datasets` layout.
//! Both centre-crop every image to a square, resize it to the requested size (bilinear when
//! enlarging, area-weighted when shrinking), and skip unreadable inputs, counting them in a
//! [`Skipped`] that names the file (and row) of each.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

pub mod folder;
pub mod parquet;
pub mod shapes;

/// One training example: an RGB image, CHW layout, `3 × size × size`, values in `[-1, 1]`; its
/// caption; and, for the procedural dataset, the scene it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Pixels, channel-major (`[c][y][x]`), `3 * size * size` values in `[-1, 1]`.
    pub image: Vec<f32>,
    /// Side of the square image in pixels.
    pub size: usize,
    /// The caption.
    pub caption: String,
    /// The scene drawn, for examples of the procedural dataset; `None` for user data.
    pub scene: Option<shapes::Scene>,
}

impl Example {
    /// The value of channel `c` (0 red, 1 green, 2 blue) at row `y`, column `x`.
    ///
    /// # Panics
    ///
    /// If `c >= 3`, `y >= size` or `x >= size`.
    pub fn pixel(&self, c: usize, y: usize, x: usize) -> f32 {
        assert!(
            c < 3 && y < self.size && x < self.size,
            "pixel ({c}, {y}, {x}) out of range"
        );
        self.image[(c * self.size + y) * self.size + x]
    }
}

/// How many inputs were skipped and why (the first [`Skipped::MAX_REASONS`] reasons, each naming
/// its file, and row where there is one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Number of inputs skipped.
    pub count: usize,
    /// Why, for the first [`Skipped::MAX_REASONS`] of them.
    pub reasons: Vec<String>,
}

impl Skipped {
    /// How many reasons are kept; later skips are only counted.
    pub const MAX_REASONS: usize = 20;

    /// Counts one skipped input, keeping its reason if fewer than [`Skipped::MAX_REASONS`] are kept.
    pub fn push(&mut self, reason: impl Into<String>) {
        self.count += 1;
        if self.reasons.len() < Self::MAX_REASONS {
            self.reasons.push(reason.into());
        }
    }

    /// Whether nothing was skipped.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} skipped", self.count)?;
        for reason in &self.reasons {
            write!(f, "\n  {reason}")?;
        }
        if self.count > self.reasons.len() {
            write!(f, "\n  ... and {} more", self.count - self.reasons.len())?;
        }
        Ok(())
    }
}

/// Errors of the user-data readers; every message names the file (or folder) concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image {}: {message}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A caption file holds only whitespace.
    #[error("caption file {} is empty", path.display())]
    EmptyCaption {
        /// The caption file.
        path: PathBuf,
    },
    /// An index past the end of a folder.
    #[error("{}: index {index} out of range ({len} captioned images)", path.display())]
    Index {
        /// The folder.
        path: PathBuf,
        /// The index asked for.
        index: usize,
        /// The number of captioned images.
        len: usize,
    },
    /// An image size of zero or above [`MAX_SIZE`].
    #[error("{}: image size {size} is not supported (1..={MAX_SIZE})", path.display())]
    InvalidSize {
        /// The folder or file being opened.
        path: PathBuf,
        /// The size asked for.
        size: usize,
    },
    /// A Parquet file could not be parsed.
    #[error("cannot read parquet file {}: {message}", path.display())]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// A Parquet file lacks a usable image or caption column.
    #[error("parquet file {}: {message}", path.display())]
    Column {
        /// The Parquet file.
        path: PathBuf,
        /// Which column is missing or has the wrong type, and the columns there are.
        message: String,
    },
}

/// The largest image side the user-data readers produce.
pub const MAX_SIZE: usize = 16384;

fn check_size(path: &Path, size: usize) -> Result<u32, DataError> {
    if size == 0 || size > MAX_SIZE {
        return Err(DataError::InvalidSize {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(size as u32)
}

/// Decodes PNG or JPEG bytes (format from the content), centre-crops to a square, resizes to
/// `size × size` and returns CHW pixels in `[-1, 1]`.
fn decode_image(bytes: &[u8], size: u32) -> Result<Vec<f32>, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let decoded = reader.decode().map_err(|e| e.to_string())?;
    let rgb = decoded.to_rgb8();
    square_chw(&rgb, size)
}

/// Centre-crops an RGB image to a square, resizes it to `size × size` (triangle filter: bilinear
/// when enlarging, area-weighted when shrinking) and converts it to CHW in `[-1, 1]`.
fn square_chw(rgb: &image::RgbImage, size: u32) -> Result<Vec<f32>, String> {
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("image is {w}×{h}"));
    }
    let side = w.min(h);
    let cropped =
        image::imageops::crop_imm(rgb, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let resized = if side == size {
        cropped
    } else {
        image::imageops::resize(&cropped, size, size, image::imageops::FilterType::Triangle)
    };
    let n = (size * size) as usize;
    let mut out = vec![0.0f32; 3 * n];
    for (i, pixel) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = f32::from(pixel.0[c]) / 127.5 - 1.0;
        }
    }
    Ok(out)
}
