//! Where an index's records come from: a version's Parquet export (text, `_record_id`,
//! `_contributor`), or a JSONL file of objects with a text field (record ids and
//! contributors taken from `_record_id` and `_contributor` when present; otherwise each
//! line's id is the BLAKE3 of its line number and text, and its contributor the zero address).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::index::Document;
use super::AttributionError;
use crate::datanet::parse_hex32;
use crate::datanet::schema::{COL_CONTRIBUTOR, COL_RECORD_ID};
use crate::identity::Address;

/// A stream of documents and how many there are, if known.
pub struct Corpus {
    pub documents: Box<dyn Iterator<Item = Result<Document, AttributionError>> + Send>,
    pub total: Option<u64>,
}

fn corpus_error(path: &Path, message: impl std::fmt::Display) -> AttributionError {
    AttributionError::Corpus(format!("{}: {message}", path.display()))
}

/// The rows of a Parquet file with `text_field` and the system columns.
pub fn parquet(path: &Path, text_field: &str) -> Result<Corpus, AttributionError> {
    let file = File::open(path).map_err(|e| corpus_error(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| corpus_error(path, e))?;
    let total = builder.metadata().file_metadata().num_rows() as u64;
    let reader = builder
        .with_batch_size(8192)
        .build()
        .map_err(|e| corpus_error(path, e))?;
    let owned = path.to_path_buf();
    let text_field = text_field.to_string();
    let documents = reader.flat_map(move |batch| {
        let rows: Vec<Result<Document, AttributionError>> = match batch {
            Err(e) => vec![Err(corpus_error(&owned, e))],
            Ok(batch) => match batch_documents(&batch, &text_field) {
                Ok(docs) => docs.into_iter().map(Ok).collect(),
                Err(message) => vec![Err(corpus_error(&owned, message))],
            },
        };
        rows
    });
    Ok(Corpus {
        documents: Box::new(documents),
        total: Some(total),
    })
}

fn batch_documents(batch: &RecordBatch, text_field: &str) -> Result<Vec<Document>, String> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name:?}"))?
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("column {name:?} is not a string column"))
    };
    let (text, ids, contributors) = (
        column(text_field)?,
        column(COL_RECORD_ID)?,
        column(COL_CONTRIBUTOR)?,
    );
    (0..batch.num_rows())
        .map(|row| {
            let id = parse_hex32(ids.value(row))
                .ok_or_else(|| format!("row {row}: {COL_RECORD_ID} is not 32-byte hex"))?;
            let contributor: Address = contributors
                .value(row)
                .parse()
                .map_err(|e| format!("row {row}: {COL_CONTRIBUTOR}: {e}"))?;
            Ok(Document {
                text: if text.is_null(row) {
                    String::new()
                } else {
                    text.value(row).to_string()
                },
                record_id: id,
                contributor,
            })
        })
        .collect()
}

/// The lines of a JSONL file.
pub fn jsonl(path: &Path, text_field: &str) -> Result<Corpus, AttributionError> {
    let file = File::open(path).map_err(|e| corpus_error(path, e))?;
    let owned = path.to_path_buf();
    let text_field = text_field.to_string();
    let documents = BufReader::with_capacity(1 << 20, file)
        .lines()
        .enumerate()
        .filter(|(_, line)| !matches!(line, Ok(l) if l.trim().is_empty()))
        .map(move |(i, line)| {
            let at = |m: String| corpus_error(&owned, format!("line {}: {m}", i + 1));
            let line = line.map_err(|e| at(e.to_string()))?;
            let value: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
            let text = value
                .get(&text_field)
                .and_then(|t| t.as_str())
                .ok_or_else(|| at(format!("no string field {text_field:?}")))?
                .to_string();
            let record_id = match value.get(COL_RECORD_ID).and_then(|v| v.as_str()) {
                Some(hex) => parse_hex32(hex)
                    .ok_or_else(|| at(format!("{COL_RECORD_ID} is not 32-byte hex")))?,
                None => {
                    let mut h = blake3::Hasher::new();
                    h.update(&(i as u64).to_le_bytes());
                    h.update(text.as_bytes());
                    *h.finalize().as_bytes()
                }
            };
            let contributor = match value.get(COL_CONTRIBUTOR).and_then(|v| v.as_str()) {
                Some(a) => a
                    .parse()
                    .map_err(|e| at(format!("{COL_CONTRIBUTOR}: {e}")))?,
                None => Address([0; 20]),
            };
            Ok(Document {
                text,
                record_id,
                contributor,
            })
        });
    Ok(Corpus {
        documents: Box::new(documents),
        total: None,
    })
}
