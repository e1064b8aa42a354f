//! RocksDB, behind one narrow wrapper: the only module that touches it.
//!
//! Column families, one per kind of state:
//! - `catalog`: Datanets (`datanet/{id}`) and version manifests (`version/{id}/{n:010}`);
//! - `batches`: contribution batches (`{datanet}\0{batch:016x}`);
//! - `records`: the record index (`{datanet}\0{record id}` to batch, row, contributor);
//! - `withdrawals`: withdrawn records (`{datanet}\0{record id}`);
//! - `tokens`: API tokens, keyed by the BLAKE3 hash of the secret;
//! - `meta`: engine-wide settings.
//!
//! Every change is one [`Batch`] written with `sync`, so it is on disk before it is
//! acknowledged. Reads that scan report a failed read instead of stopping early.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, Direction, IngestExternalFileOptions, IteratorMode,
    Options, SstFileWriter, WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const CF_CATALOG: &str = "catalog";
pub const CF_BATCHES: &str = "batches";
pub const CF_RECORDS: &str = "records";
pub const CF_WITHDRAWALS: &str = "withdrawals";
pub const CF_TOKENS: &str = "tokens";
pub const CF_META: &str = "meta";
/// Key-value state of plugins, keyed by plugin id, a zero byte and the plugin's key.
pub const CF_PLUGIN_STATE: &str = "plugin-state";
/// Installed plugins: id to the installed manifest and component hash.
pub const CF_PLUGINS: &str = "plugins";
/// Attribution records (`a/<id>`), request ids (`r/<request>`), epochs (`e/<epoch>/<id>`) and
/// the closed epochs' roots (`root/<epoch>`).
pub const CF_ATTRIBUTIONS: &str = "attributions";
/// Background jobs by id: their last status and, for work that can resume, the request.
pub const CF_JOBS: &str = "jobs";
/// Model cards by model id.
pub const CF_MODELS: &str = "models";
/// Completions by id: the model, the output and where its attribution comes from, so that
/// an attribution skipped at request time can be made later.
pub const CF_COMPLETIONS: &str = "completions";
/// Fees, balances, payments, flags, model terms and closed epochs (see `rewards::book`).
pub const CF_REWARDS: &str = "rewards";
const ALL_CFS: [&str; 13] = [
    CF_CATALOG,
    CF_BATCHES,
    CF_RECORDS,
    CF_WITHDRAWALS,
    CF_TOKENS,
    CF_META,
    CF_PLUGIN_STATE,
    CF_PLUGINS,
    CF_ATTRIBUTIONS,
    CF_JOBS,
    CF_MODELS,
    CF_COMPLETIONS,
    CF_REWARDS,
];

/// Bits per key of the record index's Bloom filter: dedup lookups are mostly misses, and at
/// ten bits about 1% of misses touch a data block.
const RECORD_BLOOM_BITS: f64 = 10.0;
/// The record index takes bulk writes of a whole batch at once; a larger memtable keeps them
/// from stalling on flushes.
const RECORD_MEMTABLE_BYTES: usize = 128 << 20;
const BLOCK_CACHE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("storage file: {0}")]
    Io(String),
    #[error("stored value under {key} in {cf} is corrupt: {message}")]
    Corrupt {
        cf: &'static str,
        key: String,
        message: String,
    },
    #[error("encoding a value for {cf}: {source}")]
    Encode {
        cf: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

pub struct Store {
    db: DB,
    /// The record index's options, which bulk-load files must be written with.
    records_options: Options,
}

/// Changes that commit together, durably, or not at all. Writes go straight into RocksDB's
/// own batch so a large contribution is held once, not twice.
pub struct Batch<'a> {
    store: &'a Store,
    write: WriteBatch,
}

impl Batch<'_> {
    pub fn put(&mut self, cf: &'static str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.write.put_cf(self.store.cf(cf), key, value);
    }

    pub fn put_json<T: Serialize>(
        &mut self,
        cf: &'static str,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec(value).map_err(|source| StoreError::Encode { cf, source })?;
        self.put(cf, key, bytes);
        Ok(())
    }

    pub fn delete(&mut self, cf: &'static str, key: impl AsRef<[u8]>) {
        self.write.delete_cf(self.store.cf(cf), key);
    }

    pub fn len(&self) -> usize {
        self.write.len()
    }

    pub fn is_empty(&self) -> bool {
        self.write.is_empty()
    }

    /// Commits durably: the write is synced to the WAL before this returns.
    pub fn commit(self) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.store.db.write_opt(self.write, &options)?;
        Ok(())
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.increase_parallelism(2);

        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES)?;
        let cf_options = |name: &str| {
            let mut cf_options = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            if name == CF_RECORDS {
                table.set_bloom_filter(RECORD_BLOOM_BITS, false);
                table.set_cache_index_and_filter_blocks(true);
                cf_options.set_write_buffer_size(RECORD_MEMTABLE_BYTES);
                // Keys are random hashes: compressing them costs time and saves nothing.
                cf_options.set_compression_type(rocksdb::DBCompressionType::None);
            }
            cf_options.set_block_based_table_factory(&table);
            cf_options
        };
        let records_options = cf_options(CF_RECORDS);
        let descriptors = ALL_CFS
            .iter()
            .map(|&name| ColumnFamilyDescriptor::new(name, cf_options(name)));
        let db = DB::open_cf_descriptors(&options, path, descriptors)?;
        Ok(Self {
            db,
            records_options,
        })
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        // Every name passed here is one of ALL_CFS, all created at open.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} exists"))
    }

    pub fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    pub fn get_json<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get(cf, key)? {
            None => Ok(None),
            Some(bytes) => decode(cf, key, &bytes).map(Some),
        }
    }

    /// Looks up many keys of one column family at once, through RocksDB's batched MultiGet
    /// (one pass over each level for the whole batch, filters probed together, values
    /// pinned rather than copied); `decode` sees each value, or `None`, in place. With
    /// `sorted`, the caller promises the keys come in the column family's order.
    pub fn multi_get<K: AsRef<[u8]>, T>(
        &self,
        cf: &'static str,
        keys: impl IntoIterator<Item = K>,
        sorted: bool,
        mut decode: impl FnMut(Option<&[u8]>) -> T,
    ) -> Result<Vec<T>, StoreError> {
        self.db
            .batched_multi_get_cf(self.cf(cf), keys, sorted)
            .into_iter()
            .map(|r| Ok(decode(r?.as_deref())))
            .collect()
    }

    /// Visits every entry under `prefix` without collecting them.
    pub fn for_each_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.scan(cf, prefix, prefix, |k, v| visit(k, v).map(|()| true))
    }

    /// Visits entries under `prefix` from key `start` on, while `visit` returns true.
    pub fn scan(
        &self,
        cf: &'static str,
        prefix: &[u8],
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let iter = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix) || !visit(&key, &value)? {
                break;
            }
        }
        Ok(())
    }

    pub fn scan_prefix_json<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.for_each_prefix(cf, prefix, |k, v| {
            out.push(decode(cf, k, v)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes entries, in ascending key order, to an SST file for the record index (in
    /// `tmp_dir`, removed if dropped unused), to be loaded with
    /// [`Store::ingest_records_file`]. For a large batch this skips the memtable and the
    /// WAL, several times faster than a write batch, and the file can be written while other
    /// work runs.
    /// `fill` is handed a `put` for each entry, so that callers can build keys in one
    /// reused buffer.
    pub fn write_records_file(
        &self,
        tmp_dir: &Path,
        fill: impl FnOnce(
            &mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
        ) -> Result<(), StoreError>,
    ) -> Result<RecordsFile, StoreError> {
        let file = tempfile::Builder::new()
            .prefix("records-")
            .suffix(".sst")
            .tempfile_in(tmp_dir)
            .map_err(|e| StoreError::Io(e.to_string()))?
            .into_temp_path();
        let mut writer = SstFileWriter::create(&self.records_options);
        writer.open(&file)?;
        fill(&mut |k, v| Ok(writer.put(k, v)?))?;
        writer.finish()?;
        Ok(RecordsFile(vec![file]))
    }

    /// Moves the files into the record index, all in one ingestion. The files are synced
    /// when written and RocksDB syncs its manifest on ingestion, so the entries are durable
    /// when this returns. Unlike [`Batch::commit`] it is not atomic with other writes;
    /// callers make it recoverable.
    pub fn ingest_records_file(&self, file: RecordsFile) -> Result<(), StoreError> {
        let mut options = IngestExternalFileOptions::default();
        options.set_move_files(true);
        let paths: Vec<&Path> = file.0.iter().map(|p| &**p).collect();
        self.db
            .ingest_external_file_cf_opts(self.cf(CF_RECORDS), &options, paths)?;
        Ok(())
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            write: WriteBatch::default(),
        }
    }
}

/// Record-index entries written to SST files, not yet in the index.
pub struct RecordsFile(Vec<tempfile::TempPath>);

impl RecordsFile {
    /// Both files' entries, for one ingestion; their key ranges must not overlap.
    pub fn and(mut self, other: RecordsFile) -> Self {
        self.0.extend(other.0);
        self
    }
}

/// A stored JSON value, or [`StoreError::Corrupt`] naming where it is.
pub(crate) fn decode<T: DeserializeOwned>(
    cf: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        cf,
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_commit_and_prefix_scans_stay_in_their_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut batch = store.batch();
        batch.put(CF_META, b"a/1", b"x");
        batch.put(CF_META, b"a/2", b"y");
        batch.put(CF_META, b"b/1", b"z");
        batch.commit().expect("commit");
        let mut found = Vec::new();
        store
            .for_each_prefix(CF_META, b"a/", |k, _| {
                found.push(k.to_vec());
                Ok(())
            })
            .expect("scan");
        assert_eq!(found, vec![b"a/1".to_vec(), b"a/2".to_vec()]);
        assert_eq!(
            store.get(CF_META, b"b/1").expect("get"),
            Some(b"z".to_vec())
        );
        let got = store
            .multi_get(CF_META, [&b"a/2"[..], b"c"], true, |v| {
                v.map(<[u8]>::to_vec)
            })
            .expect("multi");
        assert_eq!(got, vec![Some(b"y".to_vec()), None]);
        drop(store);
        let reopened = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            reopened.get(CF_META, b"a/1").expect("get"),
            Some(b"x".to_vec())
        );
    }
}
