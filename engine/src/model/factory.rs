//! From records to a model on disk: tokenize a corpus with the tokenizer an index uses (bytes
//! or a trained byte-level BPE), add an end-of-document token after the tokenizer's ids, pack,
//! train from scratch, and write the model in Hugging Face's layout with the tokenizer and a
//! report of the run beside it.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use super::files::{self, ModelFileError};
use super::train::{self, StepReport, TrainConfig, TrainReport};
use super::{Llama, LlamaConfig};
use crate::attribution::corpus::Corpus;
use crate::attribution::Tokenizer;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const REPORT_FILE: &str = "training.json";

/// Records tokenized per call.
const CHUNK: usize = 1024;

/// Trains `model` (its `vocab_size` is set here: the tokenizer's ids plus one end-of-document
/// token) on `corpus`, and writes it to `out`.
pub fn train_from_scratch(
    corpus: Corpus,
    tokenizer: &Tokenizer,
    mut model: LlamaConfig,
    cfg: &TrainConfig,
    out: &Path,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<TrainReport, ModelFileError> {
    let eos = tokenizer.vocab_size();
    model.vocab_size = eos as usize + 1;
    model.eos_token_id = Some(eos);
    model.max_position_embeddings = model.max_position_embeddings.max(cfg.seq_len);
    let mut documents = Vec::new();
    let mut texts = Vec::with_capacity(CHUNK);
    let mut docs = corpus.documents.peekable();
    while docs.peek().is_some() {
        texts.clear();
        for doc in docs.by_ref().take(CHUNK) {
            texts.push(
                doc.map_err(|e| ModelFileError::Model(candle_core::Error::msg(e)))?
                    .text,
            );
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        documents.extend(
            tokenizer
                .encode_batch(&refs)
                .map_err(|e| ModelFileError::Model(candle_core::Error::msg(e)))?,
        );
    }
    let windows = train::pack(&documents, eos, cfg.seq_len);
    if windows.len() < 2 {
        return Err(ModelFileError::Model(candle_core::Error::msg(format!(
            "the corpus gives {} windows of {} tokens; it needs at least 2",
            windows.len(),
            cfg.seq_len + 1
        ))));
    }
    let device = Device::Cpu;
    let vars = VarMap::new();
    let llama = Llama::load(VarBuilder::from_varmap(&vars, DType::F32, &device), &model)?;
    train::seeded_init(&vars, cfg.seed)?;
    let report = train::train(&llama, vars.all_vars(), &windows, cfg, &device, progress)?;
    files::save(out, &model, &vars)?;
    if let Some(json) = tokenizer.json() {
        std::fs::write(out.join(TOKENIZER_FILE), json).map_err(|e| ModelFileError::File {
            path: out.join(TOKENIZER_FILE).display().to_string(),
            message: e.to_string(),
        })?;
    }
    let summary = serde_json::json!({
        "train": cfg,
        "tokenizer": tokenizer.kind(),
        "tokenizer_hash": hex::encode(tokenizer.hash()),
        "windows": windows.len(),
        "report": report,
    });
    let path = out.join(REPORT_FILE);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )
    .map_err(|e| ModelFileError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(report)
}
