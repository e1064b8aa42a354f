//! CSV with a header row naming schema fields. Empty cells are null; `list<string>` cells hold
//! a JSON array; timestamps are RFC 3339 or integer microseconds.

use std::io::Read;

use super::cells::{from_text, Cell, RowBuilder};
use super::{Chunk, ChunkReader, ErrorReport, IngestError, CHUNK_ROWS};
use crate::datanet::schema::DatanetSchema;

pub struct CsvReader {
    reader: csv::Reader<Box<dyn Read + Send>>,
    schema: DatanetSchema,
    /// For each CSV column, the schema field it fills.
    columns: Vec<usize>,
    builder: RowBuilder,
    record: csv::StringRecord,
    done: bool,
}

impl CsvReader {
    pub fn new(input: Box<dyn Read + Send>, schema: &DatanetSchema) -> Result<Self, IngestError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .buffer_capacity(1 << 20)
            .from_reader(input);
        let headers = reader
            .headers()
            .map_err(|e| IngestError::malformed(format!("cannot read the CSV header row: {e}")))?
            .clone();
        let mut columns = Vec::with_capacity(headers.len());
        for (n, name) in headers.iter().enumerate() {
            // Spreadsheet exports often start with a byte-order mark.
            let name = if n == 0 {
                name.trim_start_matches('\u{feff}')
            } else {
                name
            };
            let (i, _) = schema.field(name.trim()).ok_or_else(|| {
                IngestError::malformed(format!(
                    "CSV column {name:?} is not a field of the Datanet's schema"
                ))
            })?;
            if columns.contains(&i) {
                return Err(IngestError::malformed(format!(
                    "CSV column {name:?} appears twice"
                )));
            }
            columns.push(i);
        }
        for spec in schema.fields.iter().filter(|f| f.required) {
            if schema
                .field(&spec.name)
                .is_some_and(|(i, _)| !columns.contains(&i))
            {
                return Err(IngestError::malformed(format!(
                    "CSV has no column for required field {:?}",
                    spec.name
                )));
            }
        }
        Ok(Self {
            reader,
            schema: schema.clone(),
            columns,
            builder: RowBuilder::new(schema, CHUNK_ROWS),
            record: csv::StringRecord::new(),
            done: false,
        })
    }

    fn parse_record(&mut self, report: &mut ErrorReport) {
        let row = self.record.position().map_or(0, |p| p.line());
        if self.record.len() != self.columns.len() {
            report.push(
                row,
                None,
                format!(
                    "expected {} cells, found {}",
                    self.columns.len(),
                    self.record.len()
                ),
            );
            return;
        }
        let mut cells: Vec<Cell<'_>> = vec![Cell::Null; self.schema.fields.len()];
        let mut ok = true;
        for (text, &i) in self.record.iter().zip(&self.columns) {
            let spec = &self.schema.fields[i];
            match from_text(text, spec.field_type) {
                Ok(cell) => cells[i] = cell,
                Err(message) => {
                    report.push(row, Some(&spec.name), message);
                    ok = false;
                }
            }
        }
        self.builder
            .finish_row(row, &cells, ok, report, "required field is empty");
    }
}

impl ChunkReader for CsvReader {
    fn next_chunk(&mut self, report: &mut ErrorReport) -> Result<Option<Chunk>, IngestError> {
        while !self.done && self.builder.len() < CHUNK_ROWS {
            let mut record = std::mem::take(&mut self.record);
            match self.reader.read_record(&mut record) {
                Ok(true) => {
                    self.record = record;
                    self.parse_record(report);
                }
                Ok(false) => {
                    self.record = record;
                    self.done = true;
                }
                Err(e) => {
                    self.record = record;
                    match e.kind() {
                        csv::ErrorKind::Io(_) => {
                            return Err(IngestError::malformed(format!("reading CSV: {e}")))
                        }
                        _ => {
                            let row = e.position().map_or(0, |p| p.line());
                            report.push(row, None, format!("malformed CSV row: {e}"));
                        }
                    }
                }
            }
        }
        if self.builder.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.builder.finish()))
    }
}
