//! Contributions: a signed batch read, checked, deduplicated, written and committed.
//!
//! The work runs on two threads: a reader parses the upload into Arrow chunks, hashes them
//! (record ids with BLAKE3, the first of each Merkle leaf's two keccak256s) and looks them up
//! in the record index, while the calling thread finishes the leaves, validates,
//! deduplicates and writes the Parquet segment. Memory stays bounded by a few chunks plus
//! 32 bytes a record for the commitment and the index.
//!
//! Durability: the segment goes to a temporary file, is synced and renamed, then one synced
//! RocksDB batch commits the batch, its record index entries and the Datanet's counter. A
//! crash before that commit leaves an orphan file, which [`Datanets::open`] removes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeBinaryArray, Float64Array, RecordBatch, StringBuilder,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow::buffer::Buffer;
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use chrono::Utc;

use super::ingest::{self, Chunk, ChunkReader, ErrorReport, Input, InputFormat};
use super::known::KnownIds;
use super::new_records::NewRecords;
use super::pending_index::PendingIndex;
use super::record::{record_ids, RecordId};
use super::schema::{DatanetSchema, RECORD_ID_BYTES, TIMEZONE};
use super::segment::{persist_file, SegmentWriter};
use super::service::{
    batch_key, datanet_key, invalid, record_id_hex, record_key, segment_relpath, DatanetError,
    Datanets,
};
use super::validate::ValidatorChain;
use super::{
    hex32, Batch, BatchStatus, Datanet, Duplicate, InvalidRows, OnValidatorFailure, RecordLocation,
    ReviewMode,
};
use crate::identity::{recover_personal, Address, Signature};
use crate::merkle::{self, Hash, LeafBuckets};
use crate::plugin::state::StateChanges;
use crate::store::{RecordsFile, Store, StoreError, CF_BATCHES, CF_CATALOG, CF_META, CF_RECORDS};

/// How many duplicates a batch lists; the total is always counted.
pub const MAX_REPORTED_DUPLICATES: usize = 100;
/// Chunks the reader may run ahead of the writer.
const PIPELINE_DEPTH: usize = 4;
/// From this many new records on, a batch's index entries are bulk-loaded through an SST file
/// instead of going through the memtable in the batch's own commit.
pub const BULK_INDEX_MIN: usize = 50_000;
const PENDING_INDEX_PREFIX: &str = "pending-index/";
/// How many ids ahead of its lookup a batch's record table is asked for an id's slot: about
/// as many as the memory system has misses in flight.
const PREFETCH_AHEAD: usize = 8;

fn pending_index_key(id: &str, batch: u64) -> String {
    format!("{PENDING_INDEX_PREFIX}{id}\0{batch:016x}")
}

/// A signed contribution as it arrives: the claimed contributor and their signature over the
/// Merkle root of the record ids of the batch's valid rows.
#[derive(Debug, Clone)]
pub struct Contribution {
    pub format: InputFormat,
    pub contributor: Address,
    pub signature: Signature,
}

/// What the CLI computes before signing: the ids of the valid rows and their root.
#[derive(Debug, Clone)]
pub struct BatchCommitment {
    pub ids: Vec<RecordId>,
    pub root: Hash,
    pub errors: ErrorReport,
}

/// Each of `rows`' ids with its row, sorted as the record index stores them.
fn sorted_rows(rows: &[RecordId]) -> Vec<(RecordId, u32)> {
    merkle::sorted_by_hash(rows, |row, id| (*id, row as u32), |entry| &entry.0)
}

/// A committed batch's record index entries: in its own commit, or after it.
enum IndexEntries {
    /// Sorted, with their rows.
    Now(Vec<(RecordId, u32)>),
    /// The ids in row order, indexed after the acknowledgement.
    Later(Vec<RecordId>),
}

/// [`IndexEntries`] once the commit is on its way.
enum Committed {
    Now(Vec<(RecordId, u32)>),
    Later(Vec<RecordId>, PendingIndex),
}

/// What finishing a large batch's index after its commit needs, on a thread of its own.
struct FinishIndex {
    store: Arc<Store>,
    tmp: PathBuf,
    datanet: String,
    batch: u64,
    contributor: Address,
    known: Arc<Mutex<KnownIds>>,
}

impl FinishIndex {
    fn run(self, rows: Vec<RecordId>, pending: PendingIndex) {
        let (datanet, batch) = (self.datanet.clone(), self.batch);
        let start = std::time::Instant::now();
        // `build` drops what it holds of the store before readers are let go, so that once
        // none waits, a `Datanets` being dropped leaves the data directory free to reopen.
        match self.build(rows) {
            Ok(()) => {
                tracing::debug!(
                    datanet,
                    batch,
                    index_ms = start.elapsed().as_millis() as u64,
                    "record index finished"
                );
                pending.done();
            }
            Err(e) => {
                tracing::error!(datanet, batch, error = %e, "the record index could not be finished; the next reader rebuilds it from the segment");
                pending.fail(e.to_string());
            }
        }
    }

    fn build(self, rows: Vec<RecordId>) -> Result<(), DatanetError> {
        index_batch(
            &self.store,
            &self.tmp,
            &self.datanet,
            self.batch,
            self.contributor,
            rows,
            Some(&self.known),
        )
    }
}

/// Writes the record index of batch `batch` of Datanet `datanet`, whose new records are
/// `rows` in row order, through SST files, and clears its pending marker; first adds them
/// to the Datanet's filter of known ids, if it has one, which the next contribution trusts.
/// Entries already there are written again with the same values, so this may follow a
/// partial attempt.
fn index_batch(
    store: &Store,
    tmp: &Path,
    datanet: &str,
    batch: u64,
    contributor: Address,
    rows: Vec<RecordId>,
    known: Option<&Mutex<KnownIds>>,
) -> Result<(), DatanetError> {
    if let Some(known) = known {
        let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
        for record in &rows {
            known.insert(record);
        }
    }
    let sorted = sorted_rows(&rows);
    drop(rows);
    let location = |row: u32| RecordLocation {
        batch,
        row,
        contributor,
    };
    let file = write_index_files(store, tmp, datanet, &sorted, |(r, row)| {
        (*r, location(*row))
    });
    let entries = sorted.iter().map(|(r, row)| (*r, location(*row)));
    load_index(store, datanet, batch, entries, file)
}

/// Writes index entries of Datanet `id`, sorted by record id, as SST files: the two halves of
/// the key range side by side.
fn write_index_files<T: Sync>(
    store: &Store,
    tmp: &Path,
    id: &str,
    sorted: &[T],
    entry: impl Fn(&T) -> (RecordId, RecordLocation) + Sync,
) -> Result<RecordsFile, StoreError> {
    let write = |part: &[T]| {
        store.write_records_file(tmp, |put| {
            let mut key = record_key(id, &[0; 32]);
            let at = key.len() - std::mem::size_of::<RecordId>();
            for t in part {
                let (record, location) = entry(t);
                key[at..].copy_from_slice(&record);
                put(&key, &location.encode())?;
            }
            Ok(())
        })
    };
    let (low, high) = sorted.split_at(sorted.len() / 2);
    if low.is_empty() {
        return write(high);
    }
    std::thread::scope(|scope| {
        let low = scope.spawn(|| write(low));
        let high = write(high)?;
        let low = low
            .join()
            .map_err(|_| StoreError::Io("writing an index file panicked".into()))??;
        Ok(low.and(high))
    })
}

/// Loads a committed batch's index `file` (written from `entries`) and clears its pending
/// marker. If the file could not be written or loaded, the entries go in through a write
/// batch.
fn load_index(
    store: &Store,
    id: &str,
    batch: u64,
    entries: impl Iterator<Item = (RecordId, RecordLocation)>,
    file: Result<RecordsFile, StoreError>,
) -> Result<(), DatanetError> {
    let mut done = store.batch();
    if let Err(e) = file.and_then(|f| store.ingest_records_file(f)) {
        tracing::warn!(datanet = id, batch, error = %e, "bulk index load failed; writing entries instead");
        for (record, location) in entries {
            done.put(CF_RECORDS, record_key(id, &record), location.encode());
        }
    }
    done.delete(CF_META, pending_index_key(id, batch));
    done.commit()?;
    Ok(())
}

/// A chunk of valid rows with their ids.
struct HashedChunk {
    chunk: Chunk,
    ids: Vec<RecordId>,
    /// The first of the two hashes of each id's Merkle leaf, when the writer is to finish
    /// them; `None` when the reader added the leaves itself.
    first_hashes: Option<Vec<Hash>>,
    /// Per id, the batch that first stored it, if the Datanet has it already; empty when
    /// the reader was given no lookup.
    stored_in: Vec<Option<u64>>,
    /// Bad rows the reader had found up to and including this chunk.
    bad_rows_so_far: u64,
}

/// Finds which of a chunk's ids a Datanet already holds, and in which batch.
type Lookup<'a> = &'a (dyn Fn(&[RecordId]) -> Result<Vec<Option<u64>>, DatanetError> + Sync);

/// Reads `reader` on a second thread, hashing (and with `lookup`, looking up) as it goes,
/// and hands each chunk to `each` on this one. Returns the reader's report of bad rows and
/// the Merkle leaves of every valid row.
///
/// Which thread sets the pace depends on the input and the validators, so the leaves, two
/// keccak256s a row, go to whichever has time: the reader hashes a chunk's leaves whole
/// while the writer has chunks waiting, and only halfway, for the writer to finish, while
/// the writer waits for it.
fn read_hashed(
    reader: Box<dyn ChunkReader>,
    schema: &DatanetSchema,
    lookup: Option<Lookup<'_>>,
    mut each: impl FnMut(HashedChunk) -> Result<(), DatanetError>,
) -> Result<(ErrorReport, LeafBuckets), DatanetError> {
    let (tx, rx) = sync_channel::<Result<HashedChunk, DatanetError>>(PIPELINE_DEPTH);
    let waiting = AtomicUsize::new(0);
    let waiting = &waiting;
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut reader = reader;
            let mut report = ErrorReport::default();
            let mut leaves = LeafBuckets::default();
            loop {
                let message = match reader.next_chunk(&mut report) {
                    Ok(Some(chunk)) => {
                        let ids = record_ids(schema, &chunk.batch);
                        let first_hashes = if waiting.load(Ordering::Relaxed) > 0 {
                            leaves.push_values(&ids);
                            None
                        } else {
                            Some(merkle::first_hashes_bytes32(&ids))
                        };
                        let stored_in = lookup.map_or(Ok(Vec::new()), |find| find(&ids));
                        stored_in.map(|stored_in| HashedChunk {
                            chunk,
                            ids,
                            first_hashes,
                            stored_in,
                            bad_rows_so_far: report.total,
                        })
                    }
                    Ok(None) => break,
                    Err(e) => Err(DatanetError::from(e)),
                };
                let failed = message.is_err();
                waiting.fetch_add(1, Ordering::Relaxed);
                // A closed channel means the writer stopped; so do we.
                if tx.send(message).is_err() || failed {
                    break;
                }
            }
            (report, leaves)
        });
        let mut outcome = Ok(());
        let mut finished = LeafBuckets::default();
        for message in rx.iter() {
            waiting.fetch_sub(1, Ordering::Relaxed);
            let step = message.and_then(|mut hashed| {
                if let Some(first) = hashed.first_hashes.take() {
                    finished.push_from_first(&first);
                }
                each(hashed)
            });
            if let Err(e) = step {
                outcome = Err(e);
                break;
            }
        }
        drop(rx);
        let (report, mut leaves) = producer
            .join()
            .map_err(|_| DatanetError::Io(std::io::Error::other("the upload reader panicked")))?;
        leaves.merge(finished);
        outcome.map(|()| (report, leaves))
    })
}

impl Datanets {
    /// Reads an upload and computes what its contributor signs. The CLI calls this on the
    /// file before uploading; the server runs the same readers while ingesting.
    pub fn commitment(
        datanet: &Datanet,
        format: InputFormat,
        input: Input,
    ) -> Result<BatchCommitment, DatanetError> {
        let schema = &datanet.spec.schema;
        let reader = ingest::open(format, input, schema)?;
        let mut ids = Vec::new();
        let (errors, leaves) = read_hashed(reader, schema, None, |hashed| {
            ids.extend_from_slice(&hashed.ids);
            Ok(())
        })?;
        let root = leaves.into_tree().root();
        Ok(BatchCommitment { ids, root, errors })
    }

    /// Ingests a signed batch: parse and check every row, run the validators, deduplicate,
    /// verify the signature, write the segment and commit. Returns the batch as stored.
    pub fn contribute(
        &self,
        id: &str,
        contribution: Contribution,
        input: Input,
    ) -> Result<Batch, DatanetError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut datanet = self.get(id)?;
        let schema = datanet.spec.schema.clone();
        let batch_id = datanet.batches + 1;
        let submitted_at = Utc::now();

        let chain = self.chain_for(&datanet)?;
        let reader = ingest::open(contribution.format, input, &schema)?;
        let tmp_path = self
            .dirs
            .tmp
            .join(format!("{id}-{batch_id:016x}.parquet.tmp"));
        let segment_schema = schema.segment_schema();
        let mut writer =
            SegmentWriter::create(tmp_path.clone(), segment_schema.clone(), &schema.text_field)?;
        let mut dedup = Dedup {
            batch_id,
            contributor: contribution.contributor.to_checksum(),
            submitted_at: submitted_at.timestamp_micros(),
            schema: segment_schema,
            rows: 0,
            new_records: NewRecords::default(),
            duplicates: 0,
            duplicate_examples: Vec::new(),
            rejected: ErrorReport::default(),
            state: StateChanges::default(),
            held: None,
        };
        let reject_bad_rows = datanet.spec.invalid_rows == InvalidRows::Reject;
        let started = std::time::Instant::now();
        // The reader thread looks each chunk up in the record index, which nothing else
        // changes for this Datanet while its lock is held.
        let known_ids = self.known_ids(id)?;
        let mut known = known_ids.lock().unwrap_or_else(|p| p.into_inner());
        let known_now: &KnownIds = &known;
        let lookup = |ids: &[RecordId]| self.stored_in(id, ids, known_now);
        let destination = Destination {
            id,
            datanet: &datanet,
            chain: &chain,
            known: known_now,
        };
        let read = read_hashed(reader, &schema, Some(&lookup), |hashed| {
            dedup.rows += hashed.ids.len() as u64;
            if reject_bad_rows && (hashed.bad_rows_so_far > 0 || !dedup.rejected.is_empty()) {
                // The batch will be refused; read on only to report every problem.
                return Ok(());
            }
            self.store_chunk(&destination, hashed, &mut dedup, &mut writer)
        });

        let read_done = started.elapsed();
        let cleanup = |e: DatanetError| {
            let _ = fs::remove_file(&tmp_path);
            e
        };
        let (mut errors, leaves) = read.map_err(cleanup)?;
        errors.merge(std::mem::take(&mut dedup.rejected));
        if reject_bad_rows && !errors.is_empty() {
            return Err(cleanup(DatanetError::InvalidRows(Box::new(errors))));
        }
        if dedup.rows == 0 {
            // With every row bad, the report says more than "empty" does.
            return Err(cleanup(if errors.is_empty() {
                DatanetError::EmptyBatch
            } else {
                DatanetError::InvalidRows(Box::new(errors))
            }));
        }
        let accepted = dedup.new_records.len() as u64;
        let finishing = std::time::Instant::now();
        let file = if accepted > 0 {
            Some(writer.finish().map_err(|e| cleanup(e.into()))?)
        } else {
            drop(writer);
            None
        };
        // While the commitment is checked, sync the segment on another thread. A small batch's
        // index entries are sorted there too and go in with its commit; a large batch's are
        // finished after the acknowledgement (see `pending_index`), which would otherwise
        // wait for them.
        let new_records = std::mem::take(&mut dedup.new_records);
        let bulk = new_records.len() >= self.bulk_index_min;
        let location = |row: u32| RecordLocation {
            batch: batch_id,
            row,
            contributor: contribution.contributor,
        };
        let finish_ms = finishing.elapsed().as_millis() as u64;
        let (root, synced, indexed) = std::thread::scope(|scope| {
            let sync = file.as_ref().map(|f| {
                scope.spawn(move || {
                    let start = std::time::Instant::now();
                    f.sync_all().map(|()| start.elapsed())
                })
            });
            let indexing = scope.spawn(move || {
                if bulk {
                    IndexEntries::Later(new_records.into_rows())
                } else {
                    // Sorted keys go into RocksDB several times faster than random ones.
                    IndexEntries::Now(sorted_rows(&new_records.into_rows()))
                }
            });
            let start = std::time::Instant::now();
            let root = leaves.into_tree().root();
            let root_ms = start.elapsed().as_millis() as u64;
            let synced = sync.map_or(Ok(Default::default()), |h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("segment sync panicked")))
            });
            (root, synced.map(|t| (t, root_ms)), indexing.join())
        });
        let Ok(index) = indexed else {
            return Err(cleanup(DatanetError::Io(std::io::Error::other(
                "sorting the batch's index panicked",
            ))));
        };
        let (sync_time, root_ms) = synced.map_err(|e| cleanup(e.into()))?;
        drop(file);
        let recovered =
            recover_personal(&root, &contribution.signature).map_err(|e| cleanup(e.into()))?;
        if recovered != contribution.contributor {
            return Err(cleanup(DatanetError::SignerMismatch {
                claimed: contribution.contributor,
                recovered,
            }));
        }
        let verified = started.elapsed();
        let segment = if accepted > 0 {
            let rel = segment_relpath(id, batch_id);
            persist_file(&tmp_path, &self.dirs.root.join(&rel))?;
            Some(rel)
        } else {
            let _ = fs::remove_file(&tmp_path);
            None
        };
        let status = match (datanet.spec.review, &dedup.held) {
            (_, Some(_)) | (ReviewMode::Manual, None) => BatchStatus::Pending,
            (ReviewMode::Auto, None) => BatchStatus::Approved,
        };
        let approved = status == BatchStatus::Approved;
        let review_reason = match &dedup.held {
            Some(failure) => Some(format!("held for review: {failure}")),
            None => approved.then(|| "auto-approved".to_string()),
        };
        let batch = Batch {
            datanet: id.to_string(),
            id: batch_id,
            status,
            contributor: contribution.contributor,
            merkle_root: hex32(&root),
            signature: contribution.signature.to_hex(),
            format: contribution.format,
            submitted_at,
            rows: dedup.rows,
            accepted,
            duplicates: dedup.duplicates,
            invalid: errors.total,
            duplicate_examples: dedup.duplicate_examples,
            errors,
            segment,
            reviewed_at: approved.then_some(submitted_at),
            review_reason,
        };
        datanet.batches = batch_id;
        let mut write = self.store.batch();
        match &index {
            IndexEntries::Now(sorted) => {
                for (record, row) in sorted {
                    write.put(CF_RECORDS, record_key(id, record), location(*row).encode());
                }
            }
            // The marker makes a restart finish the index from the segment if we crash
            // before it is in.
            IndexEntries::Later(_) => write.put(CF_META, pending_index_key(id, batch_id), b""),
        }
        write.put_json(CF_BATCHES, batch_key(id, batch_id), &batch)?;
        // Validator state lands with the batch it judged, or not at all.
        dedup.state.write_to(&self.store, &mut write)?;
        write.put_json(CF_CATALOG, datanet_key(id), &datanet)?;
        let persisted = started.elapsed();
        // Registered before the commit, so that no reader finds the batch without waiting
        // for its index.
        let index = match index {
            IndexEntries::Now(sorted) => Committed::Now(sorted),
            IndexEntries::Later(rows) => Committed::Later(rows, self.pending.begin(id, batch_id)),
        };
        if let Err(e) = write.commit() {
            if let Committed::Later(_, pending) = index {
                // Nothing was committed, so there is no index to finish.
                pending.done();
            }
            return Err(e.into());
        }
        match index {
            Committed::Now(sorted) => {
                // Before anything else can fail: the next contribution's lookups trust it.
                for (record, _) in &sorted {
                    known.insert(record);
                }
            }
            Committed::Later(rows, pending) => {
                drop(known);
                let finish = FinishIndex {
                    store: self.store.clone(),
                    tmp: self.dirs.tmp.clone(),
                    datanet: id.to_string(),
                    batch: batch_id,
                    contributor: contribution.contributor,
                    known: known_ids,
                };
                // Should the thread not start, the handle it was given ends unfinished, which
                // readers are told about, and the marker has a restart finish the index.
                let spawned = std::thread::Builder::new()
                    .name(format!("index-{batch_id}"))
                    .spawn(move || finish.run(rows, pending));
                if let Err(e) = spawned {
                    tracing::error!(datanet = id, batch = batch_id, error = %e, "could not start the index thread");
                }
            }
        }
        tracing::debug!(
            datanet = id,
            batch = batch_id,
            rows = batch.rows,
            read_ms = read_done.as_millis() as u64,
            verify_ms = (verified - read_done).as_millis() as u64,
            finish_ms,
            root_ms,
            sync_ms = sync_time.as_millis() as u64,
            persist_ms = (persisted - verified).as_millis() as u64,
            commit_ms = (started.elapsed() - persisted).as_millis() as u64,
            "contribution committed"
        );
        Ok(batch)
    }

    /// Finishes the index of batches committed just before a crash, from their segments.
    pub(crate) fn finish_pending_indexes(&self) -> Result<usize, DatanetError> {
        let mut pending = Vec::new();
        self.store
            .for_each_prefix(CF_META, PENDING_INDEX_PREFIX.as_bytes(), |key, _| {
                pending
                    .push(String::from_utf8_lossy(&key[PENDING_INDEX_PREFIX.len()..]).into_owned());
                Ok(())
            })?;
        for entry in &pending {
            let parsed = entry
                .split_once('\0')
                .and_then(|(id, batch)| Some((id, u64::from_str_radix(batch, 16).ok()?)));
            let Some((id, batch_id)) = parsed else {
                tracing::warn!(marker = %entry.escape_debug(), "ignoring a malformed pending-index marker");
                continue;
            };
            self.index_from_segment(id, batch_id)?;
        }
        Ok(pending.len())
    }

    /// Writes the record index of batch `batch_id` of Datanet `id` from its segment (see
    /// [`index_batch`]): at start-up after a crash, or after an index failed.
    pub(crate) fn index_from_segment(&self, id: &str, batch_id: u64) -> Result<(), DatanetError> {
        let batch = self.batch(id, batch_id)?;
        let ids = match &batch.segment {
            Some(rel) => self.segment_record_ids(rel)?,
            None => Vec::new(),
        };
        let known = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        index_batch(
            &self.store,
            &self.dirs.tmp,
            id,
            batch_id,
            batch.contributor,
            ids,
            known.as_deref(),
        )
    }

    /// For each of `ids`, the batch of Datanet `id` that stored it, if one has. Only the ids
    /// `known` may hold are looked up.
    fn stored_in(
        &self,
        id: &str,
        ids: &[RecordId],
        known: &KnownIds,
    ) -> Result<Vec<Option<u64>>, DatanetError> {
        // RocksDB's batched lookup wants its keys in order (it sorts them itself otherwise,
        // comparing whole keys); ids are uniform, so their first eight bytes nearly always
        // decide.
        let mut order: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .filter(|(_, r)| known.may_contain(r))
            .map(|(i, r)| {
                (
                    u64::from_be_bytes(r[..8].try_into().unwrap_or_default()),
                    i as u32,
                )
            })
            .collect();
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| ids[a.1 as usize].cmp(&ids[b.1 as usize]))
        });
        let mut stored_in = vec![None; ids.len()];
        if order.is_empty() {
            return Ok(stored_in);
        }
        // The keys side by side in one buffer, not an allocation each.
        let width = id.len() + 1 + std::mem::size_of::<RecordId>();
        let mut keys = Vec::with_capacity(ids.len() * width);
        for &(_, i) in &order {
            keys.extend_from_slice(id.as_bytes());
            keys.push(0);
            keys.extend_from_slice(&ids[i as usize]);
        }
        let found = self
            .store
            .multi_get(CF_RECORDS, keys.chunks_exact(width), true, |found| {
                found.and_then(RecordLocation::decode).map(|l| l.batch)
            })?;
        for ((_, i), batch) in order.into_iter().zip(found) {
            stored_in[i as usize] = batch;
        }
        Ok(stored_in)
    }

    /// Validates, deduplicates and writes one chunk.
    fn store_chunk(
        &self,
        to: &Destination<'_>,
        hashed: HashedChunk,
        dedup: &mut Dedup,
        writer: &mut SegmentWriter,
    ) -> Result<(), DatanetError> {
        let Destination {
            id,
            datanet,
            chain,
            known,
        } = *to;
        let HashedChunk {
            mut chunk,
            mut ids,
            mut stored_in,
            ..
        } = hashed;
        // Rows are numbered in the order new records are added.
        debug_assert_eq!(dedup.new_records.len() as u64, writer.rows());
        let judgement = if chain.is_empty() || dedup.held.is_some() {
            None
        } else {
            match chain.judge(datanet, &chunk, &mut dedup.state, &mut dedup.rejected) {
                Ok(j) => Some(j),
                Err(e) if datanet.spec.on_validator_failure == OnValidatorFailure::Hold => {
                    tracing::warn!(datanet = id, error = %e, "validator failed; holding the batch for review");
                    dedup.held = Some(e.to_string());
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(rewritten) = judgement.as_ref().and_then(|j| j.rewritten.clone()) {
            // What is stored is what the validators left; its ids are of that.
            ids = record_ids(&datanet.spec.schema, &rewritten);
            chunk.batch = rewritten;
            stored_in = self.stored_in(id, &ids, known)?;
        }
        let mut keep = Vec::with_capacity(ids.len());
        let mut kept_ids = Vec::with_capacity(ids.len());
        let mut quality = Vec::with_capacity(ids.len());
        for (i, (record, stored)) in ids.iter().zip(stored_in).enumerate() {
            if let Some(ahead) = ids.get(i + PREFETCH_AHEAD) {
                dedup.new_records.prefetch(ahead);
            }
            if judgement.as_ref().is_some_and(|j| !j.keep[i]) {
                keep.push(false);
                continue;
            }
            let first_batch = match stored {
                Some(batch) => Some(batch),
                None if dedup.new_records.insert(record) => None,
                None => Some(dedup.batch_id),
            };
            if let Some(first_batch) = first_batch {
                dedup.duplicates += 1;
                if dedup.duplicate_examples.len() < MAX_REPORTED_DUPLICATES {
                    dedup.duplicate_examples.push(Duplicate {
                        row: chunk.rows[i],
                        record_id: record_id_hex(record),
                        first_batch,
                    });
                }
                keep.push(false);
                continue;
            }
            keep.push(true);
            kept_ids.push(*record);
            quality.push(judgement.as_ref().map_or(1.0, |j| j.quality[i]));
        }
        if kept_ids.is_empty() {
            return Ok(());
        }
        let rows = if kept_ids.len() == ids.len() {
            chunk.batch
        } else {
            filter_record_batch(&chunk.batch, &BooleanArray::from(keep))
                .map_err(|e| invalid("body", e.to_string()))?
        };
        writer.write(&dedup.with_system_columns(&rows, &kept_ids, quality)?)?;
        Ok(())
    }
}

/// The Datanet a contribution's chunks are stored into, with its validators and the ids
/// its index may hold.
#[derive(Clone, Copy)]
struct Destination<'a> {
    id: &'a str,
    datanet: &'a Datanet,
    chain: &'a ValidatorChain,
    known: &'a KnownIds,
}

/// The writer side's state while a batch streams in.
struct Dedup {
    batch_id: u64,
    contributor: String,
    submitted_at: i64,
    schema: SchemaRef,
    /// Valid rows received.
    rows: u64,
    /// New records in the order of their rows in the segment; also how in-batch
    /// duplicates are found.
    new_records: NewRecords,
    duplicates: u64,
    duplicate_examples: Vec<Duplicate>,
    /// Rows the validators refused.
    rejected: ErrorReport,
    /// Validator key-value writes, committed with the batch.
    state: StateChanges,
    /// Why validation stopped, when a validator failed and the Datanet holds such batches.
    held: Option<String>,
}

impl Dedup {
    fn with_system_columns(
        &self,
        batch: &RecordBatch,
        ids: &[RecordId],
        quality: Vec<f64>,
    ) -> Result<RecordBatch, DatanetError> {
        let n = batch.num_rows();
        let record_ids = FixedSizeBinaryArray::new(
            RECORD_ID_BYTES,
            Buffer::from_slice_ref(ids.as_flattened()),
            None,
        );
        let mut contributors = StringBuilder::with_capacity(n, n * self.contributor.len());
        for _ in 0..n {
            contributors.append_value(&self.contributor);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(record_ids));
        columns.push(Arc::new(contributors.finish()));
        columns.push(Arc::new(UInt64Array::from_value(self.batch_id, n)));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from_value(self.submitted_at, n).with_timezone(TIMEZONE),
        ));
        columns.push(Arc::new(Float64Array::from(quality)));
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| invalid("body", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::identity::Key;

    const SPEC: &str = r#"{"id": "notes", "name": "Notes", "license": "CC0-1.0", "review": "auto",
      "schema": {"fields": [{"name": "text", "type": "string", "required": true}], "text_field": "text"}}"#;

    /// A Datanet "notes" in `dir` whose every batch's index is finished after its commit.
    fn bulk_notes(dir: &Path) -> Datanets {
        let datanets = Datanets::open(dir).expect("open").with_bulk_index_min(1);
        datanets
            .create(serde_json::from_str(SPEC).expect("spec"), "carol")
            .expect("create");
        datanets
    }

    /// Puts the store in the state a crash (or a failed index thread) right after batch 1's
    /// commit leaves: the pending-index marker set and none of `ids`' index entries.
    fn unindex_batch_one(datanets: &Datanets, ids: &[RecordId]) {
        let mut write = datanets.store.batch();
        write.put(CF_META, pending_index_key("notes", 1), b"");
        for id in ids {
            write.delete(CF_RECORDS, record_key("notes", id));
        }
        write.commit().expect("commit");
    }

    /// Checks that each of `ids` is found at its row of batch 1 and that no index is pending.
    fn assert_batch_one_indexed(datanets: &Datanets, ids: &[RecordId]) {
        for (row, id) in ids.iter().enumerate() {
            let info = datanets
                .record("notes", &record_id_hex(id))
                .expect("the record is indexed");
            assert_eq!((info.batch, info.row as usize), (1, row));
        }
        let mut markers = 0;
        datanets
            .store
            .for_each_prefix(CF_META, PENDING_INDEX_PREFIX.as_bytes(), |_, _| {
                markers += 1;
                Ok(())
            })
            .expect("scan");
        assert_eq!(markers, 0);
    }

    /// Signs `body` (JSONL) with `key` as the CLI does and contributes it to "notes".
    fn contribute_jsonl(datanets: &Datanets, key: &Key, body: &[u8]) -> (Batch, Vec<RecordId>) {
        let datanet = datanets.get("notes").expect("get");
        let input = || Input::Stream(Box::new(Cursor::new(body.to_vec())));
        let commitment =
            Datanets::commitment(&datanet, InputFormat::Jsonl, input()).expect("commitment");
        let contribution = Contribution {
            format: InputFormat::Jsonl,
            contributor: key.address(),
            signature: key.sign_personal(&commitment.root),
        };
        let batch = datanets
            .contribute("notes", contribution, input())
            .expect("contribute");
        (batch, commitment.ids)
    }

    /// Segments written before `_record_id` was stored as bytes hold hex; they still give
    /// their ids (for rebuilding the index) and export as before.
    #[test]
    fn segments_with_hex_record_ids_still_read_and_export() {
        use arrow::array::{Array, AsArray, StringArray};

        let dir = tempfile::tempdir().expect("tempdir");
        let datanets = Datanets::open(dir.path()).expect("open");
        datanets
            .create(serde_json::from_str(SPEC).expect("spec"), "carol")
            .expect("create");
        let rows = "{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
        let (batch, committed_ids) = contribute_jsonl(&datanets, &Key::generate(), rows.as_bytes());
        let rel = batch.segment.expect("a segment");
        let path = dir.path().join(&rel);
        let stored: Vec<RecordBatch> = super::super::segment::read(&path, None)
            .expect("read")
            .map(|b| b.expect("batch"))
            .collect();
        assert_eq!(
            stored[0].column(1).data_type(),
            &arrow::datatypes::DataType::FixedSizeBinary(32)
        );
        // Rewrite it as the older format.
        let datanet = datanets.get("notes").expect("get");
        let legacy_schema = datanet.spec.schema.export_schema();
        let tmp = dir.path().join("tmp").join("legacy.parquet");
        let mut writer =
            SegmentWriter::create(tmp.clone(), legacy_schema.clone(), "text").expect("writer");
        for part in &stored {
            let mut columns = part.columns().to_vec();
            let hex: Vec<String> = columns[1]
                .as_fixed_size_binary()
                .iter()
                .map(|id| hex::encode(id.expect("id")))
                .collect();
            columns[1] = Arc::new(StringArray::from(hex));
            writer
                .write(&RecordBatch::try_new(legacy_schema.clone(), columns).expect("batch"))
                .expect("write");
        }
        writer.finish().expect("finish");
        persist_file(&tmp, &path).expect("persist");

        let ids = datanets.segment_record_ids(&rel).expect("ids");
        assert_eq!(ids, committed_ids);
        datanets.publish("notes").expect("publish");
        let export = datanets.export("notes", 1).expect("export");
        let exported: Vec<String> = super::super::segment::read(&export, Some(&["_record_id"]))
            .expect("read export")
            .flat_map(|b| {
                let b = b.expect("batch");
                let column = b.column(0).as_string::<i32>().clone();
                (0..column.len()).map(move |i| column.value(i).to_string())
            })
            .collect();
        let expected: Vec<String> = committed_ids.iter().map(hex::encode).collect();
        assert_eq!(exported, expected);
    }

    /// The in-memory filter of known ids is rebuilt from the index after a restart, and
    /// grows with every batch: duplicates of records stored before and after are found.
    #[test]
    fn duplicates_are_found_across_restarts_and_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Key::generate();
        let contribute =
            |datanets: &Datanets, rows: &str| contribute_jsonl(datanets, &key, rows.as_bytes()).0;
        {
            let datanets = Datanets::open(dir.path()).expect("open");
            datanets
                .create(serde_json::from_str(SPEC).expect("spec"), "carol")
                .expect("create");
            let first = contribute(&datanets, "{\"text\": \"a\"}\n{\"text\": \"b\"}\n");
            assert_eq!((first.accepted, first.duplicates), (2, 0));
        }
        let datanets = Datanets::open(dir.path()).expect("reopen");
        let second = contribute(&datanets, "{\"text\": \"b\"}\n{\"text\": \"c\"}\n");
        assert_eq!((second.accepted, second.duplicates), (1, 1));
        assert_eq!(second.duplicate_examples[0].first_batch, 1);
        let third = contribute(
            &datanets,
            "{\"text\": \"c\"}\n{\"text\": \"a\"}\n{\"text\": \"d\"}\n",
        );
        assert_eq!((third.accepted, third.duplicates), (1, 2));
        let firsts: Vec<u64> = third
            .duplicate_examples
            .iter()
            .map(|d| d.first_batch)
            .collect();
        assert_eq!(firsts, vec![2, 1]);
    }

    /// A large batch's index is finished after the acknowledgement; whatever reads the index
    /// next waits for it, so the batch's records are there at once and the next batch finds
    /// its duplicates.
    #[test]
    fn an_index_finished_after_the_acknowledgement_is_seen_by_the_next_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let datanets = bulk_notes(dir.path());
        let key = Key::generate();
        let contribute =
            |lines: Vec<String>| contribute_jsonl(&datanets, &key, lines.concat().as_bytes());
        let line = |i: u32| format!("{{\"text\": \"note {i}\"}}\n");
        let (first, ids) = contribute((0..2000).map(line).collect());
        assert_eq!(first.accepted, 2000);
        // Straight after the acknowledgement, with no wait of our own.
        for (row, id) in ids.iter().enumerate().step_by(97) {
            let info = datanets
                .record("notes", &record_id_hex(id))
                .expect("the record is found");
            assert_eq!((info.batch, info.row as usize), (1, row));
        }
        let (second, _) = contribute((1500..2500).map(line).collect());
        assert_eq!((second.accepted, second.duplicates), (500, 500));
        assert!(second.duplicate_examples.iter().all(|d| d.first_batch == 1));
        let version = datanets.publish("notes").expect("publish");
        assert_eq!(version.records, 2500);
    }

    /// An index that failed after the acknowledgement is rebuilt from the segment by the
    /// next reader, without a restart.
    #[test]
    fn a_failed_index_is_rebuilt_by_the_next_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let datanets = bulk_notes(dir.path());
        let rows = "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n";
        let (_, ids) = contribute_jsonl(&datanets, &Key::generate(), rows.as_bytes());
        datanets.index_ready("notes").expect("index finished");
        // The state a failed index thread leaves: the marker, no entries, the failure noted.
        unindex_batch_one(&datanets, &ids);
        datanets.pending.begin("notes", 1).fail("disk full".into());
        assert_batch_one_indexed(&datanets, &ids);
    }

    #[test]
    fn a_crash_between_commit_and_bulk_index_load_is_finished_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rows = "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n";
        let ids: Vec<RecordId> = {
            let datanets = bulk_notes(dir.path());
            let (_, ids) = contribute_jsonl(&datanets, &Key::generate(), rows.as_bytes());
            datanets.index_ready("notes").expect("index finished");
            unindex_batch_one(&datanets, &ids);
            assert!(
                datanets.record("notes", &record_id_hex(&ids[0])).is_err(),
                "index entries removed"
            );
            ids
        };
        let reopened = Datanets::open(dir.path()).expect("reopen");
        assert_batch_one_indexed(&reopened, &ids);
    }
}
