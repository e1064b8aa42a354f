//! Versions: immutable manifests of approved segments with deletion vectors, their Merkle
//! roots and inclusion proofs, and their Parquet export.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringBuilder};
use arrow::compute::filter_record_batch;
use chrono::Utc;
use parquet::arrow::ArrowWriter;

use super::schema::COL_RECORD_ID;
use super::segment::{self, SegmentError};
use super::service::{
    datanet_key, invalid, parse_record_id, record_id_hex, DatanetError, Datanets,
};
use super::{hex32, Batch, BatchStatus, InclusionProof, RecordLocation, Version, VersionSegment};
use crate::merkle::{self, MerkleTree, StoredTree};
use crate::store::{CF_CATALOG, CF_RECORDS, CF_WITHDRAWALS};

pub(crate) fn version_key(id: &str, version: u32) -> String {
    format!("version/{id}/{version:010}")
}

impl Datanets {
    /// Publishes a version of every approved batch, minus withdrawn records.
    pub fn publish(&self, id: &str) -> Result<Version, DatanetError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut datanet = self.get(id)?;
        let approved: Vec<Batch> = self
            .batches(id, Some(BatchStatus::Approved))?
            .into_iter()
            .filter(|b| b.segment.is_some())
            .collect();
        let approved_ids: HashSet<u64> = approved.iter().map(|b| b.id).collect();

        let prefix = format!("{id}\0");
        // Withdrawals are keyed like the index and hold the record's location.
        let mut withdrawn: HashSet<(u64, u32)> = HashSet::new();
        self.store
            .for_each_prefix(CF_WITHDRAWALS, prefix.as_bytes(), |_, value| {
                if let Some(location) = RecordLocation::decode(value) {
                    withdrawn.insert((location.batch, location.row));
                }
                Ok(())
            })?;
        let mut ids = Vec::new();
        self.index_ready(id)?;
        self.store
            .for_each_prefix(CF_RECORDS, prefix.as_bytes(), |key, value| {
                let Some(location) = RecordLocation::decode(value) else {
                    return Ok(());
                };
                if approved_ids.contains(&location.batch)
                    && !withdrawn.contains(&(location.batch, location.row))
                {
                    let mut record = [0u8; 32];
                    record.copy_from_slice(&key[prefix.len()..]);
                    ids.push(record);
                }
                Ok(())
            })?;
        let tree = MerkleTree::from_leaves(merkle::leaves_bytes32(&ids));
        let version_number = datanet.versions + 1;
        // The whole node array is kept, so a proof reads a few nodes instead of rebuilding.
        let tree_rel = format!("versions/{id}/{version_number:010}.tree");
        segment::write_durably(
            &self.dirs.tmp,
            &self.dirs.root.join(&tree_rel),
            &tree.to_bytes(),
        )?;

        let mut deleted: HashMap<u64, Vec<u32>> = HashMap::new();
        for (batch, row) in withdrawn {
            deleted.entry(batch).or_default().push(row);
        }
        let segments = approved
            .iter()
            .map(|b| {
                let mut rows = deleted.remove(&b.id).unwrap_or_default();
                rows.sort_unstable();
                VersionSegment {
                    batch: b.id,
                    file: b.segment.clone().unwrap_or_default(),
                    rows: b.accepted,
                    deleted: rows,
                }
            })
            .collect();
        let version = Version {
            datanet: id.to_string(),
            version: version_number,
            created_at: Utc::now(),
            records: tree.len() as u64,
            merkle_root: hex32(&tree.root()),
            schema: datanet.spec.schema.clone(),
            license: datanet.spec.license.clone(),
            segments,
            tree: tree_rel,
        };
        datanet.versions = version_number;
        let mut write = self.store.batch();
        write.put_json(CF_CATALOG, version_key(id, version_number), &version)?;
        write.put_json(CF_CATALOG, datanet_key(id), &datanet)?;
        write.commit()?;
        Ok(version)
    }

    pub fn version(&self, id: &str, version: u32) -> Result<Version, DatanetError> {
        self.store
            .get_json(CF_CATALOG, version_key(id, version).as_bytes())?
            .ok_or_else(|| DatanetError::VersionNotFound {
                datanet: id.to_string(),
                version,
            })
    }

    pub fn versions(&self, id: &str) -> Result<Vec<Version>, DatanetError> {
        Ok(self
            .store
            .scan_prefix_json(CF_CATALOG, format!("version/{id}/").as_bytes())?)
    }

    /// The inclusion proof of a record in a version.
    pub fn proof(
        &self,
        id: &str,
        version: u32,
        record: &str,
    ) -> Result<InclusionProof, DatanetError> {
        let record_id = parse_record_id(record, "record_id")?;
        let manifest = self.version(id, version)?;
        let tree = StoredTree::open(fs::File::open(self.dirs.root.join(&manifest.tree))?)?;
        let leaf = merkle::leaf_bytes32(&record_id);
        let proof = tree
            .proof(&leaf)?
            .ok_or_else(|| DatanetError::RecordNotInVersion {
                record: record_id_hex(&record_id),
                version,
            })?;
        Ok(InclusionProof {
            datanet: id.to_string(),
            version,
            record_id: record_id_hex(&record_id),
            leaf: hex32(&leaf),
            proof: proof.iter().map(hex32).collect(),
            root: hex32(&tree.root()?),
        })
    }

    /// The Parquet export of a version: its segments' rows minus its deletion vectors, with
    /// the system columns. Versions are immutable, so the file is built once and kept.
    pub fn export(&self, id: &str, version: u32) -> Result<PathBuf, DatanetError> {
        let manifest = self.version(id, version)?;
        let path = self
            .dirs
            .exports
            .join(id)
            .join(format!("{version:010}.parquet"));
        if path.exists() {
            return Ok(path);
        }
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if path.exists() {
            return Ok(path);
        }
        let schema = manifest.schema.export_schema();
        let record_id_column = schema
            .index_of(COL_RECORD_ID)
            .map_err(|e| invalid("schema", e.to_string()))?;
        let tmp = tempfile::NamedTempFile::new_in(&self.dirs.tmp)?;
        let (file, tmp_path) = tmp.keep().map_err(|e| e.error)?;
        let result = (|| -> Result<(), DatanetError> {
            let mut writer = ArrowWriter::try_new(
                std::io::BufWriter::with_capacity(1 << 20, file),
                schema.clone(),
                Some(segment::writer_properties(&manifest.schema.text_field)),
            )
            .map_err(|e| SegmentError::Format {
                path: tmp_path.display().to_string(),
                message: e.to_string(),
            })?;
            for seg in &manifest.segments {
                let mut row = 0usize;
                let mut deleted = seg.deleted.iter().peekable();
                for batch in segment::read(&self.dirs.root.join(&seg.file), None)? {
                    let batch = batch?;
                    let n = batch.num_rows();
                    let keep: Vec<bool> = (row..row + n)
                        .map(|r| {
                            if deleted.peek().is_some_and(|&&d| d as usize == r) {
                                deleted.next();
                                false
                            } else {
                                true
                            }
                        })
                        .collect();
                    row += n;
                    let batch = if keep.iter().all(|k| *k) {
                        batch
                    } else {
                        filter_record_batch(&batch, &BooleanArray::from(keep))
                            .map_err(|e| invalid("segments", e.to_string()))?
                    };
                    let mut columns = batch.columns().to_vec();
                    columns[record_id_column] = hex_record_ids(&columns[record_id_column]);
                    let batch = RecordBatch::try_new(schema.clone(), columns)
                        .map_err(|e| invalid("segments", e.to_string()))?;
                    writer.write(&batch).map_err(|e| SegmentError::Format {
                        path: tmp_path.display().to_string(),
                        message: e.to_string(),
                    })?;
                }
            }
            let buffered = writer.into_inner().map_err(|e| SegmentError::Format {
                path: tmp_path.display().to_string(),
                message: e.to_string(),
            })?;
            let file = buffered.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
        segment::persist_file(&tmp_path, &path)?;
        Ok(path)
    }
}

/// A segment's `_record_id` as the hex an export carries; segments written before ids were
/// stored as bytes already hold hex, and pass through.
fn hex_record_ids(column: &ArrayRef) -> ArrayRef {
    let Some(binary) = column.as_fixed_size_binary_opt() else {
        return column.clone();
    };
    let mut hex = StringBuilder::with_capacity(binary.len(), binary.len() * 64);
    let mut digits = [0u8; 64];
    for value in binary.iter() {
        match value {
            Some(id) if hex::encode_to_slice(id, &mut digits).is_ok() => {
                // Hex digits are ASCII.
                hex.append_value(std::str::from_utf8(&digits).unwrap_or_default());
            }
            _ => hex.append_null(),
        }
    }
    Arc::new(hex.finish())
}
