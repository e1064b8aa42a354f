//! Tokenizers an index is built with: raw UTF-8 bytes, or a byte-level BPE trained on a
//! version with the `tokenizers` crate and saved as a standard `tokenizer.json` (the Model
//! Factory trains on the same artifact). An index records its tokenizer's hash, so a query
//! tokenized differently is refused rather than answered wrongly.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use super::AttributionError;

/// The hash a bytes tokenizer is known by: it has no file to hash.
const BYTES_IDENTITY: &[u8] = b"tributary:tokenizer:utf8-bytes:1";

/// Turns text into token ids and back.
pub enum Tokenizer {
    /// Each UTF-8 byte is a token. Byte 0xFF never occurs in UTF-8, so it separates records.
    Bytes,
    /// A `tokenizers` tokenizer (byte-level BPE when we train it).
    Hf {
        inner: Box<tokenizers::Tokenizer>,
        /// Its `tokenizer.json`, as saved: what the hash is taken over.
        json: String,
    },
}

impl Tokenizer {
    /// Reads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, AttributionError> {
        let json = std::fs::read_to_string(path)
            .map_err(|e| AttributionError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_json(json)
    }

    pub fn from_json(json: String) -> Result<Self, AttributionError> {
        let inner = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&json)
            .map_err(|e| AttributionError::Tokenizer(e.to_string()))?;
        Ok(Self::Hf {
            inner: Box::new(inner),
            json,
        })
    }

    /// Trains a byte-level BPE of `vocab_size` tokens (at least 256 + merges) on `texts`.
    pub fn train_bpe<I, S>(texts: I, vocab_size: u32) -> Result<Self, AttributionError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if !(257..=65_535).contains(&vocab_size) {
            return Err(AttributionError::invalid(
                "vocab_size",
                format!("{vocab_size} is outside 257..=65535"),
            ));
        }
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size as usize)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        let mut tokenizer = TokenizerBuilder::<
            ModelWrapper,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default().into())
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
        .with_decoder(Some(ByteLevelDecoder::default().into()))
        .build()
        .map_err(|e| AttributionError::Tokenizer(e.to_string()))?;
        tokenizer
            .train(&mut trainer, texts)
            .map_err(|e| AttributionError::Tokenizer(e.to_string()))?;
        let inner: tokenizers::Tokenizer = tokenizer.into();
        let json = inner
            .to_string(false)
            .map_err(|e| AttributionError::Tokenizer(e.to_string()))?;
        // Read back from its own JSON so that a trained tokenizer and a loaded one are the same.
        Self::from_json(json)
    }

    /// `"bytes"` or `"bpe"` (any `tokenizer.json`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bytes => "bytes",
            Self::Hf { .. } => "bpe",
        }
    }

    /// The `tokenizer.json` to save beside an index, if there is one.
    pub fn json(&self) -> Option<&str> {
        match self {
            Self::Bytes => None,
            Self::Hf { json, .. } => Some(json),
        }
    }

    /// BLAKE3 of what defines the tokenizer.
    pub fn hash(&self) -> [u8; 32] {
        match self {
            Self::Bytes => *blake3::hash(BYTES_IDENTITY).as_bytes(),
            Self::Hf { json, .. } => *blake3::hash(json.as_bytes()).as_bytes(),
        }
    }

    /// How many ids it can produce; every id is below this.
    pub fn vocab_size(&self) -> u32 {
        match self {
            // 0xFF (and 0xFE, 0xC0, 0xC1, 0xF5..) never occur in UTF-8: ids stay below 0xFF.
            Self::Bytes => 255,
            Self::Hf { inner, .. } => inner.get_vocab_size(true) as u32,
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, AttributionError> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Self::Hf { inner, .. } => inner
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| AttributionError::Tokenizer(e.to_string())),
        }
    }

    /// Encodes many texts, in parallel where the tokenizer can.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, AttributionError> {
        match self {
            Self::Bytes => Ok(texts
                .iter()
                .map(|t| t.bytes().map(u32::from).collect())
                .collect()),
            Self::Hf { inner, .. } => inner
                .encode_batch_fast(texts.to_vec(), false)
                .map(|all| all.iter().map(|e| e.get_ids().to_vec()).collect())
                .map_err(|e| AttributionError::Tokenizer(e.to_string())),
        }
    }

    /// Text of `ids`; bytes that are not UTF-8 on their own (a span cut inside a character)
    /// come out as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, AttributionError> {
        match self {
            Self::Bytes => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i.min(255) as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Self::Hf { inner, .. } => inner
                .decode(ids, false)
                .map_err(|e| AttributionError::Tokenizer(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_never_produce_the_separator() {
        let t = Tokenizer::Bytes;
        let ids = t.encode("naïve café ☕").expect("encode");
        assert!(ids.iter().all(|&i| i < 0xFF));
        assert_eq!(t.decode(&ids).expect("decode"), "naïve café ☕");
        assert_eq!(t.kind(), "bytes");
    }

    #[test]
    fn trained_bpe_round_trips_and_hashes_stably() {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("the river delta carries silt number {i} to the coast"))
            .collect();
        let t = Tokenizer::train_bpe(texts.iter(), 300).expect("train");
        let ids = t.encode("the river delta carries silt").expect("encode");
        assert!(
            ids.len() < "the river delta carries silt".len(),
            "merges were learnt"
        );
        assert_eq!(
            t.decode(&ids).expect("decode"),
            "the river delta carries silt"
        );
        let again = Tokenizer::from_json(t.json().expect("json").to_string()).expect("load");
        assert_eq!(again.hash(), t.hash());
        assert_eq!(
            again.encode("silt").expect("encode"),
            t.encode("silt").expect("encode")
        );
        assert!(t.vocab_size() <= 300);
        assert!(Tokenizer::train_bpe(texts.iter(), 10).is_err());
    }
}
