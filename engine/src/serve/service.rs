//! What the server serves: bases loaded on first use (one copy each, each with its own
//! batching engine), adapters from the model registry or a directory in the adapter cache,
//! model names as OpenAI's `model` field gives them (`base` or `base:adapter`), and the
//! completions kept with their attribution, made at request time or later on demand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::cache::{AdapterCache, CacheError, CachedAdapter};
use super::decoder::for_base;
use super::engine::{Engine, EngineConfig};
use super::lora::Lora;
use super::matrix::Precision;
use crate::attribution::record::{AttributionRecord, ScoredContributor, ScoredRecord};
use crate::attribution::service::{AttributeRequest, Attributions, Prepared, StoredAttribution};
use crate::attribution::AttributionError;
use crate::attribution::Tokenizer;
use crate::model::adapter::{self, AdapterConfig};
use crate::model::base::Base;
use crate::model::chat::ChatTemplate;
use crate::model::registry::{ModelCard, ModelKind, Registry};
use crate::store::{Store, CF_COMPLETIONS};

/// How the server serves.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    pub precision: Precision,
    pub engine: EngineConfig,
    /// Bytes the adapter cache may hold.
    pub adapter_budget: usize,
    /// The highest LoRA rank accepted.
    pub max_rank: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            precision: Precision::Q8,
            engine: EngineConfig::default(),
            adapter_budget: 1 << 30,
            max_rank: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no model {0}")]
    UnknownModel(String),
    #[error("no completion {0}")]
    UnknownCompletion(String),
    #[error("adapter: {0}")]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Failed(String),
}

fn invalid(field: &str, message: impl Into<String>) -> ServeError {
    ServeError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn failed(e: impl std::fmt::Display) -> ServeError {
    ServeError::Failed(e.to_string())
}

/// A base in memory.
pub struct LoadedBase {
    /// The name requests use: a GGUF file's stem or a registry id.
    pub name: String,
    pub engine: Engine,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub eos: u32,
    pub weights_hash: String,
    pub tokenizer_hash: String,
    /// The card, when the base was trained here.
    pub card: Option<ModelCard>,
    pub max_positions: usize,
}

/// An adapter as a request resolved it.
pub struct ResolvedAdapter {
    pub lora: Arc<Lora>,
    pub info: CachedAdapter,
    /// The card, when the adapter was trained here.
    pub card: Option<ModelCard>,
}

pub struct Resolved {
    pub base: Arc<LoadedBase>,
    pub adapter: Option<ResolvedAdapter>,
    /// `base` or `base:adapter`, as the request named it.
    pub model: String,
}

/// One model the server can serve, as `GET /v1/models` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServableModel {
    /// What to put in a request's `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    pub owned_by: String,
    /// `base` (a GGUF file or a model trained from scratch) or `adapter`.
    pub kind: String,
    /// For an adapter: the base it was trained on.
    pub base: Option<String>,
    /// The Datanet version the weights were trained on, when they were trained here.
    pub datanet: Option<String>,
    pub version: Option<u32>,
    /// Whether it is in memory now.
    pub loaded: bool,
    /// The registry's card, when there is one.
    #[schema(value_type = Option<Object>)]
    pub card: Option<ModelCard>,
}

/// Where one part of a completion's attribution comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// `base` or `adapter`.
    pub part: String,
    pub model: String,
    pub datanet: Option<String>,
    pub version: Option<u32>,
    /// The span index over that version, when there is one.
    pub index: Option<String>,
    /// Whether the index's tokenizer is the model's, so the output's ids are traced as they
    /// are; otherwise its text is.
    pub same_tokenizer: bool,
}

/// A completion as kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCompletion {
    pub id: String,
    pub model: String,
    pub created: i64,
    /// Tokens of the prompt as the model saw it (template included): what input is charged.
    #[serde(default)]
    pub prompt_tokens: u64,
    pub output: Vec<u32>,
    pub text: String,
    pub sources: Vec<Source>,
    /// Who asked (a token's subject): only they and admins read it back.
    pub by: Option<String>,
}

/// One part of an attribution: the base's training data or the adapter's.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttributionPart {
    /// `base` or `adapter`.
    pub part: String,
    pub model: String,
    pub datanet: Option<String>,
    pub version: Option<u32>,
    pub index: Option<String>,
    /// The attribution record (`GET /v1/attributions/{id}`), when one was made.
    pub record: Option<String>,
    /// The highest-scored records and contributors.
    pub records: Vec<ScoredRecord>,
    pub contributors: Vec<ScoredContributor>,
    pub score_unit: u64,
    /// Why there is no record, when there is none.
    pub note: Option<String>,
}

impl AttributionPart {
    /// The part for `source` before any record is made.
    fn unmade(source: &Source, note: Option<String>) -> Self {
        Self {
            part: source.part.clone(),
            model: source.model.clone(),
            datanet: source.datanet.clone(),
            version: source.version,
            index: source.index.clone(),
            record: None,
            records: Vec::new(),
            contributors: Vec::new(),
            score_unit: crate::attribution::trace::SCORE_UNIT,
            note,
        }
    }
}

/// A completion's attribution traced but not filed: its parts, and the records to file for
/// those that have an index.
#[derive(Clone)]
pub struct PreparedAttribution {
    pub id: String,
    parts: Vec<AttributionPart>,
    /// (part slot, prepared record).
    traced: Vec<(usize, Prepared)>,
}

impl PreparedAttribution {
    /// The records the parts will have, in part order.
    pub fn records(&self) -> impl Iterator<Item = &AttributionRecord> {
        self.traced.iter().map(|(_, p)| p.record())
    }

    /// Whether every record is filed already (the completion was attributed before).
    pub fn is_filed(&self) -> bool {
        self.traced
            .iter()
            .all(|(_, p)| matches!(p, Prepared::Filed(_)))
    }
}

/// A failure while filing: the attribution service's own, or the caller's extra writes'.
enum Filing<E> {
    Attribution(AttributionError),
    Extra(E),
}

impl<E> From<AttributionError> for Filing<E> {
    fn from(e: AttributionError) -> Self {
        Filing::Attribution(e)
    }
}

/// The `attribution` object of a completion.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompletionAttribution {
    /// The completion's id: `GET /v1/completions/{id}/attribution` returns this object.
    pub id: String,
    /// `complete`, or `deferred` when the request turned attribution off (it is made when
    /// first asked for).
    pub status: String,
    pub parts: Vec<AttributionPart>,
}

/// Records and contributors listed per part.
pub const TOP: usize = 10;

/// The serving state of one data directory.
pub struct Serving {
    registry: Arc<Registry>,
    attributions: Arc<Attributions>,
    store: Arc<Store>,
    pub config: ServeConfig,
    bases: Mutex<HashMap<String, Arc<LoadedBase>>>,
    /// Held while a base loads, so that concurrent first requests load it once.
    loading: Mutex<()>,
    pub adapters: AdapterCache,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Serving {
    pub fn new(
        registry: Arc<Registry>,
        attributions: Arc<Attributions>,
        store: Arc<Store>,
        config: ServeConfig,
    ) -> Self {
        Self {
            registry,
            attributions,
            store,
            adapters: AdapterCache::new(config.adapter_budget, config.max_rank),
            config,
            bases: Mutex::new(HashMap::new()),
            loading: Mutex::new(()),
        }
    }

    fn loaded(&self, name: &str) -> Option<Arc<LoadedBase>> {
        let bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        bases.get(name).cloned()
    }

    /// The base `name` (a GGUF stem or a registry id), loaded on first use. Blocking.
    pub fn base(
        &self,
        name: &str,
        can_read: &dyn Fn(&str) -> bool,
    ) -> Result<Arc<LoadedBase>, ServeError> {
        if let Some(b) = self.loaded(name) {
            if b.card.as_ref().is_none_or(|c| can_read(&c.datanet)) {
                return Ok(b);
            }
            return Err(ServeError::UnknownModel(name.into()));
        }
        let (path, model_id) = self
            .registry
            .resolve_base(name, can_read)
            .map_err(|_| ServeError::UnknownModel(name.into()))?;
        let _guard = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = self.loaded(name) {
            return Ok(b);
        }
        let card = match &model_id {
            Some(id) => Some(self.registry.get(id).map_err(failed)?),
            None => None,
        };
        let started = std::time::Instant::now();
        let mut base = Base::open_meta(&path, &candle_core::Device::Cpu).map_err(failed)?;
        let decoder = for_base(&mut base, self.config.precision).map_err(failed)?;
        let template = base.template().map_err(failed)?;
        let loaded = Arc::new(LoadedBase {
            name: name.to_string(),
            eos: base.eos(),
            max_positions: base.config.max_position_embeddings,
            tokenizer_hash: hex::encode(base.tokenizer.hash()),
            weights_hash: base.weights_hash.clone(),
            engine: Engine::start(Arc::new(decoder), self.config.engine).map_err(failed)?,
            tokenizer: base.tokenizer,
            template,
            card,
        });
        tracing::info!(
            base = name,
            seconds = started.elapsed().as_secs_f64(),
            megabytes = loaded.engine.decoder.bytes() / 1_000_000,
            precision = ?self.config.precision,
            layouts = %loaded.engine.decoder.layouts(),
            "base loaded"
        );
        let mut bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        bases.insert(name.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// Resolves `base` or `base:adapter`, loading what is not in memory. Blocking.
    pub fn resolve(
        &self,
        model: &str,
        can_read: &dyn Fn(&str) -> bool,
    ) -> Result<Resolved, ServeError> {
        let (base_name, adapter_name) = match model.split_once(':') {
            Some((b, a)) => (b, Some(a)),
            None => (model, None),
        };
        if base_name.is_empty() || adapter_name.is_some_and(str::is_empty) {
            return Err(invalid(
                "model",
                format!("{model:?} is not `base` or `base:adapter`"),
            ));
        }
        let base = self.base(base_name, can_read)?;
        let adapter = match adapter_name {
            None => None,
            Some(name) => Some(self.adapter(&base, name, can_read)?),
        };
        Ok(Resolved {
            base,
            adapter,
            model: model.to_string(),
        })
    }

    /// The adapter `name` for `base`: from the cache, or read from the registry.
    fn adapter(
        &self,
        base: &LoadedBase,
        name: &str,
        can_read: &dyn Fn(&str) -> bool,
    ) -> Result<ResolvedAdapter, ServeError> {
        let card = self.registry.get(name).ok();
        if let Some(c) = &card {
            if !can_read(&c.datanet) {
                return Err(ServeError::UnknownModel(name.into()));
            }
        }
        if let Some((lora, info)) = self.adapters.get(name) {
            if info.base != base.weights_hash {
                return Err(invalid(
                    "model",
                    format!(
                        "adapter {name} was made for another base than {}",
                        base.name
                    ),
                ));
            }
            return Ok(ResolvedAdapter { lora, info, card });
        }
        let Some(card) = card else {
            return Err(ServeError::UnknownModel(name.into()));
        };
        let dir = self.registry.model_dir(name);
        let info = self.load_dir(base, name, &dir, false, Some(&card))?;
        let (lora, info) = self
            .adapters
            .get(&info.name)
            .ok_or_else(|| failed("the adapter was evicted as it loaded"))?;
        Ok(ResolvedAdapter {
            lora,
            info,
            card: Some(card),
        })
    }

    /// Reads the PEFT adapter in `dir` into the cache under `name`, for `base`.
    fn load_dir(
        &self,
        base: &LoadedBase,
        name: &str,
        dir: &Path,
        pinned: bool,
        card: Option<&ModelCard>,
    ) -> Result<CachedAdapter, ServeError> {
        if let Some(card) = card {
            if card.kind != ModelKind::Lora {
                return Err(invalid(
                    "model",
                    format!("{name} is a full model, not an adapter"),
                ));
            }
            let made_for = card.base.as_ref().map(|b| b.weights_hash.as_str());
            if made_for != Some(base.weights_hash.as_str()) {
                return Err(invalid(
                    "model",
                    format!(
                        "adapter {name} was trained on another base than {}",
                        base.name
                    ),
                ));
            }
        }
        // The rank is checked from the config before the weights are read.
        let config_path = dir.join(adapter::ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| invalid("path", format!("{}: {e}", config_path.display())))?;
        let peft: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| invalid("path", format!("{}: {e}", config_path.display())))?;
        self.adapters.admissible(peft.r)?;
        // Reading checks every tensor against the base's shapes.
        let lora = Lora::read(dir, &base.engine.decoder.config)
            .map_err(|e| invalid("path", e.to_string()))?;
        let info = CachedAdapter {
            name: name.to_string(),
            base: base.weights_hash.clone(),
            rank: lora.rank,
            targets: lora.targets.clone(),
            bytes: 0,
            pinned,
            source: match card {
                Some(c) => c.id.clone(),
                None => dir.display().to_string(),
            },
        };
        self.adapters.insert(Arc::new(lora), info.clone())?;
        self.adapters
            .get(name)
            .map(|(_, i)| i)
            .ok_or_else(|| failed("the adapter was evicted as it loaded"))
    }

    /// Loads an adapter at run time: a registry adapter by id, or a PEFT directory under a
    /// new name. Blocking.
    pub fn load_adapter(
        &self,
        base: &str,
        name: &str,
        path: Option<&Path>,
        pinned: bool,
        can_read: &dyn Fn(&str) -> bool,
    ) -> Result<CachedAdapter, ServeError> {
        if name.is_empty() || name.len() > 128 || name.contains(':') || name.contains('/') {
            return Err(invalid("name", "1 to 128 characters, without ':' or '/'"));
        }
        let base = self.base(base, can_read)?;
        let card = self.registry.get(name).ok();
        match (path, card) {
            (Some(_), Some(_)) => Err(invalid(
                "name",
                format!("{name} is a registry model; load it without a path, or pick another name"),
            )),
            (Some(p), None) => {
                if !p.is_absolute() {
                    return Err(invalid("path", "must be an absolute path"));
                }
                self.load_dir(&base, name, p, pinned, None)
            }
            (None, Some(card)) => {
                if !can_read(&card.datanet) {
                    return Err(ServeError::UnknownModel(name.into()));
                }
                let dir: PathBuf = self.registry.model_dir(name);
                self.load_dir(&base, name, &dir, pinned, Some(&card))
            }
            (None, None) => Err(ServeError::UnknownModel(name.into())),
        }
    }

    /// Everything servable: the bases directory's GGUF files, models trained from scratch,
    /// adapters in the registry and adapters loaded from directories.
    pub fn list(&self, can_read: &dyn Fn(&str) -> bool) -> Result<Vec<ServableModel>, ServeError> {
        let loaded: HashMap<String, Arc<LoadedBase>> =
            self.bases.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let cached: HashMap<String, CachedAdapter> = self
            .adapters
            .list()
            .into_iter()
            .map(|a| (a.name.clone(), a))
            .collect();
        let mut out = Vec::new();
        for name in self.registry.bases() {
            out.push(ServableModel {
                id: name.clone(),
                object: "model".into(),
                created: 0,
                owned_by: "tributary".into(),
                kind: "base".into(),
                base: None,
                datanet: None,
                version: None,
                loaded: loaded.contains_key(&name),
                card: None,
            });
        }
        let cards = self.registry.list().map_err(failed)?;
        // A registry adapter is listed under the base it was trained on: a GGUF base whose
        // weights hash matches, or the registry base it names.
        let gguf_hashes: HashMap<String, String> = loaded
            .values()
            .filter(|b| b.card.is_none())
            .map(|b| (b.weights_hash.clone(), b.name.clone()))
            .collect();
        for card in cards.into_iter().filter(|c| can_read(&c.datanet)) {
            let (kind, id, base) = match card.kind {
                ModelKind::Scratch => ("base", card.id.clone(), None),
                ModelKind::Lora => {
                    let base = card.base.as_ref().and_then(|b| {
                        b.model
                            .clone()
                            .or_else(|| gguf_hashes.get(&b.weights_hash).cloned())
                            .or_else(|| {
                                let stem = Path::new(&b.name)
                                    .file_stem()?
                                    .to_string_lossy()
                                    .into_owned();
                                Some(stem)
                            })
                    });
                    let id = match &base {
                        Some(b) => format!("{b}:{}", card.id),
                        None => card.id.clone(),
                    };
                    ("adapter", id, base)
                }
            };
            out.push(ServableModel {
                id,
                object: "model".into(),
                created: card.created_at,
                owned_by: card.datanet.clone(),
                kind: kind.into(),
                base,
                datanet: Some(card.datanet.clone()),
                version: Some(card.version),
                loaded: loaded.contains_key(&card.id) || cached.contains_key(&card.id),
                card: Some(card),
            });
        }
        for a in cached.values().filter(|a| !a.source.starts_with("m-")) {
            let base = loaded
                .values()
                .find(|b| b.weights_hash == a.base)
                .map(|b| b.name.clone());
            out.push(ServableModel {
                id: match &base {
                    Some(b) => format!("{b}:{}", a.name),
                    None => a.name.clone(),
                },
                object: "model".into(),
                created: 0,
                owned_by: "operator".into(),
                kind: "adapter".into(),
                base,
                datanet: None,
                version: None,
                loaded: true,
                card: None,
            });
        }
        Ok(out)
    }

    /// Where the attribution of an answer from `resolved` comes from.
    pub fn sources(&self, resolved: &Resolved) -> Vec<Source> {
        let mut out = Vec::new();
        let mut part = |part: &str, model: &str, card: Option<&ModelCard>| {
            let index = card.and_then(|c| {
                c.hashes.index.clone().or_else(|| {
                    self.attributions
                        .list(Some(&c.datanet), Some(c.version))
                        .ok()?
                        .into_iter()
                        .next()
                        .map(|m| m.hash)
                })
            });
            let same_tokenizer = match (&index, card) {
                (Some(i), Some(_)) => self
                    .attributions
                    .index(i)
                    .is_ok_and(|ix| ix.meta.tokenizer_hash == resolved.base.tokenizer_hash),
                _ => false,
            };
            out.push(Source {
                part: part.into(),
                model: model.into(),
                datanet: card.map(|c| c.datanet.clone()),
                version: card.map(|c| c.version),
                index,
                same_tokenizer,
            });
        };
        part("base", &resolved.base.name, resolved.base.card.as_ref());
        if let Some(a) = &resolved.adapter {
            part("adapter", &a.info.name, a.card.as_ref());
        }
        out
    }

    pub fn save(&self, completion: &StoredCompletion) -> Result<(), ServeError> {
        let mut batch = self.store.batch();
        batch
            .put_json(CF_COMPLETIONS, completion.id.as_bytes(), completion)
            .map_err(failed)?;
        batch.commit().map_err(failed)
    }

    pub fn completion(&self, id: &str) -> Result<StoredCompletion, ServeError> {
        self.store
            .get_json(CF_COMPLETIONS, id.as_bytes())
            .map_err(failed)?
            .ok_or_else(|| ServeError::UnknownCompletion(id.into()))
    }

    /// The attribution of a completion, each part's record made (once: the record's request
    /// id is the completion's id and the part, so asking again returns the same record).
    pub fn attribute(&self, c: &StoredCompletion) -> Result<CompletionAttribution, ServeError> {
        let prepared = self.prepare_attribution(c)?;
        self.file_attribution(prepared, |_, _| Ok::<_, ServeError>(()))
    }

    /// Traces each part of a completion's answer, filing nothing yet.
    pub fn prepare_attribution(
        &self,
        c: &StoredCompletion,
    ) -> Result<PreparedAttribution, ServeError> {
        let mut parts = Vec::new();
        let mut traced = Vec::new();
        for s in &c.sources {
            let mut part = AttributionPart::unmade(s, None);
            match (&s.datanet, &s.index) {
                (None, _) => {
                    part.note = Some(format!(
                        "{} was not trained here: its training data is not known",
                        s.model
                    ))
                }
                (Some(d), None) => {
                    part.note = Some(format!(
                        "no span index over {d} version {}: build one to attribute",
                        s.version.unwrap_or(0)
                    ))
                }
                (Some(_), Some(_)) if c.output.is_empty() => {
                    part.note = Some("the answer is empty".into());
                }
                (Some(_), Some(index)) => {
                    let request = AttributeRequest {
                        request_id: Some(format!("{}/{}", c.id, s.part)),
                        text: (!s.same_tokenizer).then(|| c.text.clone()),
                        ids: s.same_tokenizer.then(|| c.output.clone()),
                        ..AttributeRequest::default()
                    };
                    let p = self.attributions.prepare(index, &request).map_err(failed)?;
                    traced.push((parts.len(), p));
                }
            }
            parts.push(part);
        }
        Ok(PreparedAttribution {
            id: c.id.clone(),
            parts,
            traced,
        })
    }

    /// Files a prepared attribution's records, with what `extra` writes in the same batch.
    pub fn file_attribution<E: From<ServeError>>(
        &self,
        prepared: PreparedAttribution,
        extra: impl FnOnce(&[StoredAttribution], &mut crate::store::Batch<'_>) -> Result<(), E>,
    ) -> Result<CompletionAttribution, E> {
        let PreparedAttribution {
            id,
            mut parts,
            traced,
        } = prepared;
        let (slots, records): (Vec<usize>, Vec<Prepared>) = traced.into_iter().unzip();
        let filed = self
            .attributions
            .file(records, |filed, batch| {
                extra(filed, batch).map_err(Filing::Extra)
            })
            .map_err(|e| match e {
                Filing::Attribution(a) => E::from(failed(a)),
                Filing::Extra(e) => e,
            })?;
        for (slot, stored) in slots.into_iter().zip(filed) {
            let a = stored.attribution;
            let part = &mut parts[slot];
            part.record = Some(a.id.clone());
            part.records = a.records.into_iter().take(TOP).collect();
            part.contributors = a.contributors.into_iter().take(TOP).collect();
            part.score_unit = a.score_unit;
        }
        Ok(CompletionAttribution {
            id,
            status: "complete".into(),
            parts,
        })
    }

    /// The attribution object of a completion whose request skipped attribution: its parts
    /// and sources, no records yet.
    pub fn deferred(&self, c: &StoredCompletion) -> CompletionAttribution {
        CompletionAttribution {
            id: c.id.clone(),
            status: "deferred".into(),
            parts: c
                .sources
                .iter()
                .map(|s| {
                    let note = format!("made on request: GET /v1/completions/{}/attribution", c.id);
                    AttributionPart::unmade(s, Some(note))
                })
                .collect(),
        }
    }

    /// A completion's id.
    pub fn new_id() -> String {
        let mut bytes = [0u8; 12];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        format!("cmpl-{}", hex::encode(bytes))
    }

    pub fn created() -> i64 {
        now()
    }
}
