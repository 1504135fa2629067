//! A folder of captioned images: `cat.png` with its caption in `cat.txt`.

use std::path::{Path, PathBuf};

use crate::{check_size, decode_image, DataError, Example, Skipped};

/// Extensions read as images (compared case-insensitively); the format itself is detected from
/// the file's content.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// A folder of images (PNG, JPEG) each with a same-name `.txt` caption (`cat.png` + `cat.txt`).
///
/// Opening lists the folder (not its subfolders) sorted by file name for determinism; images
/// without a caption file are skipped and counted then. Images are decoded on [`ImageFolder::get`]
/// or [`ImageFolder::load_all`], centre-cropped to a square and resized to `size × size`.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    dir: PathBuf,
    size: u32,
    items: Vec<Item>,
    skipped: Skipped,
}

#[derive(Debug, Clone)]
struct Item {
    image: PathBuf,
    caption: PathBuf,
}

impl ImageFolder {
    /// Lists the captioned images of `dir`, to be read as `size × size` examples.
    ///
    /// Fails if the folder cannot be listed or `size` is 0 or above [`crate::MAX_SIZE`]; images
    /// without a caption file, and entries that cannot be inspected, are skipped and counted in
    /// [`ImageFolder::skipped`].
    pub fn open(dir: &Path, size: usize) -> Result<ImageFolder, DataError> {
        let size = check_size(dir, size)?;
        let io_error = |source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut skipped = Skipped::default();
        let mut images = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error)? {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    skipped.push(format!("{}: cannot list an entry: {e}", dir.display()));
                    continue;
                }
            };
            let path = entry.path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
            if is_image && path.is_file() {
                images.push(path);
            }
        }
        images.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let mut items = Vec::with_capacity(images.len());
        for image in images {
            let caption = image.with_extension("txt");
            if caption.is_file() {
                items.push(Item { image, caption });
            } else {
                skipped.push(format!(
                    "{}: no caption file {}",
                    image.display(),
                    caption.display()
                ));
            }
        }
        Ok(ImageFolder {
            dir: dir.to_path_buf(),
            size,
            items,
            skipped,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of captioned images (some may still fail to decode).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the folder has no captioned images.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The inputs skipped while listing the folder (images without a caption file).
    pub fn skipped(&self) -> &Skipped {
        &self.skipped
    }

    /// The image files, in the order of [`ImageFolder::get`].
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.items.iter().map(|item| item.image.as_path())
    }

    /// Reads captioned image `index` (in file-name order). Fails, naming the file, if the index is
    /// out of range, a file cannot be read, the caption is empty or the image cannot be decoded.
    pub fn get(&self, index: usize) -> Result<Example, DataError> {
        let item = self.items.get(index).ok_or_else(|| DataError::Index {
            path: self.dir.clone(),
            index,
            len: self.items.len(),
        })?;
        let caption = std::fs::read_to_string(&item.caption).map_err(|source| DataError::Io {
            path: item.caption.clone(),
            source,
        })?;
        let caption = caption.trim();
        if caption.is_empty() {
            return Err(DataError::EmptyCaption {
                path: item.caption.clone(),
            });
        }
        let bytes = std::fs::read(&item.image).map_err(|source| DataError::Io {
            path: item.image.clone(),
            source,
        })?;
        let image = decode_image(&bytes, self.size).map_err(|message| DataError::Decode {
            path: item.image.clone(),
            message,
        })?;
        Ok(Example {
            image,
            size: self.size as usize,
            caption: caption.to_string(),
            scene: None,
        })
    }

    /// Reads every captioned image, skipping (and counting, with the file named) those that fail;
    /// the returned [`Skipped`] also includes the images skipped when the folder was opened.
    pub fn load_all(&self) -> (Vec<Example>, Skipped) {
        let mut skipped = self.skipped.clone();
        let mut examples = Vec::with_capacity(self.items.len());
        for index in 0..self.items.len() {
            match self.get(index) {
                Ok(example) => examples.push(example),
                Err(e) => skipped.push(e.to_string()),
            }
        }
        (examples, skipped)
    }
}
