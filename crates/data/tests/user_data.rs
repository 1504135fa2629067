//! User data: captioned image folders and Hugging Face-style Parquet files.

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};
use polars::prelude::*;
use unetlab_data::folder::ImageFolder;
use unetlab_data::parquet::read_parquet;
use unetlab_data::{DataError, Example};

const RED: [u8; 3] = [220, 20, 20];
const BLUE: [u8; 3] = [20, 40, 230];
const GREEN: [u8; 3] = [20, 200, 40];
const YELLOW: [u8; 3] = [240, 230, 20];

/// Four equal bands along the long side: green, red, blue, green. The centre crop keeps only the
/// red and blue bands, red first.
fn banded(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (pos, long) = if width >= height {
            (x, width)
        } else {
            (y, height)
        };
        Rgb(match 4 * pos / long {
            1 => RED,
            2 => BLUE,
            _ => GREEN,
        })
    })
}

fn solid(width: u32, height: u32, colour: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(width, height, Rgb(colour))
}

fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn rgb_at(example: &Example, y: usize, x: usize) -> [f32; 3] {
    [0, 1, 2].map(|c| (example.pixel(c, y, x) + 1.0) * 127.5)
}

fn assert_close(got: [f32; 3], want: [u8; 3], tolerance: f32, what: &str) {
    for c in 0..3 {
        assert!(
            (got[c] - f32::from(want[c])).abs() <= tolerance,
            "{what}: {got:?} vs {want:?}"
        );
    }
}

fn assert_solid(example: &Example, colour: [u8; 3]) {
    for y in 0..example.size {
        for x in 0..example.size {
            assert_close(rgb_at(example, y, x), colour, 1.0, "solid image");
        }
    }
}

/// A centre crop of `banded` at `size`: red in the first half, blue in the second, no green.
fn assert_red_then_blue(example: &Example, horizontal: bool, tolerance: f32) {
    let size = example.size;
    for i in 0..size {
        for j in 0..size {
            let (y, x) = if horizontal { (i, j) } else { (j, i) };
            let at = rgb_at(example, y, x);
            // Away from the red/blue boundary, the band's own colour.
            if j + 2 < size / 2 {
                assert_close(at, RED, tolerance, &format!("({x}, {y}) should be red"));
            } else if j > size / 2 + 1 {
                assert_close(at, BLUE, tolerance, &format!("({x}, {y}) should be blue"));
            }
            assert!(
                at[1] < 80.0,
                "({x}, {y}) shows the cropped-off green: {at:?}"
            );
        }
        let (before, after) = if horizontal {
            (
                rgb_at(example, i, size / 2 - 1),
                rgb_at(example, i, size / 2),
            )
        } else {
            (
                rgb_at(example, size / 2 - 1, i),
                rgb_at(example, size / 2, i),
            )
        };
        assert!(
            before[0] > before[2] && after[2] > after[0],
            "boundary not in the middle: {before:?} {after:?}"
        );
    }
}

fn write_caption(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn folder_reads_captioned_images_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    banded(64, 32).save(d.join("a_wide.png")).unwrap();
    write_caption(d, "a_wide.txt", "  a wide banded picture\n");
    solid(20, 20, YELLOW).save(d.join("b_square.png")).unwrap();
    write_caption(d, "b_square.txt", "yellow");
    banded(48, 96).save(d.join("c_tall.JPG")).unwrap();
    write_caption(d, "c_tall.txt", "a tall banded picture");
    solid(8, 8, RED).save(d.join("d_no_caption.png")).unwrap();
    std::fs::write(
        d.join("e_corrupt.png"),
        b"\x89PNG\r\n\x1a\n this is not a png",
    )
    .unwrap();
    write_caption(d, "e_corrupt.txt", "corrupt");
    write_caption(d, "notes.txt", "a caption without an image is ignored");
    std::fs::write(d.join("readme.md"), "not an image").unwrap();

    let folder = ImageFolder::open(d, 16).unwrap();
    assert_eq!(folder.len(), 4, "a, b, c and e have captions");
    assert!(!folder.is_empty());
    assert_eq!(folder.skipped().count, 1);
    assert!(
        folder.skipped().reasons[0].contains("d_no_caption.png"),
        "{:?}",
        folder.skipped()
    );

    let (examples, skipped) = folder.load_all();
    assert_eq!(examples.len(), 3);
    assert_eq!(skipped.count, 2, "{skipped}");
    assert!(
        skipped
            .reasons
            .iter()
            .any(|r| r.contains("d_no_caption.png")),
        "{skipped}"
    );
    assert!(
        skipped.reasons.iter().any(|r| r.contains("e_corrupt.png")),
        "{skipped}"
    );

    let captions: Vec<&str> = examples.iter().map(|e| e.caption.as_str()).collect();
    assert_eq!(
        captions,
        ["a wide banded picture", "yellow", "a tall banded picture"]
    );
    for example in &examples {
        assert_eq!(example.size, 16);
        assert_eq!(example.image.len(), 3 * 16 * 16);
        assert!(example.scene.is_none());
        assert!(example.image.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
    // 64×32 → centre 32×32 crop (red | blue) → 16×16.
    assert_red_then_blue(&examples[0], true, 2.0);
    assert_solid(&examples[1], YELLOW);
    // A JPEG (upper-case extension), 48×96 → centre 48×48 (red over blue) → 16×16; lossy.
    assert_red_then_blue(&examples[2], false, 30.0);

    // Errors name the file.
    let err = folder.get(3).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("e_corrupt.png"), "{err}");
    let err = folder.get(4).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Index {
                index: 4,
                len: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&d.display().to_string()), "{err}");
}

#[test]
fn folder_upsamples_small_images_and_reports_bad_folders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 8×4 → centre 4×4 (red | blue) → 32×32.
    banded(8, 4).save(d.join("tiny.png")).unwrap();
    write_caption(d, "tiny.txt", "tiny");
    solid(4, 4, RED).save(d.join("blank.png")).unwrap();
    write_caption(d, "blank.txt", " \n");
    let folder = ImageFolder::open(d, 32).unwrap();
    let (examples, skipped) = folder.load_all();
    assert_eq!(examples.len(), 1);
    assert_eq!(skipped.count, 1);
    assert!(
        skipped.reasons[0].contains("blank.txt") && skipped.reasons[0].contains("empty"),
        "{skipped}"
    );
    let example = &examples[0];
    assert_close(rgb_at(example, 16, 2), RED, 1.0, "left");
    assert_close(rgb_at(example, 16, 29), BLUE, 1.0, "right");
    // Bilinear: the middle is a blend, not a hard edge.
    let middle = rgb_at(example, 16, 15);
    assert!(middle[0] > 40.0 && middle[2] > 40.0, "{middle:?}");

    let missing = d.join("no such folder");
    let err = ImageFolder::open(&missing, 32).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("no such folder"),
        "{err}"
    );
    let err = ImageFolder::open(d, 0).unwrap_err();
    assert!(
        matches!(err, DataError::InvalidSize { size: 0, .. }),
        "{err}"
    );
}

fn write_frame(path: &Path, mut frame: DataFrame) {
    let file = std::fs::File::create(path).unwrap();
    ParquetWriter::new(file).finish(&mut frame).unwrap();
}

#[test]
fn parquet_binary_image_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-00000-of-00001.parquet");
    let red = encode(&solid(12, 12, RED), ImageFormat::Png);
    let wide = encode(&banded(40, 20), ImageFormat::Png);
    let blue = encode(&solid(6, 9, BLUE), ImageFormat::Png);
    let images: Vec<&[u8]> = vec![&red, &wide, b"garbage bytes", &blue];
    let frame = DataFrame::new_infer_height(vec![
        Column::new("image".into(), images),
        Column::new(
            "text".into(),
            ["a red square", "bands", "broken", "a blue square"],
        ),
        Column::new("id".into(), [0i64, 1, 2, 3]),
    ])
    .unwrap();
    write_frame(&path, frame);

    let (examples, skipped) = read_parquet(&path, 10, None).unwrap();
    assert_eq!(examples.len(), 3);
    assert_eq!(skipped.count, 1, "{skipped}");
    assert!(
        skipped.reasons[0].contains("train-00000-of-00001.parquet")
            && skipped.reasons[0].contains("row 2"),
        "{skipped}"
    );
    let captions: Vec<&str> = examples.iter().map(|e| e.caption.as_str()).collect();
    assert_eq!(captions, ["a red square", "bands", "a blue square"]);
    assert_solid(&examples[0], RED);
    assert_red_then_blue(&examples[1], true, 2.0);
    assert_solid(&examples[2], BLUE);
    assert!(examples
        .iter()
        .all(|e| e.size == 10 && e.image.len() == 300));

    // A caption column must exist and hold strings; errors name the file.
    let err = read_parquet(&path, 10, Some("prompt")).unwrap_err();
    assert!(
        matches!(err, DataError::Column { .. })
            && err.to_string().contains("train-00000-of-00001.parquet"),
        "{err}"
    );
    assert!(err.to_string().contains("prompt"), "{err}");
    let err = read_parquet(&path, 10, Some("id")).unwrap_err();
    assert!(matches!(err, DataError::Column { .. }), "{err}");
}

#[test]
fn parquet_struct_image_column_and_named_caption_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf.parquet");
    let jpeg = encode(&solid(16, 16, GREEN), ImageFormat::Jpeg);
    let png = encode(&banded(20, 40), ImageFormat::Png);
    let bytes = Series::new(
        "bytes".into(),
        [
            Some(jpeg.as_slice()),
            None,
            Some(png.as_slice()),
            Some(png.as_slice()),
        ],
    );
    let paths = Series::new(
        "path".into(),
        [Some("green.jpg"), None, Some("tall.png"), None],
    );
    let image = StructChunked::from_series("picture".into(), 4, [bytes, paths].iter())
        .unwrap()
        .into_series();
    let frame = DataFrame::new_infer_height(vec![
        image.into(),
        Column::new(
            "prompt".into(),
            [Some("green"), Some("nothing"), Some("tall"), None],
        ),
        Column::new("text".into(), ["x", "y", "z", "w"]),
    ])
    .unwrap();
    write_frame(&path, frame);

    let (examples, skipped) = read_parquet(&path, 8, Some("prompt")).unwrap();
    assert_eq!(examples.len(), 2, "{skipped}");
    assert_eq!(skipped.count, 2, "{skipped}");
    assert!(
        skipped.reasons[0].contains("row 1") && skipped.reasons[0].contains("no image"),
        "{skipped}"
    );
    assert!(
        skipped.reasons[1].contains("row 3") && skipped.reasons[1].contains("no caption"),
        "{skipped}"
    );
    assert_eq!(examples[0].caption, "green");
    for y in 0..8 {
        for x in 0..8 {
            assert_close(rgb_at(&examples[0], y, x), GREEN, 12.0, "jpeg green");
        }
    }
    assert_red_then_blue(&examples[1], false, 2.0);

    // Without a name, `text` is the caption column.
    let (examples, _) = read_parquet(&path, 8, None).unwrap();
    let captions: Vec<&str> = examples.iter().map(|e| e.caption.as_str()).collect();
    assert_eq!(captions, ["x", "z", "w"]);
}

#[test]
fn parquet_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let not_parquet = dir.path().join("notes.parquet");
    std::fs::write(&not_parquet, "plain text").unwrap();
    let err = read_parquet(&not_parquet, 8, None).unwrap_err();
    assert!(
        matches!(err, DataError::Parquet { .. }) && err.to_string().contains("notes.parquet"),
        "{err}"
    );

    let missing = dir.path().join("missing.parquet");
    let err = read_parquet(&missing, 8, None).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("missing.parquet"),
        "{err}"
    );

    let no_images = dir.path().join("captions-only.parquet");
    write_frame(
        &no_images,
        DataFrame::new_infer_height(vec![
            Column::new("caption".into(), ["a", "b"]),
            Column::new("n".into(), [1i32, 2]),
        ])
        .unwrap(),
    );
    let err = read_parquet(&no_images, 8, None).unwrap_err();
    assert!(matches!(err, DataError::Column { .. }), "{err}");
    assert!(
        err.to_string().contains("captions-only.parquet")
            && err.to_string().contains("no image column"),
        "{err}"
    );
}
