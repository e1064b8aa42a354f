//! From texts to a model on disk, the two ways a user asks for one:
//! - from scratch: tokenize with the tokenizer an index uses (bytes, or a trained byte-level
//!   BPE), add an end-of-document token after its ids, pack, train every weight;
//! - LoRA: tokenize with the base's tokenizer, end documents with its end-of-turn token, and
//!   train only an adapter over the frozen, dequantised base.
//!
//! Either way the output is in the layout the Hugging Face tools load (`config.json` and
//! `model.safetensors`, or PEFT's `adapter_config.json` and `adapter_model.safetensors`), with
//! the tokenizer, checkpoints under `checkpoints/step-N/`, and `training.json`, the run's report.

use std::path::{Path, PathBuf};

use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use super::adapter::{self, AdapterConfig};
use super::base::{hash_file, write_tokenizer_files, Base};
use super::chat::CHATML;
use super::files::{self, ModelFileError, WEIGHTS_FILE};
use super::lora::LoraSpec;
use super::train::{self, StepReport, TrainConfig, TrainError, TrainObserver, TrainReport};
use super::{Llama, LlamaConfig};
use crate::attribution::Tokenizer;

pub const REPORT_FILE: &str = "training.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// Texts tokenized per call.
const CHUNK: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    /// The data cannot make a model (too little, a tokenizer that fails on it).
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Files(#[from] ModelFileError),
    #[error(transparent)]
    Train(#[from] TrainError),
}

impl From<candle_core::Error> for FactoryError {
    fn from(e: candle_core::Error) -> Self {
        Self::Train(TrainError::Model(e))
    }
}

/// What a run made, for the model card.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub report: TrainReport,
    pub windows: usize,
    pub documents: usize,
    /// BLAKE3 (hex) of `model.safetensors` or `adapter_model.safetensors`.
    pub weights_hash: String,
    /// BLAKE3 (hex) of the tokenizer, as the attribution index records it.
    pub tokenizer_hash: String,
    pub trainable_parameters: usize,
}

fn tokenize(tokenizer: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>, FactoryError> {
    let mut documents = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(CHUNK) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        documents.extend(
            tokenizer
                .encode_batch(&refs)
                .map_err(|e| FactoryError::Data(e.to_string()))?,
        );
    }
    Ok(documents)
}

fn windows(
    documents: &[Vec<u32>],
    eos: u32,
    cfg: &TrainConfig,
) -> Result<Vec<Vec<u32>>, FactoryError> {
    let windows = train::pack(documents, eos, cfg.seq_len);
    if windows.len() < 2 {
        return Err(FactoryError::Data(format!(
            "the data gives {} windows of {} tokens; it needs at least 2",
            windows.len(),
            cfg.seq_len + 1
        )));
    }
    Ok(windows)
}

/// Saves the trainable variables at checkpoints, passing everything else to the caller's
/// observer.
struct Checkpoints<'a> {
    inner: &'a mut dyn TrainObserver,
    vars: &'a VarMap,
    dir: PathBuf,
    file: &'static str,
}

impl TrainObserver for Checkpoints<'_> {
    fn step(&mut self, report: &StepReport) {
        self.inner.step(report)
    }

    fn checkpoint(&mut self, step: usize) -> candle_core::Result<()> {
        let dir = self
            .dir
            .join(CHECKPOINTS_DIR)
            .join(format!("step-{step:06}"));
        std::fs::create_dir_all(&dir).map_err(candle_core::Error::wrap)?;
        self.vars.save(dir.join(self.file))
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// Seeds `vars` and trains them, saving them into `out/checkpoints/` as `file` on the way.
fn train_vars(
    llama: &Llama,
    vars: &VarMap,
    windows: &[Vec<u32>],
    cfg: &TrainConfig,
    out: &Path,
    file: &'static str,
    observer: &mut dyn TrainObserver,
) -> Result<TrainReport, FactoryError> {
    train::seeded_init(vars, cfg.seed)?;
    let mut observer = Checkpoints {
        inner: observer,
        vars,
        dir: out.to_path_buf(),
        file,
    };
    Ok(train::train(
        llama,
        vars.all_vars(),
        windows,
        cfg,
        llama.device(),
        &mut observer,
    )?)
}

fn write_report(out: &Path, summary: &serde_json::Value) -> Result<(), ModelFileError> {
    let path = out.join(REPORT_FILE);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(summary).unwrap_or_default(),
    )
    .map_err(|e| ModelFileError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn parameters(vars: &VarMap) -> usize {
    vars.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// Trains `model` (its `vocab_size` is set here: the tokenizer's ids plus one end-of-document
/// token) on `texts`, and writes it to `out`.
pub fn train_from_scratch(
    texts: &[String],
    tokenizer: &Tokenizer,
    mut model: LlamaConfig,
    cfg: &TrainConfig,
    out: &Path,
    observer: &mut dyn TrainObserver,
) -> Result<Outcome, FactoryError> {
    let eos = tokenizer.vocab_size();
    model.vocab_size = eos as usize + 1;
    model.eos_token_id = Some(eos);
    model.max_position_embeddings = model.max_position_embeddings.max(cfg.seq_len + 1);
    let documents = tokenize(tokenizer, texts)?;
    let windows = windows(&documents, eos, cfg)?;
    let device = super::device();
    let vars = VarMap::new();
    let llama = Llama::load(VarBuilder::from_varmap(&vars, DType::F32, &device), &model)?;
    let report = train_vars(&llama, &vars, &windows, cfg, out, WEIGHTS_FILE, observer)?;
    files::save(out, &model, &vars)?;
    // The end-of-document id is past the tokenizer's own ids: it has no text.
    write_tokenizer_files(out, tokenizer, CHATML, None, model.max_position_embeddings)?;
    let outcome = Outcome {
        windows: windows.len(),
        documents: documents.len(),
        weights_hash: hash_file(&out.join(WEIGHTS_FILE))?,
        tokenizer_hash: hex::encode(tokenizer.hash()),
        trainable_parameters: parameters(&vars),
        report,
    };
    write_report(
        out,
        &serde_json::json!({
            "kind": "scratch",
            "train": cfg,
            "tokenizer": tokenizer.kind(),
            "outcome": outcome,
        }),
    )?;
    Ok(outcome)
}

/// How to shape a LoRA run.
#[derive(Debug, Clone)]
pub struct LoraRun {
    pub spec: LoraSpec,
    pub targets: Vec<String>,
}

/// Trains a LoRA adapter over the frozen `base` on `texts`, and writes it to `out` with the
/// base's tokenizer.
pub fn fine_tune(
    texts: &[String],
    base: &Base,
    run: &LoraRun,
    cfg: &TrainConfig,
    out: &Path,
    observer: &mut dyn TrainObserver,
) -> Result<Outcome, FactoryError> {
    if cfg.seq_len + 1 > base.config.max_position_embeddings {
        return Err(FactoryError::Data(format!(
            "seq_len {} is past the base's {} positions",
            cfg.seq_len, base.config.max_position_embeddings
        )));
    }
    let eos = base.eos();
    let documents = tokenize(&base.tokenizer, texts)?;
    let windows = windows(&documents, eos, cfg)?;
    let device = super::device();
    let mut llama = base.model(&device)?;
    let vars = VarMap::new();
    let targets: Vec<&str> = run.targets.iter().map(String::as_str).collect();
    llama.add_lora(
        &VarBuilder::from_varmap(&vars, DType::F32, &device),
        &run.spec,
        &targets,
    )?;
    let report = train_vars(
        &llama,
        &vars,
        &windows,
        cfg,
        out,
        adapter::ADAPTER_WEIGHTS_FILE,
        observer,
    )?;
    let config = AdapterConfig::new(&run.spec, &targets, Some(base.name.clone()));
    adapter::save(out, &config, &vars)?;
    base.save_tokenizer(out)?;
    let outcome = Outcome {
        windows: windows.len(),
        documents: documents.len(),
        weights_hash: hash_file(&out.join(adapter::ADAPTER_WEIGHTS_FILE))?,
        tokenizer_hash: hex::encode(base.tokenizer.hash()),
        trainable_parameters: parameters(&vars),
        report,
    };
    write_report(
        out,
        &serde_json::json!({
            "kind": "lora",
            "base": base.name,
            "base_weights_hash": base.weights_hash,
            "train": cfg,
            "r": run.spec.r,
            "lora_alpha": run.spec.alpha,
            "target_modules": run.targets,
            "outcome": outcome,
        }),
    )?;
    Ok(outcome)
}
