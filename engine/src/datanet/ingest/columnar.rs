//! Parquet and Arrow IPC: columns matched to schema fields by name and cast to their types.
//! A value that cannot be cast, a null in a required field, a non-finite float or a null list
//! item makes its row bad; the rest of the batch goes on.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast_with_options, filter_record_batch, CastOptions};
use arrow::datatypes::Float64Type;
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Chunk, ChunkReader, ErrorReport, IngestError, InputFormat, CHUNK_ROWS};
use crate::datanet::schema::{DatanetSchema, FieldType};

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

pub fn open(
    format: InputFormat,
    mut file: File,
    schema: &DatanetSchema,
) -> Result<Box<dyn ChunkReader>, IngestError> {
    let batches: Batches = match format {
        InputFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| IngestError::malformed(format!("not a readable Parquet file: {e}")))?;
            let reader = builder
                .with_batch_size(CHUNK_ROWS)
                .build()
                .map_err(|e| IngestError::malformed(format!("cannot read Parquet: {e}")))?;
            Box::new(reader)
        }
        _ => {
            let mut magic = [0u8; 6];
            let is_file = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
            file.seek(SeekFrom::Start(0))?;
            if is_file {
                let reader = FileReader::try_new(file, None).map_err(|e| {
                    IngestError::malformed(format!("not a readable Arrow IPC file: {e}"))
                })?;
                Box::new(reader)
            } else {
                let reader = StreamReader::try_new(file, None).map_err(|e| {
                    IngestError::malformed(format!("not a readable Arrow IPC stream: {e}"))
                })?;
                Box::new(reader)
            }
        }
    };
    Ok(Box::new(ColumnarReader {
        batches,
        schema: schema.clone(),
        next_row: 1,
    }))
}

struct ColumnarReader {
    batches: Batches,
    schema: DatanetSchema,
    next_row: u64,
}

impl ColumnarReader {
    fn conform(&self, batch: &RecordBatch, report: &mut ErrorReport) -> Result<Chunk, IngestError> {
        let first_row = self.next_row;
        let n = batch.num_rows();
        for field in batch.schema().fields() {
            if self.schema.field(field.name()).is_none() {
                return Err(IngestError::malformed(format!(
                    "column {:?} is not a field of the Datanet's schema",
                    field.name()
                )));
            }
        }
        let mut good = vec![true; n];
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields.len());
        let options = CastOptions {
            safe: true,
            ..Default::default()
        };
        for spec in &self.schema.fields {
            let target = spec.field_type.arrow_type();
            let Some(source) = batch.column_by_name(&spec.name) else {
                if spec.required {
                    return Err(IngestError::malformed(format!(
                        "there is no column for required field {:?}",
                        spec.name
                    )));
                }
                columns.push(arrow::array::new_null_array(&target, n));
                continue;
            };
            let cast = cast_with_options(source, &target, &options).map_err(|e| {
                IngestError::malformed(format!(
                    "column {:?} of type {} cannot become {}: {e}",
                    spec.name,
                    source.data_type(),
                    spec.field_type.name()
                ))
            })?;
            for (row, ok) in good.iter_mut().enumerate() {
                let line = first_row + row as u64;
                let problem = if cast.is_null(row) {
                    if source.is_valid(row) {
                        Some(format!(
                            "value cannot be read as {}",
                            spec.field_type.name()
                        ))
                    } else if spec.required {
                        Some("required field is null".to_string())
                    } else {
                        None
                    }
                } else {
                    value_problem(&cast, spec.field_type, row)
                };
                if let Some(message) = problem {
                    report.push(line, Some(&spec.name), message);
                    *ok = false;
                }
            }
            columns.push(cast);
        }
        let rows: Vec<u64> = (0..n)
            .filter(|&i| good[i])
            .map(|i| first_row + i as u64)
            .collect();
        let arrow_schema = self.schema.arrow_schema();
        // Build without nullability checks first: bad rows may hold nulls in required
        // columns until they are filtered out.
        let relaxed = arrow::datatypes::Schema::new(
            arrow_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        );
        let all = RecordBatch::try_new(relaxed.into(), columns)
            .map_err(|e| IngestError::malformed(e.to_string()))?;
        let kept = filter_record_batch(&all, &BooleanArray::from(good))
            .map_err(|e| IngestError::malformed(e.to_string()))?;
        let batch = RecordBatch::try_new(arrow_schema, kept.columns().to_vec())
            .map_err(|e| IngestError::malformed(e.to_string()))?;
        Ok(Chunk { batch, rows })
    }
}

fn value_problem(array: &ArrayRef, ty: FieldType, row: usize) -> Option<String> {
    match ty {
        FieldType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            (!v.is_finite()).then(|| format!("{v} is not a finite number"))
        }
        FieldType::ListOfStrings => {
            let items = array.as_list::<i32>().value(row);
            (items.null_count() > 0).then(|| "list items must not be null".to_string())
        }
        _ => None,
    }
}

impl ChunkReader for ColumnarReader {
    fn next_chunk(&mut self, report: &mut ErrorReport) -> Result<Option<Chunk>, IngestError> {
        while let Some(batch) = self.batches.next() {
            let batch = batch.map_err(|e| IngestError::malformed(format!("reading rows: {e}")))?;
            let chunk = self.conform(&batch, report)?;
            self.next_row += batch.num_rows() as u64;
            if chunk.batch.num_rows() > 0 {
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }
}
