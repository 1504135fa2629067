//! Parquet files in the Hugging Face `datasets` layout.

use std::path::Path;

use polars::prelude::*;
use polars_buffer::Buffer;
use polars_parquet::parquet::page::CompressedPage;
use polars_parquet::parquet::read::{get_page_iterator, read_metadata};

use crate::{check_size, decode_image, DataError, Example, Skipped};

/// Caption columns looked for, in order, when none is named.
pub const CAPTION_COLUMNS: &[&str] = &["text", "caption"];

/// The image column preferred when several columns could hold images.
pub const IMAGE_COLUMN: &str = "image";

/// Reads a Parquet file in the Hugging Face `datasets` layout into `size × size` examples.
///
/// The image column is the column named `image` if there is one, else the first column that can
/// hold images: either a struct with a binary `bytes` field (the `datasets` `Image` feature,
/// `struct{bytes, path}`) or a plain binary column, holding encoded PNG or JPEG bytes. The caption
/// column is `caption_column` if given, else `text`, else `caption`; it must hold strings.
///
/// The whole file is read eagerly. Rows with a null image or caption, an empty caption or bytes
/// that do not decode are skipped and counted, each reason naming the file and row. Fails, naming
/// the file, if it cannot be read or parsed, `size` is 0 or above [`crate::MAX_SIZE`], or a
/// column is missing or of the wrong type.
pub fn read_parquet(
    path: &Path,
    size: usize,
    caption_column: Option<&str>,
) -> Result<(Vec<Example>, Skipped), DataError> {
    // polars panics on some malformed files (thrift fields out of range, page lengths past their
    // buffers): a bad file is an error naming it, not a crash.
    std::panic::catch_unwind(|| read_unguarded(path, size, caption_column)).unwrap_or_else(
        |panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(DataError::Parquet {
                path: path.to_path_buf(),
                message: format!("malformed file (the Parquet decoder panicked: {message})"),
            })
        },
    )
}

/// Checks every data page's value count against its column chunk's before polars decodes the
/// file: polars sizes a page's validity bitmap from that count, so a corrupt one (negative, read
/// as 2⁶¹) asks for exabytes, and a failed allocation aborts the process instead of unwinding.
fn check_page_counts(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let malformed = |message: String| DataError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let metadata =
        read_metadata(&mut std::io::Cursor::new(bytes)).map_err(|e| malformed(e.to_string()))?;
    let buffer = Buffer::from(bytes.to_vec());
    for group in &metadata.row_groups {
        for column in group.parquet_columns() {
            let total = usize::try_from(column.num_values()).map_err(|_| {
                malformed(format!("column chunk with {} values", column.num_values()))
            })?;
            let reader = std::io::Cursor::new(buffer.clone());
            let pages = get_page_iterator(column, reader, Vec::new(), bytes.len())
                .map_err(|e| malformed(e.to_string()))?;
            for page in pages {
                if let CompressedPage::Data(page) = page.map_err(|e| malformed(e.to_string()))? {
                    if page.num_values() > total {
                        return Err(malformed(format!(
                            "a data page claims {} values in a column chunk of {total}",
                            page.num_values() as i32
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

fn read_unguarded(
    path: &Path,
    size: usize,
    caption_column: Option<&str>,
) -> Result<(Vec<Example>, Skipped), DataError> {
    let size = check_size(path, size)?;
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check_page_counts(path, &bytes)?;
    // Decoded on this thread: a panic inside polars' thread pool aborts the process (rayon's
    // spawned jobs have no one to unwind to), one on this thread is caught above.
    let df = ParquetReader::new(std::io::Cursor::new(bytes))
        .read_parallel(ParallelStrategy::None)
        .finish()
        .map_err(|e| DataError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let column_error = |message: String| DataError::Column {
        path: path.to_path_buf(),
        message,
    };
    let described = || {
        df.columns()
            .iter()
            .map(|c| format!("{}: {}", c.name(), c.dtype()))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let caption_name = match caption_column {
        Some(name) => name.to_string(),
        None => CAPTION_COLUMNS
            .iter()
            .find(|name| df.column(name).is_ok())
            .map(|name| name.to_string())
            .ok_or_else(|| {
                column_error(format!(
                    "no caption column (looked for {}); columns: {}",
                    CAPTION_COLUMNS.join(", "),
                    described()
                ))
            })?,
    };
    let captions = df.column(&caption_name).map_err(|_| {
        column_error(format!(
            "no caption column `{caption_name}`; columns: {}",
            described()
        ))
    })?;
    let captions = captions.str().map_err(|_| {
        column_error(format!(
            "caption column `{caption_name}` holds {}, not strings",
            captions.dtype()
        ))
    })?;

    let image = match df.column(IMAGE_COLUMN) {
        Ok(column) => column,
        Err(_) => df
            .columns()
            .iter()
            .find(|c| c.name().as_str() != caption_name && image_bytes(c).is_some())
            .ok_or_else(|| {
                column_error(format!(
                    "no image column (a binary column or a struct with a binary `bytes` field); columns: {}",
                    described()
                ))
            })?,
    };
    let bytes = image_bytes(image).ok_or_else(|| {
        column_error(format!(
            "image column `{}` holds {}, not binary or a struct with a binary `bytes` field",
            image.name(),
            image.dtype()
        ))
    })?;
    let bytes = bytes.map_err(|e| column_error(format!("image column `{}`: {e}", image.name())))?;
    let image_nulls = image.is_null();

    let mut examples = Vec::new();
    let mut skipped = Skipped::default();
    let rows = bytes.iter().zip(captions.iter()).zip(image_nulls.iter());
    for (row, ((encoded, caption), image_null)) in rows.enumerate() {
        let reason = |why: &str| format!("{} row {row}: {why}", path.display());
        let encoded = match encoded {
            Some(encoded) if image_null != Some(true) => encoded,
            _ => {
                skipped.push(reason("no image"));
                continue;
            }
        };
        let caption = match caption.map(str::trim) {
            Some(caption) if !caption.is_empty() => caption,
            Some(_) => {
                skipped.push(reason("empty caption"));
                continue;
            }
            None => {
                skipped.push(reason("no caption"));
                continue;
            }
        };
        match decode_image(encoded, size) {
            Ok(image) => examples.push(Example {
                image,
                size: size as usize,
                caption: caption.to_string(),
                scene: None,
            }),
            Err(e) => skipped.push(reason(&format!("cannot decode image: {e}"))),
        }
    }
    Ok((examples, skipped))
}

/// The encoded image bytes of a column, if it is a binary column or a struct with a binary
/// `bytes` field (`None` for other columns).
fn image_bytes(column: &Column) -> Option<PolarsResult<BinaryChunked>> {
    match column.dtype() {
        DataType::Binary => Some(column.binary().cloned()),
        DataType::BinaryOffset => Some(
            column
                .cast(&DataType::Binary)
                .and_then(|c| c.binary().cloned()),
        ),
        DataType::Struct(fields) => {
            let field = fields.iter().find(|f| f.name().as_str() == "bytes")?;
            if !matches!(field.dtype(), DataType::Binary | DataType::BinaryOffset) {
                return None;
            }
            Some(struct_bytes(column))
        }
        _ => None,
    }
}

/// The `bytes` field of a struct column, as binary.
fn struct_bytes(column: &Column) -> PolarsResult<BinaryChunked> {
    let series = column.struct_()?.field_by_name("bytes")?;
    series.cast(&DataType::Binary)?.binary().cloned()
}
