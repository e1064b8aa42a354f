//! Reading a contribution into Arrow: JSONL, CSV, Parquet and Arrow IPC in, record batches in
//! the Datanet's schema out, with every bad row named in a report.
//!
//! Every format yields the same thing: [`Chunk`]s of at most [`CHUNK_ROWS`] valid rows whose
//! columns are exactly the curator's schema, and an [`ErrorReport`] of the rows left out (row
//! numbers are 1-based lines for JSONL and CSV, 1-based rows for Parquet and Arrow). The CLI
//! runs the same readers to compute the record ids it signs, so both sides agree on them.

mod cells;
mod columnar;
mod csv_input;
mod flat_json;
mod jsonl;

use std::fs::File;
use std::io::Read;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::schema::DatanetSchema;

pub use cells::{Cell, RowBuilder};

/// Rows per chunk: large enough to amortise per-batch work, small enough to bound memory.
pub const CHUNK_ROWS: usize = 8192;
/// How many row problems a report lists; the total is always counted.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// The formats a contribution can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Jsonl,
    Csv,
    Parquet,
    /// Arrow IPC, file or stream format (told apart by the file's magic bytes).
    Arrow,
}

impl InputFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            "parquet" | "pq" => Some(Self::Parquet),
            "arrow" | "ipc" | "feather" | "arrows" => Some(Self::Arrow),
            _ => None,
        }
    }

    /// The name `parse` and the `format` query parameter take.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
            Self::Arrow => "arrow",
        }
    }

    /// The format a media type names, for uploads that say it in `Content-Type`.
    pub fn from_media_type(media: &str) -> Option<Self> {
        let essence = media
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson" | "application/jsonl" | "application/json-lines" => {
                Some(Self::Jsonl)
            }
            "text/csv" => Some(Self::Csv),
            "application/vnd.apache.parquet" | "application/x-parquet" => Some(Self::Parquet),
            "application/vnd.apache.arrow.file" | "application/vnd.apache.arrow.stream" => {
                Some(Self::Arrow)
            }
            _ => None,
        }
    }

    /// The format a file's extension names.
    pub fn from_path(path: &std::path::Path) -> Option<Self> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Self::parse)
    }

    /// Columnar formats need random access, so an upload in them is spooled to disk first.
    pub fn needs_seek(self) -> bool {
        matches!(self, Self::Parquet | Self::Arrow)
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Self::Jsonl => "application/x-ndjson",
            Self::Csv => "text/csv",
            Self::Parquet => "application/vnd.apache.parquet",
            Self::Arrow => "application/vnd.apache.arrow.file",
        }
    }
}

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RowError {
    /// 1-based line (JSONL, CSV) or row (Parquet, Arrow) in the uploaded file.
    pub row: u64,
    /// The field at fault, when the problem is with one field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "row {}, field {field}: {}", self.row, self.message),
            None => write!(f, "row {}: {}", self.row, self.message),
        }
    }
}

/// The rows left out of a contribution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorReport {
    /// Every bad row counted, reported or not.
    pub total: u64,
    /// The first [`MAX_REPORTED_ERRORS`] problems.
    pub errors: Vec<RowError>,
}

impl ErrorReport {
    pub fn push(&mut self, row: u64, field: Option<&str>, message: impl Into<String>) {
        self.total += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(RowError {
                row,
                field: field.map(str::to_string),
                message: message.into(),
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Adds another report's problems, keeping the listed ones in row order.
    pub fn merge(&mut self, other: ErrorReport) {
        self.total += other.total;
        self.errors.extend(other.errors);
        self.errors.sort_by_key(|e| e.row);
        self.errors.truncate(MAX_REPORTED_ERRORS);
    }
}

/// Valid rows in the curator's schema, with the source row number of each.
#[derive(Debug)]
pub struct Chunk {
    pub batch: RecordBatch,
    pub rows: Vec<u64>,
}

/// A problem with the upload as a whole (not one row): unreadable, or not the format it claims.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("reading the upload failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Malformed(String),
}

impl IngestError {
    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::Malformed(message.into())
    }
}

/// Something that yields chunks of valid rows.
pub trait ChunkReader: Send {
    fn next_chunk(&mut self, report: &mut ErrorReport) -> Result<Option<Chunk>, IngestError>;
}

/// Opens a reader over a byte stream (JSONL, CSV) or a file (every format).
pub enum Input {
    Stream(Box<dyn Read + Send>),
    File(File),
}

pub fn open(
    format: InputFormat,
    input: Input,
    schema: &DatanetSchema,
) -> Result<Box<dyn ChunkReader>, IngestError> {
    let stream = |input: Input| -> Box<dyn Read + Send> {
        match input {
            Input::Stream(r) => r,
            Input::File(f) => Box::new(f),
        }
    };
    Ok(match format {
        InputFormat::Jsonl => Box::new(jsonl::JsonlReader::new(stream(input), schema)),
        InputFormat::Csv => Box::new(csv_input::CsvReader::new(stream(input), schema)?),
        InputFormat::Parquet | InputFormat::Arrow => {
            let Input::File(file) = input else {
                return Err(IngestError::malformed(
                    "Parquet and Arrow input must be spooled to a file before reading",
                ));
            };
            columnar::open(format, file, schema)?
        }
    })
}
