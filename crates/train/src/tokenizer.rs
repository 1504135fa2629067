//! Captions → token ids → one-hot tensors, with a `tokenizers` tokenizer: a given
//! `tokenizer.json`, or a word-level one trained on the captions and saved with the run.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::TrainError;

/// Padding token of trained tokenizers.
pub const PAD: &str = "[PAD]";
/// Pooling token put first in every sequence.
pub const CLS: &str = "[CLS]";
/// Unknown-word token.
pub const UNK: &str = "[UNK]";

/// A tokenizer with the padding and pooling tokens the text encoder needs.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    pad: u32,
    cls: u32,
    tokens: usize,
}

impl TextTokenizer {
    /// A lower-casing word-level tokenizer trained on `captions`: one id per word seen, plus
    /// `[PAD]`, `[UNK]` and `[CLS]`. Sequences are `tokens` long.
    pub fn train<'a>(
        captions: impl Iterator<Item = &'a str> + Send,
        tokens: usize,
    ) -> Result<Self, TrainError> {
        let model = WordLevel::builder()
            .unk_token(UNK.into())
            .build()
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer
            .with_normalizer(Some(Lowercase))
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));
        let specials = [PAD, UNK, CLS].map(|t| AddedToken::from(t, true)).to_vec();
        let mut trainer: TrainerWrapper = WordLevelTrainer::builder()
            .min_frequency(1)
            .show_progress(false)
            .special_tokens(specials)
            .build()
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?
            .into();
        tokenizer
            .train(&mut trainer, captions)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        Self::wrap(tokenizer, tokens, "the trained tokenizer")
    }

    /// Loads a `tokenizer.json`; it must define a padding token (`[PAD]`, `<pad>` or
    /// `<|endoftext|>`) and a first token (`[CLS]`, `<s>` or `<|startoftext|>`).
    pub fn load(path: &Path, tokens: usize) -> Result<Self, TrainError> {
        let error =
            |e: &dyn std::fmt::Display| TrainError::Tokenizer(format!("{}: {e}", path.display()));
        // The `tokenizers` crate panics on some malformed files (e.g. `expect("Helper")` on a
        // decoder nested past serde_json's recursion limit): a bad file is an error, not a crash.
        let tokenizer = std::panic::catch_unwind(|| Tokenizer::from_file(path))
            .map_err(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("the tokenizers library panicked");
                error(&format!("not a valid tokenizer.json ({message})"))
            })?
            .map_err(|e| error(&e))?;
        Self::wrap(tokenizer, tokens, &path.display().to_string())
    }

    fn wrap(tokenizer: Tokenizer, tokens: usize, what: &str) -> Result<Self, TrainError> {
        let find = |names: &[&str]| names.iter().find_map(|n| tokenizer.token_to_id(n));
        let pad = find(&[PAD, "<pad>", "<|endoftext|>"]).ok_or_else(|| {
            TrainError::Tokenizer(format!(
                "{what}: no padding token ([PAD], <pad> or <|endoftext|>)"
            ))
        })?;
        let cls = find(&[CLS, "<s>", "<|startoftext|>"]).ok_or_else(|| {
            TrainError::Tokenizer(format!(
                "{what}: no first token ([CLS], <s> or <|startoftext|>)"
            ))
        })?;
        // One-hot rows are indexed by id, so every id must be below the vocabulary size.
        let vocab = tokenizer.get_vocab_size(true);
        if let Some((token, id)) = tokenizer
            .get_vocab(true)
            .into_iter()
            .find(|&(_, id)| id as usize >= vocab)
        {
            return Err(TrainError::Tokenizer(format!(
                "{what}: token `{token}` has id {id}, but the vocabulary has {vocab} entries (ids must be 0..{vocab})"
            )));
        }
        Ok(TextTokenizer {
            tokenizer,
            pad,
            cls,
            tokens,
        })
    }

    /// Saves it as `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let json = self
            .tokenizer
            .to_string(true)
            .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", path.display())))?;
        unetlab_files::write_file(path, json).map_err(TrainError::io(path))
    }

    /// Vocabulary size (with special tokens).
    pub fn vocab(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Sequence length.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// `[CLS]` + the caption's ids, truncated and padded to `tokens`.
    pub fn ids(&self, caption: &str) -> Result<Vec<u32>, TrainError> {
        let encoding = self
            .tokenizer
            .encode(caption, false)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        let mut ids = vec![self.cls];
        ids.extend(
            encoding
                .get_ids()
                .iter()
                .take(self.tokens.saturating_sub(1)),
        );
        ids.truncate(self.tokens);
        ids.resize(self.tokens, self.pad);
        Ok(ids)
    }

    /// One-hot `[B, tokens, vocab]` (f32) of a batch of captions.
    pub fn one_hot(&self, captions: &[&str], device: &Device) -> Result<Tensor, TrainError> {
        let vocab = self.vocab();
        let mut data = vec![0f32; captions.len() * self.tokens * vocab];
        for (b, caption) in captions.iter().enumerate() {
            for (t, id) in self.ids(caption)?.into_iter().enumerate() {
                data[(b * self.tokens + t) * vocab + id as usize] = 1.0;
            }
        }
        Ok(Tensor::from_vec(
            data,
            (captions.len(), self.tokens, vocab),
            device,
        )?)
    }
}
