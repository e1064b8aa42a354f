//! The operations on Datanets, shared by the REST API and the offline CLI commands. Every
//! function here is blocking; callers on an async runtime run them on a blocking thread.
//!
//! Contributions themselves are in [`super::contribute`].

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray};
use chrono::Utc;

use super::ingest::{ErrorReport, IngestError};
use super::known::KnownIds;
use super::pending_index::PendingIndexes;
use super::record::RecordId;
use super::schema::{SchemaError, COL_QUALITY, COL_RECORD_ID};
use super::segment::{self, SegmentError};
use super::validate::{ValidatorChain, ValidatorError, ValidatorResolver};
use super::{
    parse_hex32, withdrawal_message, Batch, BatchStatus, Datanet, DatanetSpec, DatanetUpdate,
    RecordInfo, RecordLocation, ValidatorAttachment, WithdrawalReceipt, WithdrawalRequest,
};
use crate::identity::{recover_personal, Address, IdentityError, Signature};
use crate::merkle::{self};
use crate::store::{Store, StoreError, CF_BATCHES, CF_CATALOG, CF_RECORDS, CF_WITHDRAWALS};

/// How many record ids one withdrawal may name.
pub const MAX_WITHDRAWAL_RECORDS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum DatanetError {
    #[error("no Datanet {0:?}")]
    NotFound(String),
    #[error("a Datanet {0:?} already exists")]
    AlreadyExists(String),
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error("no batch {batch} in Datanet {datanet:?}")]
    BatchNotFound { datanet: String, batch: u64 },
    #[error("no version {version} of Datanet {datanet:?}")]
    VersionNotFound { datanet: String, version: u32 },
    #[error("no record {record} in Datanet {datanet:?}")]
    RecordNotFound { datanet: String, record: String },
    #[error("record {record} is not in version {version}")]
    RecordNotInVersion { record: String, version: u32 },
    #[error("{} row problem(s) in the batch; nothing was stored", .0.total)]
    InvalidRows(Box<ErrorReport>),
    #[error("the upload has no valid rows")]
    EmptyBatch,
    #[error(transparent)]
    Upload(#[from] IngestError),
    #[error("signature: {0}")]
    Signature(#[from] IdentityError),
    #[error("the signature was made by {recovered}, not by the claimed contributor {claimed}: the batch's records do not match what was signed, or another key signed it")]
    SignerMismatch {
        claimed: Address,
        recovered: Address,
    },
    #[error("batch {batch} is already {status:?}")]
    AlreadyReviewed { batch: u64, status: BatchStatus },
    #[error("record {record} was contributed by {owner}, not {caller}")]
    NotOwner {
        record: String,
        owner: Address,
        caller: Address,
    },
    #[error(transparent)]
    Validator(#[from] ValidatorError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("the record index of batch {batch} of Datanet {datanet:?} could not be finished ({message}); the next request that reads it tries again from the batch's segment")]
    IndexUnfinished {
        datanet: String,
        batch: u64,
        message: String,
    },
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> DatanetError {
    DatanetError::InvalidField {
        field: field.into(),
        message: message.into(),
    }
}

impl From<SchemaError> for DatanetError {
    fn from(e: SchemaError) -> Self {
        invalid(e.field, e.message)
    }
}

/// The folders of a data directory.
#[derive(Debug, Clone)]
pub struct DataDirs {
    pub root: PathBuf,
    pub db: PathBuf,
    pub tmp: PathBuf,
    pub segments: PathBuf,
    pub versions: PathBuf,
    pub exports: PathBuf,
}

impl DataDirs {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            db: root.join("db"),
            tmp: root.join("tmp"),
            segments: root.join("segments"),
            versions: root.join("versions"),
            exports: root.join("exports"),
        }
    }
}

pub struct Datanets {
    pub(crate) store: Arc<Store>,
    pub(crate) dirs: DataDirs,
    /// One lock per Datanet: contributions, reviews and publications of a Datanet run one at a
    /// time, which keeps deduplication exact.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Per Datanet, the record ids its index may hold, built the first time a contribution
    /// needs them; changed only under the Datanet's lock.
    pub(crate) known: Mutex<HashMap<String, Arc<Mutex<KnownIds>>>>,
    pub(crate) validators: ValidatorChain,
    /// Where the validator plugins that Datanets attach are found.
    pub(crate) resolver: Option<Arc<dyn ValidatorResolver>>,
    pub(crate) bulk_index_min: usize,
    /// Large batches' record indexes being finished after their commit.
    pub(crate) pending: Arc<PendingIndexes>,
    /// Validators' quality column of recently read batches (a batch's segment never changes):
    /// charging a completion looks up the quality of the records it credits.
    qualities: Mutex<HashMap<(String, u64), Qualities>>,
}

impl Drop for Datanets {
    /// Indexes still being finished hold the store open; whoever opens the data directory
    /// next (a restart in the same process, a test) finds them in.
    fn drop(&mut self) {
        self.pending.wait_all();
    }
}

/// One batch's quality column, row by row.
type Qualities = Arc<Vec<f64>>;

/// Batches whose quality columns are kept; the cache is emptied when it is full.
const QUALITY_CACHE_BATCHES: usize = 256;

pub(crate) fn datanet_key(id: &str) -> String {
    format!("datanet/{id}")
}

pub(crate) fn batch_key(id: &str, batch: u64) -> String {
    format!("{id}\0{batch:016x}")
}

pub(crate) fn record_key(id: &str, record: &RecordId) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 33);
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key.extend_from_slice(record);
    key
}

pub(crate) fn segment_relpath(id: &str, batch: u64) -> String {
    format!("segments/{id}/{batch:016x}.parquet")
}

pub fn record_id_hex(id: &RecordId) -> String {
    hex::encode(id)
}

pub(crate) fn parse_record_id(s: &str, field: &str) -> Result<RecordId, DatanetError> {
    parse_hex32(s).ok_or_else(|| invalid(field, format!("{s:?} is not a 32-byte hex record id")))
}

fn validate_spec(spec: &DatanetSpec) -> Result<(), DatanetError> {
    let id_ok = !spec.id.is_empty()
        && spec.id.len() <= 64
        && spec
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !spec.id.starts_with('-');
    if !id_ok {
        return Err(invalid(
            "id",
            format!(
                "{:?}: use 1 to 64 lowercase letters, digits and '-', not starting with '-'",
                spec.id
            ),
        ));
    }
    if spec.name.trim().is_empty() || spec.name.len() > 200 {
        return Err(invalid("name", "a name of 1 to 200 characters is required"));
    }
    validate_tags(&spec.tags)?;
    if let Err(e) = spdx::Expression::parse(&spec.license) {
        return Err(invalid(
            "license",
            format!(
                "{:?} is not an SPDX licence identifier or expression: {e}",
                spec.license
            ),
        ));
    }
    spec.schema.validate()?;
    Ok(())
}

fn validate_tags(tags: &[String]) -> Result<(), DatanetError> {
    if tags.len() > 32 {
        return Err(invalid("tags", "at most 32 tags"));
    }
    for (i, tag) in tags.iter().enumerate() {
        if tag.is_empty() || tag.len() > 64 {
            return Err(invalid(format!("tags[{i}]"), "tags are 1 to 64 characters"));
        }
    }
    Ok(())
}

impl Datanets {
    /// Opens a data directory, creating it if needed, and removes what a crash left behind:
    /// temporary files, and segments and leaf files no committed state refers to.
    pub fn open(root: &Path) -> Result<Self, DatanetError> {
        let dirs = DataDirs::new(root);
        for dir in [
            &dirs.root,
            &dirs.tmp,
            &dirs.segments,
            &dirs.versions,
            &dirs.exports,
        ] {
            fs::create_dir_all(dir)?;
        }
        let store = Arc::new(Store::open(&dirs.db)?);
        let this = Self {
            store,
            dirs,
            locks: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            qualities: Mutex::new(HashMap::new()),
            validators: ValidatorChain::default(),
            resolver: None,
            bulk_index_min: super::contribute::BULK_INDEX_MIN,
            pending: Arc::default(),
        };
        let removed = this.collect_orphans()?;
        if removed > 0 {
            tracing::info!(removed, "removed files left by an interrupted write");
        }
        let finished = this.finish_pending_indexes()?;
        if finished > 0 {
            tracing::info!(
                finished,
                "finished the record index of batches committed before a crash"
            );
        }
        Ok(this)
    }

    /// Sets the validators every contribution passes through after the schema checks.
    pub fn with_validators(mut self, validators: ValidatorChain) -> Self {
        self.validators = validators;
        self
    }

    /// Sets where the validator plugins Datanets attach are found.
    pub fn with_plugins(mut self, resolver: Arc<dyn ValidatorResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Checks that every attachment names an installed validator and suits its config schema.
    fn check_validators(&self, attachments: &[ValidatorAttachment]) -> Result<(), DatanetError> {
        for (i, a) in attachments.iter().enumerate() {
            let field = format!("validators[{i}]");
            match &self.resolver {
                None => return Err(invalid(&field, "this server has no plugin registry")),
                Some(r) => r
                    .check(&a.plugin, &a.config)
                    .map_err(|m| invalid(&field, m))?,
            }
        }
        Ok(())
    }

    /// The chain a contribution to `datanet` passes: the server's own validators, then the
    /// Datanet's attachments in order.
    pub(crate) fn chain_for(&self, datanet: &Datanet) -> Result<ValidatorChain, DatanetError> {
        let mut chain = self.validators.clone();
        for a in &datanet.spec.validators {
            let resolver = self.resolver.as_ref().ok_or_else(|| {
                DatanetError::Validator(ValidatorError {
                    validator: a.plugin.clone(),
                    message: "this server has no plugin registry".into(),
                })
            })?;
            chain.push(resolver.resolve(&a.plugin)?, a.config.to_string());
        }
        Ok(chain)
    }

    /// Batches with at least this many new records have their index bulk-loaded.
    pub fn with_bulk_index_min(mut self, records: usize) -> Self {
        self.bulk_index_min = records.max(1);
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn dirs(&self) -> &DataDirs {
        &self.dirs
    }

    fn collect_orphans(&self) -> Result<usize, DatanetError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dirs.tmp)? {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            removed += 1;
        }
        let mut referenced: HashSet<PathBuf> = HashSet::new();
        for datanet in self.list()? {
            for batch in self.batches(&datanet.spec.id, None)? {
                if let Some(seg) = &batch.segment {
                    referenced.insert(self.dirs.root.join(seg));
                }
            }
            for version in self.versions(&datanet.spec.id)? {
                referenced.insert(self.dirs.root.join(&version.tree));
            }
        }
        for top in [&self.dirs.segments, &self.dirs.versions] {
            for dir in fs::read_dir(top)? {
                let dir = dir?.path();
                if !dir.is_dir() {
                    continue;
                }
                for file in fs::read_dir(&dir)? {
                    let file = file?.path();
                    if !referenced.contains(&file) {
                        fs::remove_file(&file)?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Waits until Datanet `id`'s record index holds every committed batch: what anything
    /// reading the index calls first. An index that failed after its batch's commit is rebuilt
    /// here from the batch's segment, as a restart would.
    pub(crate) fn index_ready(&self, id: &str) -> Result<(), DatanetError> {
        let Err(failure) = self.pending.wait(id) else {
            return Ok(());
        };
        tracing::warn!(
            datanet = id,
            batch = failure.batch,
            "rebuilding a record index that failed"
        );
        self.pending
            .recover(id, |batch| self.index_from_segment(id, batch))
            .map_err(|failure| DatanetError::IndexUnfinished {
                datanet: id.to_string(),
                batch: failure.batch,
                message: failure.message,
            })
    }

    pub(crate) fn lock(&self, id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_string()).or_default().clone()
    }

    /// The record ids Datanet `id`'s index may hold; the first call reads them from the
    /// index. Callers hold the Datanet's lock, so no batch commits between the read and the
    /// filter being kept.
    pub(crate) fn known_ids(&self, id: &str) -> Result<Arc<Mutex<KnownIds>>, DatanetError> {
        // The filter is complete only once the last batch's index is in.
        self.index_ready(id)?;
        if let Some(known) = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(known.clone());
        }
        let prefix = record_key(id, &[0; 32]);
        let prefix = &prefix[..prefix.len() - 32];
        // One filter sized for them (and as many again, to grow into) holds them, rather
        // than a chain that every lookup would walk. The batch catalog says how many there
        // are (each batch counts the records it added; a rejected batch's are removed), so
        // the index is read once, not once to count and once to fill.
        let count: u64 = self
            .batches(id, None)?
            .iter()
            .filter(|b| b.status != BatchStatus::Rejected)
            .map(|b| b.accepted)
            .sum();
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let mut known = KnownIds::with_capacity(count.saturating_mul(2));
        self.store.scan(CF_RECORDS, prefix, prefix, |key, _| {
            if let Ok(record) = RecordId::try_from(&key[prefix.len()..]) {
                known.insert(&record);
            }
            Ok(!known.saturated())
        })?;
        tracing::debug!(
            datanet = id,
            ids = known.len(),
            "read the ids the record index holds"
        );
        let known = Arc::new(Mutex::new(known));
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), known.clone());
        Ok(known)
    }

    // ---- catalog ----

    pub fn create(&self, spec: DatanetSpec, curator: &str) -> Result<Datanet, DatanetError> {
        validate_spec(&spec)?;
        self.check_validators(&spec.validators)?;
        let lock = self.lock(&spec.id);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.find(&spec.id)?.is_some() {
            return Err(DatanetError::AlreadyExists(spec.id));
        }
        let datanet = Datanet {
            spec,
            curators: vec![curator.to_string()],
            created_at: Utc::now(),
            batches: 0,
            versions: 0,
        };
        let mut batch = self.store.batch();
        batch.put_json(CF_CATALOG, datanet_key(&datanet.spec.id), &datanet)?;
        batch.commit()?;
        Ok(datanet)
    }

    pub fn find(&self, id: &str) -> Result<Option<Datanet>, DatanetError> {
        Ok(self
            .store
            .get_json(CF_CATALOG, datanet_key(id).as_bytes())?)
    }

    pub fn get(&self, id: &str) -> Result<Datanet, DatanetError> {
        self.find(id)?
            .ok_or_else(|| DatanetError::NotFound(id.to_string()))
    }

    pub fn list(&self) -> Result<Vec<Datanet>, DatanetError> {
        Ok(self.store.scan_prefix_json(CF_CATALOG, b"datanet/")?)
    }

    pub fn update(&self, id: &str, update: DatanetUpdate) -> Result<Datanet, DatanetError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut datanet = self.get(id)?;
        if let Some(name) = update.name {
            if name.trim().is_empty() || name.len() > 200 {
                return Err(invalid("name", "a name of 1 to 200 characters is required"));
            }
            datanet.spec.name = name;
        }
        if let Some(description) = update.description {
            datanet.spec.description = description;
        }
        if let Some(tags) = update.tags {
            validate_tags(&tags)?;
            datanet.spec.tags = tags;
        }
        if let Some(v) = update.visibility {
            datanet.spec.visibility = v;
        }
        if let Some(r) = update.review {
            datanet.spec.review = r;
        }
        if let Some(i) = update.invalid_rows {
            datanet.spec.invalid_rows = i;
        }
        if let Some(validators) = update.validators {
            self.check_validators(&validators)?;
            datanet.spec.validators = validators;
        }
        if let Some(f) = update.on_validator_failure {
            datanet.spec.on_validator_failure = f;
        }
        let mut batch = self.store.batch();
        batch.put_json(CF_CATALOG, datanet_key(id), &datanet)?;
        batch.commit()?;
        Ok(datanet)
    }

    // ---- contributions ----

    pub fn batch(&self, id: &str, batch: u64) -> Result<Batch, DatanetError> {
        self.store
            .get_json(CF_BATCHES, batch_key(id, batch).as_bytes())?
            .ok_or_else(|| DatanetError::BatchNotFound {
                datanet: id.to_string(),
                batch,
            })
    }

    /// Every batch, optionally of one status, in batch order.
    pub fn batches(
        &self,
        id: &str,
        status: Option<BatchStatus>,
    ) -> Result<Vec<Batch>, DatanetError> {
        self.batch_page(id, status, 0, usize::MAX)
    }

    /// Up to `limit` batches numbered above `after`, optionally of one status.
    pub fn batch_page(
        &self,
        id: &str,
        status: Option<BatchStatus>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Batch>, DatanetError> {
        let prefix = format!("{id}\0");
        let start = batch_key(id, after.saturating_add(1));
        let mut page = Vec::new();
        self.store.scan(
            CF_BATCHES,
            prefix.as_bytes(),
            start.as_bytes(),
            |key, value| {
                let batch: Batch =
                    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
                        cf: CF_BATCHES,
                        key: String::from_utf8_lossy(key).into_owned(),
                        message: e.to_string(),
                    })?;
                if status.is_none_or(|s| batch.status == s) {
                    page.push(batch);
                }
                Ok(page.len() < limit)
            },
        )?;
        Ok(page)
    }

    /// Approves or rejects a pending batch. A rejected batch's records leave the index (they
    /// may be contributed again) and its segment is deleted.
    pub fn review(
        &self,
        id: &str,
        batch_id: u64,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Batch, DatanetError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = self.batch(id, batch_id)?;
        if batch.status != BatchStatus::Pending {
            return Err(DatanetError::AlreadyReviewed {
                batch: batch_id,
                status: batch.status,
            });
        }
        batch.reviewed_at = Some(Utc::now());
        batch.review_reason = reason;
        let mut write = self.store.batch();
        let mut delete_after = None;
        if approve {
            batch.status = BatchStatus::Approved;
        } else {
            batch.status = BatchStatus::Rejected;
            if let Some(rel) = batch.segment.take() {
                self.index_ready(id)?;
                for record in self.segment_record_ids(&rel)? {
                    write.delete(CF_RECORDS, record_key(id, &record));
                }
                delete_after = Some(self.dirs.root.join(&rel));
            }
        }
        write.put_json(CF_BATCHES, batch_key(id, batch_id), &batch)?;
        write.commit()?;
        if let Some(path) = delete_after {
            // If this fails or we crash first, start-up collects the unreferenced file.
            let _ = fs::remove_file(path);
        }
        Ok(batch)
    }

    /// The record ids of a segment, in row order.
    pub(crate) fn segment_record_ids(&self, rel: &str) -> Result<Vec<RecordId>, DatanetError> {
        let path = self.dirs.root.join(rel);
        let corrupt = |message: String| SegmentError::Format {
            path: path.display().to_string(),
            message,
        };
        let mut ids = Vec::new();
        for batch in segment::read(&path, Some(&[COL_RECORD_ID]))? {
            let batch = batch?;
            let column = batch.column(0);
            if let Some(binary) = column.as_fixed_size_binary_opt() {
                // A null id is a broken segment, not a row to skip: skipping would shift
                // every later id against the rows and deletion vectors.
                for value in binary.iter() {
                    let value =
                        value.ok_or_else(|| corrupt(format!("{COL_RECORD_ID} holds a null")))?;
                    ids.push(value.try_into().map_err(|_| {
                        corrupt(format!(
                            "{COL_RECORD_ID} holds a value of {} bytes",
                            value.len()
                        ))
                    })?);
                }
            } else if let Some(hex) = column.as_string_opt::<i32>() {
                // Segments written before ids were stored as bytes hold them as hex.
                for value in hex.iter() {
                    let value =
                        value.ok_or_else(|| corrupt(format!("{COL_RECORD_ID} holds a null")))?;
                    ids.push(parse_record_id(value, COL_RECORD_ID)?);
                }
            } else {
                return Err(corrupt(format!("{COL_RECORD_ID} is {}", column.data_type())).into());
            }
        }
        Ok(ids)
    }

    // ---- records and withdrawals ----

    pub fn record(&self, id: &str, record: &str) -> Result<RecordInfo, DatanetError> {
        let record_id = parse_record_id(record, "record_id")?;
        self.index_ready(id)?;
        let location = self.locate(id, &record_id)?;
        let batch = self.batch(id, location.batch)?;
        let withdrawn = self
            .store
            .get(CF_WITHDRAWALS, &record_key(id, &record_id))?
            .is_some();
        Ok(RecordInfo {
            record_id: record_id_hex(&record_id),
            datanet: id.to_string(),
            batch: location.batch,
            row: location.row,
            contributor: location.contributor,
            batch_status: batch.status,
            withdrawn,
        })
    }

    /// The quality the validators gave each of `records` (64 hex digits each), in order;
    /// 1 for a record this Datanet does not hold. Each batch's segment is read once, and only
    /// its quality column.
    pub fn record_qualities(&self, id: &str, records: &[&str]) -> Result<Vec<f64>, DatanetError> {
        let mut out = vec![1.0; records.len()];
        let mut by_batch: HashMap<u64, Vec<(usize, u32)>> = HashMap::new();
        self.index_ready(id)?;
        for (i, hex) in records.iter().enumerate() {
            let Ok(record) = parse_record_id(hex, "record_id") else {
                continue;
            };
            match self.locate(id, &record) {
                Ok(location) => by_batch
                    .entry(location.batch)
                    .or_default()
                    .push((i, location.row)),
                Err(DatanetError::RecordNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for (batch, rows) in by_batch {
            let Some(quality) = self.batch_qualities(id, batch)? else {
                continue;
            };
            for (i, row) in rows {
                if let Some(q) = quality.get(row as usize) {
                    out[i] = *q;
                }
            }
        }
        Ok(out)
    }

    /// The quality column of a batch's segment, read once while it stays in the cache.
    fn batch_qualities(&self, id: &str, batch: u64) -> Result<Option<Qualities>, DatanetError> {
        let key = (id.to_string(), batch);
        if let Some(q) = self
            .qualities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Some(q.clone()));
        }
        let Some(rel) = self.batch(id, batch)?.segment else {
            return Ok(None);
        };
        let mut quality = Vec::new();
        for part in segment::read(&self.dirs.root.join(rel), Some(&[COL_QUALITY]))? {
            let part = part?;
            let column = part
                .column(0)
                .as_primitive::<arrow::datatypes::Float64Type>();
            quality.extend((0..column.len()).map(|r| column.value(r)));
        }
        let quality = Arc::new(quality);
        let mut cache = self.qualities.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= QUALITY_CACHE_BATCHES {
            cache.clear();
        }
        cache.insert(key, quality.clone());
        Ok(Some(quality))
    }

    /// Where `record` is; callers have waited for [`Self::index_ready`].
    fn locate(&self, id: &str, record: &RecordId) -> Result<RecordLocation, DatanetError> {
        let bytes = self
            .store
            .get(CF_RECORDS, &record_key(id, record))?
            .ok_or_else(|| DatanetError::RecordNotFound {
                datanet: id.to_string(),
                record: record_id_hex(record),
            })?;
        RecordLocation::decode(&bytes).ok_or_else(|| {
            DatanetError::Store(StoreError::Corrupt {
                cf: CF_RECORDS,
                key: record_id_hex(record),
                message: "record location has the wrong length".into(),
            })
        })
    }

    /// Withdraws records, proved by the contributor's signature over
    /// [`withdrawal_message`]. Later versions leave them out; earlier ones keep them.
    pub fn withdraw(
        &self,
        id: &str,
        request: WithdrawalRequest,
    ) -> Result<WithdrawalReceipt, DatanetError> {
        if request.record_ids.is_empty() {
            return Err(invalid("record_ids", "name at least one record"));
        }
        if request.record_ids.len() > MAX_WITHDRAWAL_RECORDS {
            return Err(invalid(
                "record_ids",
                format!("at most {MAX_WITHDRAWAL_RECORDS} records per withdrawal"),
            ));
        }
        let ids: Vec<RecordId> = request
            .record_ids
            .iter()
            .enumerate()
            .map(|(i, s)| parse_record_id(s, &format!("record_ids[{i}]")))
            .collect::<Result<_, _>>()?;
        let signature: Signature = request.signature.parse()?;
        let root = merkle::root_of_bytes32(&ids);
        let recovered = recover_personal(withdrawal_message(id, &root).as_bytes(), &signature)?;
        if recovered != request.contributor {
            return Err(DatanetError::SignerMismatch {
                claimed: request.contributor,
                recovered,
            });
        }
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.get(id)?;
        self.index_ready(id)?;
        let mut write = self.store.batch();
        let mut withdrawn = Vec::new();
        let mut already = Vec::new();
        for record in &ids {
            let location = self.locate(id, record)?;
            if location.contributor != request.contributor {
                return Err(DatanetError::NotOwner {
                    record: record_id_hex(record),
                    owner: location.contributor,
                    caller: request.contributor,
                });
            }
            let key = record_key(id, record);
            if self.store.get(CF_WITHDRAWALS, &key)?.is_some() {
                already.push(record_id_hex(record));
            } else {
                write.put(CF_WITHDRAWALS, key, location.encode());
                withdrawn.push(record_id_hex(record));
            }
        }
        write.commit()?;
        Ok(WithdrawalReceipt {
            datanet: id.to_string(),
            withdrawn,
            already_withdrawn: already,
        })
    }
}
