//! User training data: Parquet files and captioned image folders.

use std::io::Cursor;
use std::path::Path;

use anyhow::Result;
use image::{ImageFormat, Rgb, RgbImage};
use polars::prelude::*;
use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use unetlab_data::folder::ImageFolder;
use unetlab_data::parquet::read_parquet;
use unetlab_data::Skipped;

use super::{pick, Failure, Outcome, Target};
use crate::fuzz::case::Files;
use crate::fuzz::mutate;

/// The image side the data readers are asked for.
const SIZE: usize = 8;

/// A small image with a gradient, so decoding and resizing have work to do.
fn image(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 20) as u8, (y * 20) as u8, ((x + y) * 9) as u8])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .expect("encoding to memory");
    bytes
}

/// The seed images: PNG and JPEG, square, wide and tall.
fn seed_images() -> Vec<Vec<u8>> {
    vec![
        image(12, 12, ImageFormat::Png),
        image(16, 9, ImageFormat::Jpeg),
        image(5, 14, ImageFormat::Png),
        image(8, 8, ImageFormat::Jpeg),
    ]
}

/// An image mutated by its format (PNG chunk-aware), or left alone.
fn mutate_image(rng: &mut ChaCha8Rng, bytes: &[u8]) -> Vec<u8> {
    match rng.random_range(0..3) {
        0 => bytes.to_vec(),
        _ if bytes.starts_with(b"\x89PNG") => mutate::png(rng, bytes),
        _ => {
            let mut data = bytes.to_vec();
            mutate::bytes(rng, &mut data, None);
            data
        }
    }
}

/// Captions including the awkward ones: empty, whitespace, control characters, very long.
fn caption(rng: &mut ChaCha8Rng) -> Option<String> {
    match rng.random_range(0..8) {
        0 => None,
        1 => Some(String::new()),
        2 => Some(" \t\n".into()),
        3 => Some("\u{0}\u{7f}\u{202e}".into()),
        4 => Some("x".repeat(rng.random_range(1..100_000))),
        _ => Some("a small red circle".into()),
    }
}

/// A Parquet file in the `datasets` layout: a `struct{bytes, path}` image column (or a plain
/// binary one) and a `text` caption column.
fn parquet_file(
    images: Vec<Option<Vec<u8>>>,
    captions: Vec<Option<String>>,
    as_struct: bool,
    compression: ParquetCompression,
) -> PolarsResult<Vec<u8>> {
    let rows = images.len();
    let bytes = Series::new("bytes".into(), images);
    let image: Column = if as_struct {
        let paths = Series::new("path".into(), vec![Some("x.png"); rows]);
        StructChunked::from_series("image".into(), rows, [bytes, paths].iter())?
            .into_series()
            .into()
    } else {
        bytes.with_name("picture".into()).into()
    };
    let mut frame = DataFrame::new_infer_height(vec![image, Column::new("text".into(), captions)])?;
    let mut out = Vec::new();
    ParquetWriter::new(Cursor::new(&mut out))
        .with_compression(compression)
        .finish(&mut frame)?;
    Ok(out)
}

struct ParquetFiles {
    images: Vec<Vec<u8>>,
    seeds: Vec<Vec<u8>>,
}

/// Seeds: Parquet files with struct and binary image columns, uncompressed and compressed.
pub fn build_parquet(_scratch: &Path) -> Result<Box<dyn Target>> {
    let images = seed_images();
    let rows: Vec<Option<Vec<u8>>> = images.iter().cloned().map(Some).collect();
    let captions: Vec<Option<String>> = (0..rows.len())
        .map(|i| Some(format!("caption {i}")))
        .collect();
    let mut seeds = Vec::new();
    for (as_struct, compression) in [
        (true, ParquetCompression::Uncompressed),
        (false, ParquetCompression::Uncompressed),
        (true, ParquetCompression::Zstd(None)),
        (false, ParquetCompression::Snappy),
    ] {
        seeds.push(parquet_file(
            rows.clone(),
            captions.clone(),
            as_struct,
            compression,
        )?);
    }
    Ok(Box::new(ParquetFiles { images, seeds }))
}

impl Target for ParquetFiles {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let file = if rng.random_range(0..4) == 0 {
            // Rows that are hard to read: mutated images, nulls, awkward captions.
            let rows = rng.random_range(0..6);
            let images = (0..rows)
                .map(|_| {
                    let seed = self.images.choose(rng).expect("images");
                    rng.random_range(0..6)
                        .ne(&0)
                        .then(|| mutate_image(rng, seed))
                })
                .collect();
            let captions = (0..rows).map(|_| caption(rng)).collect();
            parquet_file(
                images,
                captions,
                rng.random(),
                ParquetCompression::Uncompressed,
            )
            .unwrap_or_default()
        } else {
            let mut data = self.seeds.choose(rng).expect("seeds").clone();
            let donor = self.seeds.choose(rng).expect("seeds");
            mutate::bytes(rng, &mut data, Some(donor));
            data
        };
        Files::from([("data.parquet".to_string(), file)])
    }

    fn read(&self, dir: &Path) -> Outcome {
        read_parquet(&dir.join("data.parquet"), SIZE, None)
            .map(|(_, skipped)| remark(&skipped))
            .map_err(|e| Failure::of(&e))
    }
}

/// `skipped` when a reader skipped inputs (each with a named reason), else nothing.
fn remark(skipped: &Skipped) -> Option<String> {
    (!skipped.is_empty()).then(|| "read, inputs skipped".to_string())
}

struct Folders {
    seed: Files,
}

/// Seed: a folder of PNG and JPEG images with captions, and one image without a caption.
pub fn build_folder(_scratch: &Path) -> Result<Box<dyn Target>> {
    let images = seed_images();
    let seed = Files::from([
        ("a.png".to_string(), images[0].clone()),
        ("a.txt".to_string(), b"a small red circle".to_vec()),
        ("b.jpg".to_string(), images[1].clone()),
        ("b.txt".to_string(), b"a large blue square".to_vec()),
        ("c.PNG".to_string(), images[2].clone()),
        ("c.txt".to_string(), b"tall".to_vec()),
        ("d.jpeg".to_string(), images[3].clone()),
    ]);
    Ok(Box::new(Folders { seed }))
}

/// Names a file may be renamed to: other extensions, a caption without an image, hidden files.
const NAMES: &[&str] = &["e.JPG", "e.txt", "a.png.txt", ".png", "f", "a.jpg"];

impl Target for Folders {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let mut files = self.seed.clone();
        for _ in 0..rng.random_range(1..=3) {
            if files.is_empty() {
                break;
            }
            let (name, bytes) = pick(rng, &files);
            let (name, bytes) = (name.clone(), bytes.clone());
            match rng.random_range(0..6) {
                0 => {
                    files.remove(&name);
                }
                1 => {
                    files.remove(&name);
                    files.insert(NAMES.choose(rng).expect("names").to_string(), bytes);
                }
                2 if name.ends_with(".txt") => {
                    let text = caption(rng).unwrap_or_default();
                    files.insert(name, text.into_bytes());
                }
                _ => {
                    let mutated = if name.ends_with(".txt") {
                        let mut data = bytes;
                        mutate::bytes(rng, &mut data, None);
                        data
                    } else {
                        mutate_image(rng, &bytes)
                    };
                    files.insert(name, mutated);
                }
            }
        }
        files
    }

    fn read(&self, dir: &Path) -> Outcome {
        let folder = ImageFolder::open(dir, SIZE).map_err(|e| Failure::of(&e))?;
        let (_, skipped) = folder.load_all();
        Ok(remark(&skipped))
    }
}
