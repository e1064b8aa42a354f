//! The model registry: what `POST /v1/models` trains, and the cards that describe the results.
//! A run writes into `<data>/models/.staging/<job>/`; only a finished run is renamed to
//! `<data>/models/<id>/` and only then is its card committed to RocksDB, so a cancelled or
//! crashed run leaves no model behind (staging is cleared at start). A model's id is derived
//! from the hashes of its weights and tokenizer: the same seeded run gives the same id.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::base::Base;
use super::chat::ChatTemplate;
use super::data::{self, TextSource};
use super::factory::{self, FactoryError, LoraRun, Outcome};
use super::llama::LORA_TARGETS;
use super::lora::LoraSpec;
use super::train::{StepReport, TrainConfig, TrainError, TrainObserver};
use super::LlamaConfig;
use crate::attribution::service::Attributions;
use crate::attribution::Tokenizer;
use crate::datanet::service::Datanets;
use crate::jobs::Progress;
use crate::store::{Store, StoreError, CF_MODELS};

const STAGING: &str = ".staging";

/// Limits on what one request may ask of the server's memory: tokens in a batch, elements
/// of one attention-score tensor (batch × heads × seq_len², four bytes each in f32), and
/// parameters of a model trained from scratch (weights, gradients and two moments).
const MAX_BATCH_TOKENS: usize = 1 << 17;
const MAX_SCORE_ELEMENTS: usize = 1 << 28;
const MAX_PARAMETERS: usize = 1 << 28;

/// Whether the caller may read a Datanet, by id: what `plan` asks before it lets a request
/// use another model as its base, or an index's tokenizer.
pub type CanRead<'a> = &'a dyn Fn(&str) -> bool;

/// `POST /v1/models`: what to train. Unset hyperparameters take the defaults shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// A name for people; defaults to `<datanet>-v<version>`.
    #[serde(default)]
    pub name: Option<String>,
    pub datanet: String,
    pub version: u32,
    /// Fine-tune a LoRA adapter over this base: a GGUF file in the server's bases directory
    /// (by file name, with or without `.gguf`) or the id of a model in the registry. Unset:
    /// train a decoder from scratch.
    #[serde(default)]
    pub base: Option<String>,
    /// Chat data: the field of the user's turn; with `response_field`, records are rendered
    /// by the model's chat template. Unset: the version's text field.
    #[serde(default)]
    pub prompt_field: Option<String>,
    #[serde(default)]
    pub response_field: Option<String>,
    /// From scratch: `bytes` (default), `bpe:VOCAB` (trained on the version), or the hash
    /// of an index whose tokenizer to use, so that the index attributes the model's outputs.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Default 200.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Default 8.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Default 64.
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Default 3e-3 from scratch, 1e-3 for LoRA.
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Save the trainable weights every this many steps (default 0: never).
    #[serde(default)]
    pub checkpoint_every: Option<usize>,
    /// From scratch: width (default 64), layers (2) and attention heads (4).
    #[serde(default)]
    pub hidden: Option<usize>,
    #[serde(default)]
    pub layers: Option<usize>,
    #[serde(default)]
    pub heads: Option<usize>,
    /// LoRA: rank (default 8), alpha (16) and target layers (`q_proj`, `v_proj`).
    #[serde(default)]
    pub r: Option<usize>,
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub targets: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A decoder trained from scratch.
    Scratch,
    /// A LoRA adapter over a base.
    Lora,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BaseInfo {
    pub name: String,
    /// BLAKE3 of the base's weights file (the GGUF file, or `model.safetensors`).
    pub weights_hash: String,
    /// The registry id, when the base is one of our models.
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Metrics {
    pub steps: usize,
    pub final_loss: f64,
    pub held_out_loss: Option<f64>,
    pub tokens_per_second: f64,
    pub windows: usize,
    pub documents: usize,
    pub trainable_parameters: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hashes {
    /// BLAKE3 of `model.safetensors` or `adapter_model.safetensors`.
    pub weights: String,
    /// BLAKE3 of the tokenizer, as indexes record it.
    pub tokenizer: String,
    /// A span index over the same version with the same tokenizer, when there is one.
    pub index: Option<String>,
}

/// What the registry says of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub name: String,
    pub kind: ModelKind,
    pub base: Option<BaseInfo>,
    pub datanet: String,
    pub version: u32,
    /// The version's Merkle root: the records the model learned from.
    pub version_root: String,
    pub text: TextSource,
    /// The model's shape (`config.json`), for models trained from scratch.
    #[schema(value_type = Option<Object>)]
    pub config: Option<LlamaConfig>,
    #[schema(value_type = Object)]
    pub hyperparameters: serde_json::Value,
    pub metrics: Metrics,
    pub hashes: Hashes,
    /// The files in the model's directory.
    pub files: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub job: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no model {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
}

fn invalid(field: &str, message: impl Into<String>) -> ModelError {
    ModelError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A request with every default filled in and checked.
#[derive(Debug, Clone)]
struct Plan {
    train: TrainConfig,
    source: TextSource,
    shape: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    Scratch {
        model: LlamaConfig,
        tokenizer: TokenizerPlan,
    },
    Lora {
        base: PathBuf,
        base_model: Option<String>,
        run: LoraRun,
    },
}

#[derive(Debug, Clone)]
enum TokenizerPlan {
    Bytes,
    Bpe(u32),
    Index(String),
}

pub struct Registry {
    dir: PathBuf,
    bases: PathBuf,
    store: std::sync::Arc<Store>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Reports training steps to a job and passes its cancellation back.
struct JobObserver<'a, 'b> {
    progress: &'a Progress<'b>,
}

impl TrainObserver for JobObserver<'_, '_> {
    fn step(&mut self, s: &StepReport) {
        let left = (s.steps - s.step) as f64;
        self.progress.report(
            "training",
            s.step as u64,
            Some(s.steps as u64),
            serde_json::json!({
                "step": s.step,
                "loss": s.loss,
                "held_out_loss": s.held_out_loss,
                "lr": s.lr,
                "tokens_per_second": s.tokens_per_second,
                "eta_seconds": s.seconds / s.step.max(1) as f64 * left,
            }),
        );
    }

    fn cancelled(&self) -> bool {
        self.progress.cancelled()
    }
}

impl Registry {
    /// The registry under `<data_dir>/models`, with bases (GGUF files) looked up in `bases`.
    /// Clears what unfinished runs left in staging.
    pub fn open(data_dir: &Path, bases: &Path, store: std::sync::Arc<Store>) -> Self {
        let dir = data_dir.join("models");
        let _ = std::fs::remove_dir_all(dir.join(STAGING));
        Self {
            dir,
            bases: bases.to_path_buf(),
            store,
        }
    }

    pub fn model_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn list(&self) -> Result<Vec<ModelCard>, ModelError> {
        let mut cards: Vec<ModelCard> = self.store.scan_prefix_json(CF_MODELS, b"")?;
        cards.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(cards)
    }

    pub fn get(&self, id: &str) -> Result<ModelCard, ModelError> {
        self.store
            .get_json(CF_MODELS, id.as_bytes())?
            .ok_or_else(|| ModelError::NotFound(id.to_string()))
    }

    /// The bases directory's GGUF files, by name without `.gguf`.
    pub fn bases(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.bases)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".gguf").map(String::from)
            })
            .collect();
        names.sort();
        names
    }

    pub fn resolve_base(
        &self,
        name: &str,
        can_read: CanRead,
    ) -> Result<(PathBuf, Option<String>), ModelError> {
        if let Some(card) = self.get(name).ok().filter(|c| can_read(&c.datanet)) {
            if card.kind != ModelKind::Scratch {
                return Err(invalid(
                    "base",
                    format!("{name} is a LoRA adapter; a base must be a full model"),
                ));
            }
            return Ok((self.model_dir(name), Some(name.to_string())));
        }
        let stem = name.strip_suffix(".gguf").unwrap_or(name);
        if let Some(found) = self
            .bases()
            .into_iter()
            .find(|b| b.eq_ignore_ascii_case(stem))
        {
            return Ok((self.bases.join(format!("{found}.gguf")), None));
        }
        let known = self.bases();
        Err(invalid(
            "base",
            format!(
                "{name:?} is neither a model id nor a base in {} (there: {})",
                self.bases.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ))
    }

    /// Checks a request against the version it names and fills in the defaults.
    fn plan(
        &self,
        request: &TrainRequest,
        datanets: &Datanets,
        attributions: &Attributions,
        can_read: CanRead,
    ) -> Result<Plan, ModelError> {
        let version = datanets
            .version(&request.datanet, request.version)
            .map_err(|e| invalid("version", e.to_string()))?;
        let has_field = |f: &str| version.schema.fields.iter().any(|x| x.name == f);
        let source = match (&request.prompt_field, &request.response_field) {
            (Some(p), Some(r)) => {
                for (field, name) in [("prompt_field", p), ("response_field", r)] {
                    if !has_field(name) {
                        return Err(invalid(field, format!("the version has no field {name:?}")));
                    }
                }
                TextSource::Chat {
                    prompt: p.clone(),
                    response: r.clone(),
                }
            }
            (None, None) => TextSource::Field(version.schema.text_field.clone()),
            (Some(_), None) => return Err(invalid("response_field", "give it with prompt_field")),
            (None, Some(_)) => return Err(invalid("prompt_field", "give it with response_field")),
        };
        let lora = request.base.is_some();
        let steps = request.steps.unwrap_or(200);
        if !(1..=1_000_000).contains(&steps) {
            return Err(invalid("steps", "must be in 1..=1000000"));
        }
        let batch_size = request.batch_size.unwrap_or(8);
        if !(1..=1024).contains(&batch_size) {
            return Err(invalid("batch_size", "must be in 1..=1024"));
        }
        let seq_len = request.seq_len.unwrap_or(64);
        if !(2..=8192).contains(&seq_len) {
            return Err(invalid("seq_len", "must be in 2..=8192"));
        }
        if batch_size * seq_len > MAX_BATCH_TOKENS {
            return Err(invalid(
                "batch_size",
                format!(
                    "batch_size × seq_len is {}; the limit is {MAX_BATCH_TOKENS}",
                    batch_size * seq_len
                ),
            ));
        }
        let lr = request.lr.unwrap_or(if lora { 1e-3 } else { 3e-3 });
        if !(lr.is_finite() && lr > 0.0 && lr < 1.0) {
            return Err(invalid("lr", "must be a number in (0, 1)"));
        }
        let checkpoint_every = request.checkpoint_every.unwrap_or(0);
        let train = TrainConfig {
            steps,
            batch_size,
            seq_len,
            lr,
            warmup_steps: (steps / 10).max(1),
            eval_every: (steps / 5).max(1),
            seed: request.seed.unwrap_or(0),
            checkpoint_every,
            ..TrainConfig::default()
        };
        let shape = match &request.base {
            Some(base) => {
                let (path, base_model) = self.resolve_base(base, can_read)?;
                let base_config =
                    super::base::config_of(&path).map_err(|e| invalid("base", e.to_string()))?;
                if seq_len + 1 > base_config.max_position_embeddings {
                    return Err(invalid(
                        "seq_len",
                        format!(
                            "the base reads at most {} positions; seq_len must be below that",
                            base_config.max_position_embeddings
                        ),
                    ));
                }
                check_scores(batch_size, base_config.num_attention_heads, seq_len)?;
                for (field, set) in [
                    ("tokenizer", request.tokenizer.is_some()),
                    ("hidden", request.hidden.is_some()),
                    ("layers", request.layers.is_some()),
                    ("heads", request.heads.is_some()),
                ] {
                    if set {
                        return Err(invalid(field, "a LoRA run takes the base's; leave it out"));
                    }
                }
                let r = request.r.unwrap_or(8);
                if !(1..=1024).contains(&r) {
                    return Err(invalid("r", "must be in 1..=1024"));
                }
                let alpha = request.alpha.unwrap_or(16.0);
                if !(alpha.is_finite() && alpha > 0.0 && alpha <= 1e4) {
                    return Err(invalid("alpha", "must be a number in (0, 10000]"));
                }
                let targets = request
                    .targets
                    .clone()
                    .unwrap_or_else(|| vec!["q_proj".into(), "v_proj".into()]);
                if targets.is_empty() {
                    return Err(invalid("targets", "name at least one layer"));
                }
                if let Some(t) = targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
                    return Err(invalid(
                        "targets",
                        format!("{t:?} is not one of {}", LORA_TARGETS.join(", ")),
                    ));
                }
                Shape::Lora {
                    base: path,
                    base_model,
                    run: LoraRun {
                        spec: LoraSpec { r, alpha },
                        targets,
                    },
                }
            }
            None => {
                for (field, set) in [
                    ("r", request.r.is_some()),
                    ("alpha", request.alpha.is_some()),
                    ("targets", request.targets.is_some()),
                ] {
                    if set {
                        return Err(invalid(field, "only a LoRA run (with base) takes it"));
                    }
                }
                let hidden = request.hidden.unwrap_or(64);
                let layers = request.layers.unwrap_or(2);
                let heads = request.heads.unwrap_or(4);
                if !(1..=64).contains(&heads) {
                    return Err(invalid("heads", "must be in 1..=64"));
                }
                if !(2..=8192).contains(&hidden) || !hidden.is_multiple_of(2 * heads) {
                    return Err(invalid(
                        "hidden",
                        "must be in 2..=8192 and a multiple of twice heads",
                    ));
                }
                if !(1..=64).contains(&layers) {
                    return Err(invalid("layers", "must be in 1..=64"));
                }
                let tokenizer = match request.tokenizer.as_deref().unwrap_or("bytes") {
                    "bytes" => TokenizerPlan::Bytes,
                    t if t.starts_with("bpe:") => {
                        let vocab: u32 = t[4..].parse().map_err(|_| {
                            invalid(
                                "tokenizer",
                                format!("{t:?}: the vocabulary is not a number"),
                            )
                        })?;
                        if !(257..=65_535).contains(&vocab) {
                            return Err(invalid(
                                "tokenizer",
                                "the vocabulary must be in 257..=65535",
                            ));
                        }
                        TokenizerPlan::Bpe(vocab)
                    }
                    hash => {
                        let readable = attributions
                            .index(hash)
                            .ok()
                            .filter(|i| i.meta.datanet.as_deref().is_some_and(can_read));
                        if readable.is_none() {
                            return Err(invalid(
                                "tokenizer",
                                format!(
                                    "{hash:?} is not bytes, bpe:VOCAB or an index you can read"
                                ),
                            ));
                        }
                        TokenizerPlan::Index(hash.to_string())
                    }
                };
                check_scores(batch_size, heads, seq_len)?;
                let intermediate = hidden * 8 / 3 / 8 * 8 + 8;
                let parameters = layers * (4 * hidden * hidden + 3 * hidden * intermediate)
                    + 2 * 65_536 * hidden;
                if parameters > MAX_PARAMETERS {
                    return Err(invalid(
                        "hidden",
                        format!(
                            "hidden {hidden} with {layers} layers is up to {parameters} parameters; \
                             the limit is {MAX_PARAMETERS}"
                        ),
                    ));
                }
                Shape::Scratch {
                    model: LlamaConfig {
                        hidden_size: hidden,
                        intermediate_size: intermediate,
                        num_hidden_layers: layers,
                        num_attention_heads: heads,
                        num_key_value_heads: heads,
                        max_position_embeddings: (seq_len + 1).max(2048),
                        ..LlamaConfig::tiny(0)
                    },
                    tokenizer,
                }
            }
        };
        Ok(Plan {
            train,
            source,
            shape,
        })
    }

    /// Checks `request` now, so that the API refuses a bad one before queueing it.
    pub fn check(
        &self,
        request: &TrainRequest,
        datanets: &Datanets,
        attributions: &Attributions,
        can_read: CanRead,
    ) -> Result<(), ModelError> {
        self.plan(request, datanets, attributions, can_read)
            .map(|_| ())
    }

    /// Runs `request` as job `job`: trains in staging, then files the model and its card.
    pub fn train(
        &self,
        request: &TrainRequest,
        datanets: &Datanets,
        attributions: &Attributions,
        job: &str,
        progress: &Progress,
    ) -> Result<ModelCard, ModelError> {
        // What the caller may read was checked when the request was accepted.
        let plan = self.plan(request, datanets, attributions, &|_| true)?;
        let version = datanets
            .version(&request.datanet, request.version)
            .map_err(|e| ModelError::Failed(e.to_string()))?;
        progress.update("exporting", 0, None);
        let export = datanets
            .export(&request.datanet, request.version)
            .map_err(|e| ModelError::Failed(e.to_string()))?;
        let staging = self.dir.join(STAGING).join(job);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| ModelError::Failed(e.to_string()))?;
        // Whatever ends this run early (an error, a cancel, a panic) removes its staging.
        let _cleanup = RemoveOnDrop(staging.clone());
        let started = std::time::Instant::now();
        let mut observer = JobObserver { progress };
        let failed = |e: FactoryError| match e {
            FactoryError::Train(TrainError::Cancelled(step)) => {
                ModelError::Failed(format!("cancelled before step {step}"))
            }
            e => ModelError::Failed(e.to_string()),
        };
        let outcome = (|| -> Result<(Outcome, ModelKind, Option<BaseInfo>, Option<LlamaConfig>), ModelError> {
            match &plan.shape {
                Shape::Scratch { model, tokenizer } => {
                    progress.update("reading", 0, None);
                    let texts = data::read_texts(&export, &plan.source, &ChatTemplate::chatml())
                        .map_err(|e| ModelError::Failed(e.to_string()))?;
                    let tokenizer = match tokenizer {
                        TokenizerPlan::Bytes => Tokenizer::Bytes,
                        TokenizerPlan::Bpe(vocab) => {
                            progress.update("training the tokenizer", 0, None);
                            Tokenizer::train_bpe(texts.iter(), *vocab)
                                .map_err(|e| ModelError::Failed(e.to_string()))?
                        }
                        TokenizerPlan::Index(hash) => attributions
                            .index(hash)
                            .and_then(|i| i.tokenizer())
                            .map_err(|e| ModelError::Failed(e.to_string()))?,
                    };
                    let outcome = factory::train_from_scratch(
                        &texts,
                        &tokenizer,
                        model.clone(),
                        &plan.train,
                        &staging,
                        &mut observer,
                    )
                    .map_err(failed)?;
                    let config = super::files::read_config(&staging)
                        .map_err(|e| ModelError::Failed(e.to_string()))?;
                    Ok((outcome, ModelKind::Scratch, None, Some(config)))
                }
                Shape::Lora {
                    base,
                    base_model,
                    run,
                } => {
                    progress.update("loading the base", 0, None);
                    let base = Base::open(base, &super::device())
                        .map_err(|e| ModelError::Failed(e.to_string()))?;
                    let template = base
                        .template()
                        .map_err(|e| ModelError::Failed(e.to_string()))?;
                    let texts = data::read_texts(&export, &plan.source, &template)
                        .map_err(|e| ModelError::Failed(e.to_string()))?;
                    let outcome = factory::fine_tune(
                        &texts,
                        &base,
                        run,
                        &plan.train,
                        &staging,
                        &mut observer,
                    )
                    .map_err(failed)?;
                    let info = BaseInfo {
                        name: base.name.clone(),
                        weights_hash: base.weights_hash.clone(),
                        model: base_model.clone(),
                    };
                    Ok((outcome, ModelKind::Lora, Some(info), None))
                }
            }
        })();
        let (outcome, kind, base, config) = outcome?;
        let id = model_id(
            &outcome,
            kind,
            base.as_ref(),
            &request.datanet,
            request.version,
        );
        let target = self.model_dir(&id);
        if target.exists() {
            // The same run again: the model is already filed under this id.
            let _ = std::fs::remove_dir_all(&staging);
            if let Ok(card) = self.get(&id) {
                return Ok(card);
            }
        } else {
            std::fs::rename(&staging, &target).map_err(|e| ModelError::Failed(e.to_string()))?;
        }
        let index = attributions
            .list(Some(&request.datanet), Some(request.version))
            .ok()
            .and_then(|all| {
                all.into_iter()
                    .find(|m| m.tokenizer_hash == outcome.tokenizer_hash)
                    .map(|m| m.hash)
            });
        let mut files: Vec<String> = walk(&target)
            .into_iter()
            .filter_map(|p| {
                p.strip_prefix(&target)
                    .ok()
                    .map(|p| p.display().to_string())
            })
            .collect();
        files.sort();
        let last = outcome.report.steps.last();
        let card = ModelCard {
            id: id.clone(),
            name: request
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-v{}", request.datanet, request.version)),
            kind,
            base,
            datanet: request.datanet.clone(),
            version: request.version,
            version_root: version.merkle_root.clone(),
            text: plan.source.clone(),
            config,
            hyperparameters: hyperparameters(&plan),
            metrics: Metrics {
                steps: outcome.report.steps.len(),
                final_loss: last.map_or(f64::NAN, |s| s.loss),
                held_out_loss: outcome.report.final_held_out_loss,
                tokens_per_second: outcome.report.tokens_per_second,
                windows: outcome.windows,
                documents: outcome.documents,
                trainable_parameters: outcome.trainable_parameters,
                seconds: started.elapsed().as_secs_f64(),
            },
            hashes: Hashes {
                weights: outcome.weights_hash.clone(),
                tokenizer: outcome.tokenizer_hash.clone(),
                index,
            },
            files,
            created_at: now(),
            job: job.to_string(),
        };
        let mut batch = self.store.batch();
        batch.put_json(CF_MODELS, &id, &card)?;
        if let Err(e) = batch.commit() {
            // No card, no model: the files go too.
            let _ = std::fs::remove_dir_all(&target);
            return Err(e.into());
        }
        Ok(card)
    }
}

fn hyperparameters(plan: &Plan) -> serde_json::Value {
    let mut value = serde_json::to_value(&plan.train).unwrap_or_default();
    if let (Shape::Lora { run, .. }, Some(map)) = (&plan.shape, value.as_object_mut()) {
        map.insert("r".into(), run.spec.r.into());
        map.insert("lora_alpha".into(), run.spec.alpha.into());
        map.insert("target_modules".into(), serde_json::json!(run.targets));
    }
    value
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Gone already when the run was renamed into place.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check_scores(batch: usize, heads: usize, seq_len: usize) -> Result<(), ModelError> {
    let scores = batch
        .saturating_mul(heads)
        .saturating_mul(seq_len)
        .saturating_mul(seq_len);
    if scores > MAX_SCORE_ELEMENTS {
        return Err(invalid(
            "seq_len",
            format!(
                "batch_size × heads × seq_len² is {scores}; the limit is {MAX_SCORE_ELEMENTS} \
                 (a smaller batch or shorter windows fit)"
            ),
        ));
    }
    Ok(())
}

/// `m-` and 24 hex digits of BLAKE3 over what defines the model: its files and what it was
/// trained on.
fn model_id(
    outcome: &Outcome,
    kind: ModelKind,
    base: Option<&BaseInfo>,
    datanet: &str,
    version: u32,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"tributary:model:1");
    h.update(datanet.as_bytes());
    h.update(&version.to_le_bytes());
    h.update(format!("{kind:?}").as_bytes());
    h.update(outcome.weights_hash.as_bytes());
    h.update(outcome.tokenizer_hash.as_bytes());
    if let Some(b) = base {
        h.update(b.weights_hash.as_bytes());
    }
    format!("m-{}", &h.finalize().to_hex()[..24])
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
