//! Row-at-a-time values and the column builders they go into (the JSONL and CSV paths).

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;

use super::{Chunk, ErrorReport};
use crate::datanet::schema::{DatanetSchema, FieldType, TIMEZONE};

/// One parsed value, already of its field's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Timestamp(i64),
    List(Vec<Cow<'a, str>>),
}

pub fn finite(v: f64) -> Result<Cell<'static>, String> {
    if v.is_finite() {
        Ok(Cell::Float(v))
    } else {
        Err(format!("{v} is not a finite number"))
    }
}

/// Parses RFC 3339 text into microseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Result<Cell<'static>, String> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| Cell::Timestamp(t.timestamp_micros()))
        .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp ({e})"))
}

/// Converts text (a CSV cell) to a field's type. An empty cell is null.
pub fn from_text<'a>(s: &'a str, ty: FieldType) -> Result<Cell<'a>, String> {
    if s.is_empty() {
        return Ok(Cell::Null);
    }
    match ty {
        FieldType::String => Ok(Cell::Str(Cow::Borrowed(s))),
        FieldType::Int64 => s
            .trim()
            .parse::<i64>()
            .map(Cell::Int)
            .map_err(|_| format!("{s:?} is not a 64-bit integer")),
        FieldType::Float64 => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number"))
            .and_then(finite),
        FieldType::Bool => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Cell::Bool(true)),
            "false" | "0" => Ok(Cell::Bool(false)),
            _ => Err(format!("{s:?} is not a boolean (true, false, 1 or 0)")),
        },
        FieldType::Timestamp => match s.trim().parse::<i64>() {
            Ok(micros) => Ok(Cell::Timestamp(micros)),
            Err(_) => parse_timestamp(s),
        },
        FieldType::ListOfStrings => serde_json::from_str::<Vec<String>>(s)
            .map(|items| Cell::List(items.into_iter().map(Cow::Owned).collect()))
            .map_err(|_| format!("{s:?} is not a JSON array of strings")),
    }
}

enum ColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    List(ListBuilder<StringBuilder>),
}

impl ColumnBuilder {
    fn new(ty: FieldType, capacity: usize) -> Self {
        match ty {
            FieldType::String => Self::Str(StringBuilder::with_capacity(capacity, capacity * 64)),
            FieldType::Int64 => Self::Int(Int64Builder::with_capacity(capacity)),
            FieldType::Float64 => Self::Float(Float64Builder::with_capacity(capacity)),
            FieldType::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            FieldType::Timestamp => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(TIMEZONE),
            ),
            FieldType::ListOfStrings => Self::List(ListBuilder::new(StringBuilder::new())),
        }
    }

    /// Appends a cell already checked against this column's type; a mismatch is a bug in
    /// the caller's coercion, and is stored as null rather than panicking.
    fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (Self::Str(b), Cell::Str(s)) => b.append_value(s),
            (Self::Int(b), Cell::Int(v)) => b.append_value(*v),
            (Self::Float(b), Cell::Float(v)) => b.append_value(*v),
            (Self::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Self::Timestamp(b), Cell::Timestamp(v)) => b.append_value(*v),
            (Self::List(b), Cell::List(items)) => {
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            (Self::Str(b), _) => b.append_null(),
            (Self::Int(b), _) => b.append_null(),
            (Self::Float(b), _) => b.append_null(),
            (Self::Bool(b), _) => b.append_null(),
            (Self::Timestamp(b), _) => b.append_null(),
            (Self::List(b), _) => b.append(false),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::List(b) => Arc::new(b.finish()),
        }
    }
}

/// Collects whole, valid rows into Arrow columns.
pub struct RowBuilder {
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    rows: Vec<u64>,
    capacity: usize,
    types: Vec<FieldType>,
    /// For each field, its name if it is required.
    required: Vec<Option<String>>,
}

impl RowBuilder {
    pub fn new(schema: &DatanetSchema, capacity: usize) -> Self {
        let types: Vec<FieldType> = schema.fields.iter().map(|f| f.field_type).collect();
        Self {
            schema: schema.arrow_schema(),
            columns: types
                .iter()
                .map(|t| ColumnBuilder::new(*t, capacity))
                .collect(),
            rows: Vec::with_capacity(capacity),
            capacity,
            types,
            required: schema
                .fields
                .iter()
                .map(|f| f.required.then(|| f.name.clone()))
                .collect(),
        }
    }

    /// Ends a parsed row: reports each required field left null (as `missing`), and keeps the
    /// row only if it had no problem at all (`ok` says whether parsing found none).
    pub fn finish_row(
        &mut self,
        row: u64,
        cells: &[Cell<'_>],
        mut ok: bool,
        report: &mut ErrorReport,
        missing: &str,
    ) {
        for (required, cell) in self.required.iter().zip(cells) {
            if let (Some(name), Cell::Null) = (required, cell) {
                report.push(row, Some(name), missing);
                ok = false;
            }
        }
        if ok {
            self.push(row, cells);
        }
    }

    /// Appends one row: `cells[i]` is the value of schema field `i`.
    pub fn push(&mut self, row: u64, cells: &[Cell<'_>]) {
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            column.append(cell);
        }
        self.rows.push(row);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Takes the rows so far as a chunk and starts afresh.
    pub fn finish(&mut self) -> Chunk {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.columns = self
            .types
            .iter()
            .map(|t| ColumnBuilder::new(*t, self.capacity))
            .collect();
        let rows = std::mem::replace(&mut self.rows, Vec::with_capacity(self.capacity));
        // Every column got one value per pushed row, and required columns only non-null
        // values, so the batch matches its schema.
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .unwrap_or_else(|e| panic!("row builder produced an inconsistent batch: {e}"));
        Chunk { batch, rows }
    }
}
