//! `tokenizer.json` files (`unetlab train --tokenizer`, run directories, bundles).

use std::path::Path;

use anyhow::Result;
use candle_core::Device;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use unetlab_train::tokenizer::TextTokenizer;

use super::{Failure, Outcome, Target};
use crate::fuzz::case::Files;
use crate::fuzz::mutate;

/// Captions the seed tokenizer is trained on and every case encodes.
const CAPTIONS: &[&str] = &[
    "a small red circle",
    "a picture of a large blue square above a small green triangle",
    "",
    "ÜNICODE ☃ words",
];

/// Sequence length of the fuzzed tokenizers.
const TOKENS: usize = 8;

/// A BPE tokenizer in the `tokenizers` JSON format, with the special tokens the reader needs.
const BPE: &str = r##"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"<pad>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":1,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":{"type":"Lowercase"},"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"BPE","dropout":null,"unk_token":"<unk>","continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,
"vocab":{"<pad>":0,"<s>":1,"<unk>":2,"a":3,"b":4,"c":5,"r":6,"e":7,"d":8,"re":9,"red":10,"ci":11},
"merges":["r e","re d","c i"]}}"##;

/// A WordPiece tokenizer with BERT's special tokens.
const WORDPIECE: &str = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"BertPreTokenizer"},"post_processor":null,"decoder":null,
"model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
"vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"a":3,"small":4,"red":5,"circ":6,"##le":7}}}"###;

/// The word-level tokenizer training writes, trained on [`CAPTIONS`].
pub fn trained(tokens: usize) -> Result<TextTokenizer> {
    Ok(TextTokenizer::train(CAPTIONS.iter().copied(), tokens)?)
}

/// Loads a tokenizer and encodes [`CAPTIONS`] as ids and one-hot tensors, as training and
/// sampling do.
pub fn read(path: &Path, tokens: usize) -> Outcome {
    let fail = |e: unetlab_train::TrainError| Failure::of(&e);
    let tokenizer = TextTokenizer::load(path, tokens).map_err(fail)?;
    for caption in CAPTIONS {
        tokenizer.ids(caption).map_err(fail)?;
    }
    tokenizer
        .one_hot(CAPTIONS, &Device::Cpu)
        .map(|_| None)
        .map_err(fail)
}

struct Tokenizers {
    seeds: Vec<String>,
}

/// Seeds: a trained word-level tokenizer (as `unetlab train` saves it), a BPE and a WordPiece one.
pub fn build(scratch: &Path) -> Result<Box<dyn Target>> {
    let path = scratch.join("tokenizer.json");
    trained(TOKENS)?.save(&path)?;
    let seeds = vec![
        std::fs::read_to_string(&path)?,
        BPE.to_string(),
        WORDPIECE.to_string(),
    ];
    Ok(Box::new(Tokenizers { seeds }))
}

impl Target for Tokenizers {
    fn generate(&self, rng: &mut ChaCha8Rng) -> Files {
        let seed = self.seeds.choose(rng).expect("seeds");
        let donor = self.seeds.choose(rng).expect("seeds");
        let text = mutate::json_text(rng, seed, Some(donor.as_bytes()));
        Files::from([("tokenizer.json".to_string(), text)])
    }

    fn read(&self, dir: &Path) -> Outcome {
        read(&dir.join("tokenizer.json"), TOKENS)
    }
}
