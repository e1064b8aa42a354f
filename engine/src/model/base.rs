//! A base model to fine-tune or serve: a GGUF file (a pretrained model such as SmolLM2), or a
//! directory in Hugging Face's layout (one we trained or converted). Either way it comes out
//! as the same things: a config, dequantised tensors under Hugging Face names, the tokenizer,
//! the chat template, and the hash of the file its weights came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::chat::{ChatTemplate, CHATML};
use super::files::{self, ModelFileError, WEIGHTS_FILE};
use super::{gguf, Llama, LlamaConfig};
use crate::attribution::Tokenizer;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Where `transformers` looks for the chat template and the special tokens.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

pub struct Base {
    pub config: LlamaConfig,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    /// The Jinja chat template; ChatML when the model names none.
    pub chat_template: String,
    /// A name for people: the GGUF's `general.name` or the directory's name.
    pub name: String,
    /// BLAKE3 of the weights file, hex.
    pub weights_hash: String,
    pub source: PathBuf,
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ModelFileError {
    ModelFileError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// BLAKE3 of a file, hex, read in large blocks.
pub fn hash_file(path: &Path) -> Result<String, ModelFileError> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    std::io::copy(&mut file, &mut hasher).map_err(|e| file_error(path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}

impl Base {
    /// Opens a `.gguf` file or a model directory.
    pub fn open(path: &Path, device: &Device) -> Result<Self, ModelFileError> {
        if path.is_dir() {
            Self::open_dir(path, device)
        } else {
            Self::open_gguf(path, device)
        }
    }

    /// As [`Base::open`], leaving a GGUF file's weights unread (`tensors` empty): serving
    /// reads them as their quantised blocks instead of dequantising the whole model first.
    pub fn open_meta(path: &Path, device: &Device) -> Result<Self, ModelFileError> {
        if path.is_dir() {
            return Self::open_dir(path, device);
        }
        let base = gguf::read_meta(path).map_err(|e| file_error(path, e))?;
        Self::from_gguf(path, base)
    }

    fn open_gguf(path: &Path, device: &Device) -> Result<Self, ModelFileError> {
        let base = gguf::read(path, DType::F32, device).map_err(|e| file_error(path, e))?;
        Self::from_gguf(path, base)
    }

    fn from_gguf(path: &Path, base: gguf::GgufBase) -> Result<Self, ModelFileError> {
        let tokenizer =
            Tokenizer::from_json(base.tokenizer_json).map_err(|e| file_error(path, e))?;
        Ok(Self {
            config: base.config,
            tensors: base.tensors,
            tokenizer,
            chat_template: base.chat_template.unwrap_or_else(|| CHATML.into()),
            name: base.name.unwrap_or_else(|| stem(path)),
            weights_hash: hash_file(path)?,
            source: path.to_path_buf(),
        })
    }

    fn open_dir(dir: &Path, device: &Device) -> Result<Self, ModelFileError> {
        let config = files::read_config(dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| file_error(&weights, e))?;
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        // A model trained on UTF-8 bytes has no tokenizer file: its ids are the bytes.
        let tokenizer = if tokenizer_path.exists() {
            Tokenizer::from_file(&tokenizer_path).map_err(|e| file_error(&tokenizer_path, e))?
        } else {
            Tokenizer::Bytes
        };
        let chat_template = std::fs::read_to_string(dir.join(TOKENIZER_CONFIG_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("chat_template")?.as_str().map(String::from))
            .unwrap_or_else(|| CHATML.into());
        Ok(Self {
            config,
            tensors,
            tokenizer,
            chat_template,
            name: stem(dir),
            weights_hash: hash_file(&weights)?,
            source: dir.to_path_buf(),
        })
    }

    /// The decoder over these weights (shared, not copied: candle tensors are reference
    /// counted), with no adapter.
    pub fn model(&self, device: &Device) -> Result<Llama, ModelFileError> {
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, device);
        Ok(Llama::load(vb, &self.config)?)
    }

    pub fn template(&self) -> Result<ChatTemplate, ModelFileError> {
        ChatTemplate::new(&self.chat_template).map_err(|e| file_error(&self.source, e))
    }

    /// The id that ends a document or an assistant turn.
    pub fn eos(&self) -> u32 {
        self.config
            .eos_token_id
            .unwrap_or(self.config.vocab_size.saturating_sub(1) as u32)
    }

    /// Writes the base in Hugging Face's layout: `config.json`, `model.safetensors`,
    /// `tokenizer.json` and a `tokenizer_config.json` with the chat template.
    pub fn save(&self, dir: &Path) -> Result<(), ModelFileError> {
        files::write_config(dir, &self.config)?;
        let weights = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&self.tensors, &weights)
            .map_err(|e| file_error(&weights, e))?;
        self.save_tokenizer(dir)
    }

    /// Writes `tokenizer.json` (when the tokenizer has one) and `tokenizer_config.json`.
    pub fn save_tokenizer(&self, dir: &Path) -> Result<(), ModelFileError> {
        let eos = self.tokenizer.decode(&[self.eos()]).unwrap_or_default();
        write_tokenizer_files(
            dir,
            &self.tokenizer,
            &self.chat_template,
            Some(eos),
            self.config.max_position_embeddings,
        )
    }
}

/// Writes `tokenizer.json` (when `tokenizer` has one) and the `tokenizer_config.json` where
/// `transformers` finds the chat template, the end token (when it is text) and the context.
pub fn write_tokenizer_files(
    dir: &Path,
    tokenizer: &Tokenizer,
    chat_template: &str,
    eos_token: Option<String>,
    max_length: usize,
) -> Result<(), ModelFileError> {
    if let Some(json) = tokenizer.json() {
        let path = dir.join(TOKENIZER_FILE);
        std::fs::write(&path, json).map_err(|e| file_error(&path, e))?;
    }
    let mut config = serde_json::json!({
        "chat_template": chat_template,
        "model_max_length": max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let (Some(eos), Some(map)) = (eos_token, config.as_object_mut()) {
        map.insert("eos_token".into(), eos.into());
    }
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )
    .map_err(|e| file_error(&path, e))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A base's config without loading its weights.
pub fn config_of(path: &Path) -> Result<crate::model::LlamaConfig, ModelFileError> {
    if path.is_dir() {
        files::read_config(path)
    } else {
        gguf::read_config(path).map_err(|e| file_error(path, e))
    }
}
