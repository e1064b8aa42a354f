//! The server's attribution service: span indexes under `<data>/indexes/<hash>` (opened once
//! and kept), attribution records in RocksDB, and epochs whose record ids are committed to a
//! keccak256 Merkle root (an OpenZeppelin `StandardMerkleTree` of `bytes32` leaves, as Datanet
//! versions are) with inclusion proofs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::index::{self, BuildInput, BuildProgress, IndexMeta};
use super::record::{output_hash, AttributionRecord};
use super::trace::TraceParams;
use super::{corpus, AttributionError, Index, Tokenizer};
use crate::datanet::parse_hex32;
use crate::datanet::service::Datanets;
use crate::merkle::{self, MerkleTree};
use crate::store::{Store, StoreError, CF_ATTRIBUTIONS};

/// What is kept of an attribution: the record, the output it traced (so that it can be
/// recomputed) and the epoch it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredAttribution {
    pub attribution: AttributionRecord,
    pub epoch: u64,
    /// The output's token ids.
    pub output: Vec<u32>,
}

/// An attribution traced and ready to file, or the record its request id already names.
#[derive(Debug, Clone)]
pub enum Prepared {
    Filed(StoredAttribution),
    New {
        request_id: String,
        /// Its epoch is set when it is filed.
        stored: StoredAttribution,
    },
}

impl Prepared {
    pub fn record(&self) -> &AttributionRecord {
        match self {
            Prepared::Filed(s) | Prepared::New { stored: s, .. } => &s.attribution,
        }
    }
}

/// A request id names one attribution: the same request gets the same record back, a
/// different one under the same id is refused.
fn same_request(
    request_id: &str,
    existing: &StoredAttribution,
    index: &str,
    output_hash: &str,
    params: &TraceParams,
) -> Result<(), AttributionError> {
    let a = &existing.attribution;
    if a.index != index || a.output_hash != output_hash || &a.params != params {
        return Err(AttributionError::invalid(
            "request_id",
            format!(
                "{request_id:?} was attributed before with another index, output or parameters"
            ),
        ));
    }
    Ok(())
}

/// What a verification found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub id: String,
    /// Whether recomputing from the pinned index gave the same record.
    pub matches: bool,
    /// Whether the index's files still hash to its name (checked once per index and process).
    pub index_verified: bool,
    /// The id the recomputation gave.
    pub recomputed: String,
}

/// A closed epoch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EpochRoot {
    pub epoch: u64,
    /// keccak256 Merkle root of the epoch's attribution ids, 0x hex (zero when empty).
    pub root: String,
    pub attributions: u64,
}

/// Where one attribution sits in its epoch's tree.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttributionProof {
    pub id: String,
    pub epoch: u64,
    pub root: String,
    pub leaf: String,
    pub proof: Vec<String>,
}

/// Which tokenizer a build uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerChoice {
    Bytes,
    /// Train a byte-level BPE of this many tokens on the version.
    Bpe(u32),
}

impl std::str::FromStr for TokenizerChoice {
    type Err = AttributionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "bytes" {
            return Ok(Self::Bytes);
        }
        s.strip_prefix("bpe:")
            .and_then(|v| v.parse().ok())
            .map(Self::Bpe)
            .ok_or_else(|| {
                AttributionError::invalid("tokenizer", format!("{s:?} is not bytes or bpe:VOCAB"))
            })
    }
}

/// What to attribute.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeRequest {
    /// The inference or request this is for; a second request with the same id gets the
    /// first record back. Derived from the index, output and parameters when absent.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The output as text (tokenized with the index's tokenizer) ...
    #[serde(default)]
    pub text: Option<String>,
    /// ... or as token ids.
    #[serde(default)]
    pub ids: Option<Vec<u32>>,
    #[serde(flatten)]
    pub params: TraceParamsInput,
}

/// Trace parameters as a request may give them, each optional.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct TraceParamsInput {
    pub min_len: Option<usize>,
    pub max_count: Option<u64>,
    pub delimiters: Option<Vec<u32>>,
    pub max_spans: Option<usize>,
}

impl TraceParamsInput {
    pub fn resolve(&self) -> TraceParams {
        let d = TraceParams::default();
        TraceParams {
            min_len: self.min_len.unwrap_or(d.min_len),
            max_count: self.max_count.unwrap_or(d.max_count),
            delimiters: self.delimiters.clone().unwrap_or_default(),
            max_spans: self.max_spans,
        }
    }
}

/// Longest output accepted, in tokens.
pub const MAX_OUTPUT_TOKENS: usize = 65_536;

const EPOCH_KEY: &[u8] = b"epoch";

fn record_key(id: &str) -> Vec<u8> {
    format!("a/{id}").into_bytes()
}

fn request_key(request: &str) -> Vec<u8> {
    format!("r/{request}").into_bytes()
}

fn epoch_prefix(epoch: u64) -> Vec<u8> {
    format!("e/{epoch:020}/").into_bytes()
}

fn root_key(epoch: u64) -> Vec<u8> {
    format!("root/{epoch:020}").into_bytes()
}

fn store_error(e: StoreError) -> AttributionError {
    AttributionError::Io(std::io::Error::other(e.to_string()))
}

/// Attribution state of one data directory.
pub struct Attributions {
    dir: PathBuf,
    store: Arc<Store>,
    open: Mutex<HashMap<String, Arc<Index>>>,
    /// Indexes whose files were re-hashed and matched their names.
    verified: Mutex<std::collections::HashSet<String>>,
    /// Held while an attribution is filed or an epoch closes, so none lands in a closed one.
    epoch: Mutex<()>,
}

impl Attributions {
    pub fn new(data_dir: &Path, store: Arc<Store>) -> Self {
        Self {
            dir: data_dir.join("indexes"),
            store,
            open: Mutex::new(HashMap::new()),
            verified: Mutex::new(Default::default()),
            epoch: Mutex::new(()),
        }
    }

    pub fn indexes_dir(&self) -> &Path {
        &self.dir
    }

    /// The index named `hash` if it is open already (no I/O: safe on an async worker).
    pub fn cached(&self, hash: &str) -> Option<Arc<Index>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(hash).cloned()
    }

    /// The index named `hash`, opened once.
    pub fn index(&self, hash: &str) -> Result<Arc<Index>, AttributionError> {
        // Only a 64-digit hex name can be an index: nothing else reaches the filesystem.
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AttributionError::IndexNotFound(hash.to_string()));
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = open.get(hash) {
            return Ok(index.clone());
        }
        let index = Arc::new(Index::open(&self.dir.join(hash))?);
        open.insert(hash.to_string(), index.clone());
        Ok(index)
    }

    /// Every index here, optionally only those of one Datanet version.
    pub fn list(
        &self,
        datanet: Option<&str>,
        version: Option<u32>,
    ) -> Result<Vec<IndexMeta>, AttributionError> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(index) = self.index(&name) else {
                continue;
            };
            let m = &index.meta;
            if datanet.is_none_or(|d| m.datanet.as_deref() == Some(d))
                && version.is_none_or(|v| m.version == Some(v))
            {
                out.push(m.clone());
            }
        }
        out.sort_by(|a, b| (&a.datanet, a.version, &a.hash).cmp(&(&b.datanet, b.version, &b.hash)));
        Ok(out)
    }

    /// Builds an index over a published version's text field.
    pub fn build_version(
        &self,
        datanets: &Datanets,
        id: &str,
        version: u32,
        tokenizer: &TokenizerChoice,
        progress: &dyn Fn(BuildProgress),
    ) -> Result<IndexMeta, AttributionError> {
        let manifest = datanets
            .version(id, version)
            .map_err(|e| AttributionError::Corpus(e.to_string()))?;
        let export = datanets
            .export(id, version)
            .map_err(|e| AttributionError::Corpus(e.to_string()))?;
        let text_field = manifest.schema.text_field.clone();
        let tokenizer = match tokenizer {
            TokenizerChoice::Bytes => Tokenizer::Bytes,
            TokenizerChoice::Bpe(vocab) => {
                let texts = corpus::parquet(&export, &text_field)?;
                Tokenizer::train_bpe(
                    texts.documents.map_while(|d| d.ok()).map(|d| d.text),
                    *vocab,
                )?
            }
        };
        let corpus = corpus::parquet(&export, &text_field)?;
        index::build(
            BuildInput {
                documents: corpus.documents,
                total: corpus.total,
                tokenizer: &tokenizer,
                datanet: Some(id.to_string()),
                version: Some(version),
            },
            &self.dir,
            progress,
        )
    }

    /// Traces an output against an index and files the record in the current epoch. A
    /// request id seen before returns its record, if the request is the same one.
    pub fn attribute(
        &self,
        index_hash: &str,
        request: &AttributeRequest,
    ) -> Result<StoredAttribution, AttributionError> {
        let prepared = self.prepare(index_hash, request)?;
        let mut filed = self.file(vec![prepared], |_, _| Ok::<_, AttributionError>(()))?;
        filed
            .pop()
            .ok_or_else(|| std::io::Error::other("filing returned no record").into())
    }

    /// Traces an output against an index, filing nothing yet: what [`Self::file`] commits.
    /// A request id seen before gives its record back, if the request is the same one.
    pub fn prepare(
        &self,
        index_hash: &str,
        request: &AttributeRequest,
    ) -> Result<Prepared, AttributionError> {
        let index = self.index(index_hash)?;
        let output = match (&request.text, &request.ids) {
            (Some(_), Some(_)) => {
                return Err(AttributionError::invalid(
                    "text",
                    "give text or ids, not both",
                ))
            }
            (Some(text), None) => index.tokenizer()?.encode(text)?,
            (None, Some(ids)) => ids.clone(),
            (None, None) => return Err(AttributionError::invalid("text", "give text or ids")),
        };
        if output.len() > MAX_OUTPUT_TOKENS {
            return Err(AttributionError::invalid(
                "text",
                format!("{} tokens; at most {MAX_OUTPUT_TOKENS}", output.len()),
            ));
        }
        let params = request.params.resolve();
        let request_id = match &request.request_id {
            Some(r) if r.is_empty() || r.len() > 200 => {
                return Err(AttributionError::invalid(
                    "request_id",
                    "must be 1 to 200 characters",
                ))
            }
            Some(r) => r.clone(),
            None => {
                let mut h = blake3::Hasher::new();
                h.update(index_hash.as_bytes());
                h.update(output_hash(&output).as_bytes());
                h.update(&serde_json::to_vec(&params).unwrap_or_default());
                format!("auto-{}", &h.finalize().to_hex()[..32])
            }
        };
        if let Some(existing) = self.by_request(&request_id)? {
            same_request(
                &request_id,
                &existing,
                &index.meta.hash,
                &output_hash(&output),
                &params,
            )?;
            return Ok(Prepared::Filed(existing));
        }
        let trace = index.trace(&output, &params)?;
        let record = AttributionRecord::from_trace(&request_id, &index, &params, &output, &trace);
        Ok(Prepared::New {
            request_id,
            stored: StoredAttribution {
                attribution: record,
                epoch: 0,
                output,
            },
        })
    }

    /// Files prepared attributions in the current epoch, in one batch with what `extra`
    /// writes (a fee and its balances): they commit together or not at all. `extra` sees
    /// the records as filed (a request filed meanwhile by someone else gives its record).
    /// Callers that also hold the rewards book take it first, as closing an epoch does.
    /// When nothing is new and `extra` writes nothing, nothing is locked or committed.
    pub fn file<E: From<AttributionError>>(
        &self,
        prepared: Vec<Prepared>,
        extra: impl FnOnce(&[StoredAttribution], &mut crate::store::Batch<'_>) -> Result<(), E>,
    ) -> Result<Vec<StoredAttribution>, E> {
        let any_new = prepared.iter().any(|p| matches!(p, Prepared::New { .. }));
        let _guard = any_new.then(|| self.epoch.lock().unwrap_or_else(|p| p.into_inner()));
        let epoch = self.current_epoch()?;
        let mut batch = self.store.batch();
        let mut filed = Vec::with_capacity(prepared.len());
        for p in prepared {
            let (request_id, mut stored) = match p {
                Prepared::Filed(existing) => {
                    filed.push(existing);
                    continue;
                }
                Prepared::New { request_id, stored } => (request_id, stored),
            };
            // Checked again under the lock: a concurrent request with the same id may have won.
            if let Some(existing) = self.by_request(&request_id)? {
                let a = &stored.attribution;
                same_request(&request_id, &existing, &a.index, &a.output_hash, &a.params)?;
                filed.push(existing);
                continue;
            }
            stored.epoch = epoch;
            let id = stored.attribution.id.clone();
            batch
                .put_json(CF_ATTRIBUTIONS, record_key(&id), &stored)
                .map_err(store_error)?;
            batch.put(CF_ATTRIBUTIONS, request_key(&request_id), id.as_bytes());
            let mut epoch_key = epoch_prefix(epoch);
            epoch_key.extend_from_slice(id.as_bytes());
            batch.put(CF_ATTRIBUTIONS, epoch_key, b"");
            filed.push(stored);
        }
        extra(&filed, &mut batch)?;
        if !batch.is_empty() {
            batch.commit().map_err(store_error)?;
        }
        Ok(filed)
    }

    fn by_request(&self, request_id: &str) -> Result<Option<StoredAttribution>, AttributionError> {
        match self
            .store
            .get(CF_ATTRIBUTIONS, &request_key(request_id))
            .map_err(store_error)?
        {
            None => Ok(None),
            Some(id) => self.get(&String::from_utf8_lossy(&id)).map(Some),
        }
    }

    pub fn get(&self, id: &str) -> Result<StoredAttribution, AttributionError> {
        self.store
            .get_json(CF_ATTRIBUTIONS, &record_key(id))
            .map_err(store_error)?
            .ok_or_else(|| AttributionError::AttributionNotFound(id.to_string()))
    }

    /// Recomputes an attribution from its pinned index and stored output.
    pub fn verify(&self, id: &str) -> Result<Verification, AttributionError> {
        let stored = self.get(id)?;
        let a = &stored.attribution;
        let index = self.index(&a.index)?;
        let index_verified = {
            let known = self
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&a.index);
            known || {
                let ok = index.verify().is_ok();
                if ok {
                    let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                    v.insert(a.index.clone());
                }
                ok
            }
        };
        let trace = index.trace(&stored.output, &a.params)?;
        let again =
            AttributionRecord::from_trace(&a.request_id, &index, &a.params, &stored.output, &trace);
        let matches = index_verified && again == *a && a.check().is_ok();
        Ok(Verification {
            id: id.to_string(),
            matches,
            index_verified,
            recomputed: again.id,
        })
    }

    /// The epoch new attribution records and fees land in.
    pub fn current_epoch(&self) -> Result<u64, AttributionError> {
        Ok(self
            .store
            .get(CF_ATTRIBUTIONS, EPOCH_KEY)
            .map_err(store_error)?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    fn epoch_leaves(&self, epoch: u64) -> Result<Vec<merkle::Hash>, AttributionError> {
        let prefix = epoch_prefix(epoch);
        let mut leaves = Vec::new();
        self.store
            .for_each_prefix(CF_ATTRIBUTIONS, &prefix, |key, _| {
                let id = String::from_utf8_lossy(&key[prefix.len()..]);
                if let Some(digest) = id.strip_prefix("0x").and_then(parse_hex32) {
                    leaves.push(merkle::leaf_bytes32(&digest));
                }
                Ok(())
            })
            .map_err(store_error)?;
        Ok(leaves)
    }

    /// Closes the current epoch: commits its attribution ids to a Merkle root and starts the
    /// next epoch, with `extra` adding its own writes for the closing epoch (the payout tree's
    /// record) to the same batch: they commit together or not at all.
    pub fn close_epoch(
        &self,
        extra: impl FnOnce(&EpochRoot, &mut crate::store::Batch<'_>) -> Result<(), AttributionError>,
    ) -> Result<EpochRoot, AttributionError> {
        let _guard = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.current_epoch()?;
        let leaves = self.epoch_leaves(epoch)?;
        let count = leaves.len() as u64;
        let root = if leaves.is_empty() {
            [0u8; 32]
        } else {
            MerkleTree::from_leaves(leaves).root()
        };
        let closed = EpochRoot {
            epoch,
            root: format!("0x{}", hex::encode(root)),
            attributions: count,
        };
        let mut batch = self.store.batch();
        batch
            .put_json(CF_ATTRIBUTIONS, root_key(epoch), &closed)
            .map_err(store_error)?;
        batch.put(CF_ATTRIBUTIONS, EPOCH_KEY, (epoch + 1).to_be_bytes());
        extra(&closed, &mut batch)?;
        batch.commit().map_err(store_error)?;
        Ok(closed)
    }

    /// A closed epoch's root.
    pub fn epoch(&self, epoch: u64) -> Result<Option<EpochRoot>, AttributionError> {
        self.store
            .get_json(CF_ATTRIBUTIONS, &root_key(epoch))
            .map_err(store_error)
    }

    /// The inclusion proof of an attribution, once its epoch has closed.
    pub fn proof(&self, id: &str) -> Result<AttributionProof, AttributionError> {
        let stored = self.get(id)?;
        let closed = self.epoch(stored.epoch)?.ok_or_else(|| {
            AttributionError::invalid(
                "id",
                format!(
                    "epoch {} is still open; proofs come when it closes",
                    stored.epoch
                ),
            )
        })?;
        let digest = id
            .strip_prefix("0x")
            .and_then(parse_hex32)
            .ok_or_else(|| AttributionError::invalid("id", "is not 0x and 64 hex digits"))?;
        let leaf = merkle::leaf_bytes32(&digest);
        let tree = MerkleTree::from_leaves(self.epoch_leaves(stored.epoch)?);
        let proof = tree
            .proof(&leaf)
            .ok_or_else(|| AttributionError::invalid("id", "is not in its epoch's tree"))?;
        Ok(AttributionProof {
            id: id.to_string(),
            epoch: stored.epoch,
            root: closed.root,
            leaf: format!("0x{}", hex::encode(leaf)),
            proof: proof
                .iter()
                .map(|h| format!("0x{}", hex::encode(h)))
                .collect(),
        })
    }
}
