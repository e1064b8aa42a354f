//! A record's identity: the BLAKE3 hash of its canonical encoding, its "DNA".
//!
//! The encoding is defined here, once, so that any implementation can reproduce an id
//! (the cross-check tests do it in Python):
//!
//! ```text
//! "tributary/record/v1" 0x00
//! for each schema field, in schema order, whose value is not null:
//!     u32 LE  byte length of the field name, then the name (UTF-8)
//!     u8      type tag (string 1, int64 2, float64 3, bool 4, timestamp 5, list<string> 6)
//!     value:  string        u32 LE byte length, UTF-8 bytes
//!             int64         8 bytes, two's complement LE
//!             float64       8 bytes, IEEE 754 bits LE (-0.0 written as 0.0; non-finite refused)
//!             bool          1 byte, 0 or 1
//!             timestamp     8 bytes, i64 LE microseconds since the Unix epoch (UTC)
//!             list<string>  u32 LE item count, then each item as a string (a null item is
//!                           refused at ingest)
//! ```
//!
//! Null fields are left out, so a record means the same whichever optional fields it omits.

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::TimestampMicrosecondType;

use super::schema::{DatanetSchema, FieldType};

pub const ENCODING_DOMAIN: &[u8] = b"tributary/record/v1\0";

/// A record id: BLAKE3-256 of the canonical encoding.
pub type RecordId = [u8; 32];

enum Column<'a> {
    Str(&'a StringArray),
    Int(&'a Int64Array),
    Float(&'a Float64Array),
    Bool(&'a BooleanArray),
    Ts(&'a TimestampMicrosecondArray),
    /// The list and its items.
    List((&'a ListArray, &'a StringArray)),
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// The canonical id of every row of `batch`, whose columns follow `schema` (the ingest
/// parsers produce exactly that shape).
pub fn record_ids(schema: &DatanetSchema, batch: &RecordBatch) -> Vec<RecordId> {
    // Each field's name length, name and type tag are the same in every record: one
    // prepared header a field, copied whole.
    let columns: Vec<(Vec<u8>, Column<'_>)> = schema
        .fields
        .iter()
        .zip(batch.columns())
        .map(|(spec, array)| {
            let column = match spec.field_type {
                FieldType::String => Column::Str(array.as_string::<i32>()),
                FieldType::Int64 => Column::Int(array.as_primitive()),
                FieldType::Float64 => Column::Float(array.as_primitive()),
                FieldType::Bool => Column::Bool(array.as_boolean()),
                FieldType::Timestamp => {
                    Column::Ts(array.as_primitive::<TimestampMicrosecondType>())
                }
                FieldType::ListOfStrings => {
                    let list = array.as_list::<i32>();
                    Column::List((list, list.values().as_string::<i32>()))
                }
            };
            let mut header = Vec::with_capacity(spec.name.len() + 5);
            put_str(&mut header, &spec.name);
            header.push(spec.field_type.tag());
            (header, column)
        })
        .collect();

    let encode = |row: usize, buf: &mut Vec<u8>| {
        buf.extend_from_slice(ENCODING_DOMAIN);
        for (header, column) in &columns {
            let present = match column {
                Column::Str(a) => a.is_valid(row),
                Column::Int(a) => a.is_valid(row),
                Column::Float(a) => a.is_valid(row),
                Column::Bool(a) => a.is_valid(row),
                Column::Ts(a) => a.is_valid(row),
                Column::List((a, _)) => a.is_valid(row),
            };
            if !present {
                continue;
            }
            buf.extend_from_slice(header);
            match column {
                Column::Str(a) => put_str(buf, a.value(row)),
                Column::Int(a) => buf.extend_from_slice(&a.value(row).to_le_bytes()),
                Column::Float(a) => {
                    let v = a.value(row);
                    let v = if v == 0.0 { 0.0 } else { v };
                    buf.extend_from_slice(&v.to_bits().to_le_bytes());
                }
                Column::Bool(a) => buf.push(u8::from(a.value(row))),
                Column::Ts(a) => buf.extend_from_slice(&a.value(row).to_le_bytes()),
                Column::List((a, items)) => {
                    // The row's items read in place: `ListArray::value` would build a
                    // sliced array (an allocation and reference counts) for every record.
                    let offsets = a.value_offsets();
                    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                    buf.extend_from_slice(&((end - start) as u32).to_le_bytes());
                    for i in start..end {
                        put_str(buf, items.value(i));
                    }
                }
            }
        }
    };

    // Encodings are hashed a group at a time, several side by side in SIMD lanes; a group
    // of encodings stays in the first-level caches between being written and hashed.
    const GROUP: usize = 32;
    let rows = batch.num_rows();
    let mut ids = vec![[0u8; 32]; rows];
    let mut buf = Vec::with_capacity(GROUP * 512);
    let mut ends = Vec::with_capacity(GROUP);
    for (group, out) in ids.chunks_mut(GROUP).enumerate() {
        buf.clear();
        ends.clear();
        for row in group * GROUP..group * GROUP + out.len() {
            encode(row, &mut buf);
            ends.push(buf.len());
        }
        let mut messages: [&[u8]; GROUP] = [&[]; GROUP];
        let mut start = 0;
        for (message, &end) in messages.iter_mut().zip(&ends) {
            *message = &buf[start..end];
            start = end;
        }
        tributary_blake3::hash_many(&messages[..out.len()], out);
    }
    ids
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::*;
    use crate::datanet::schema::FieldSpec;

    #[test]
    fn ids_follow_the_documented_encoding() {
        let schema = DatanetSchema {
            fields: vec![
                FieldSpec {
                    name: "text".into(),
                    field_type: FieldType::String,
                    required: true,
                    description: None,
                },
                FieldSpec {
                    name: "n".into(),
                    field_type: FieldType::Int64,
                    required: false,
                    description: None,
                },
            ],
            text_field: "text".into(),
        };
        let text: ArrayRef = Arc::new(StringArray::from(vec!["hi", "hi"]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), None]));
        let batch = RecordBatch::try_new(schema.arrow_schema(), vec![text, n]).expect("batch");
        let ids = record_ids(&schema, &batch);

        let mut expected = ENCODING_DOMAIN.to_vec();
        expected.extend_from_slice(&4u32.to_le_bytes());
        expected.extend_from_slice(b"text");
        expected.push(1);
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(b"hi");
        let without_n = *blake3::hash(&expected).as_bytes();
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(b"n");
        expected.push(2);
        expected.extend_from_slice(&7i64.to_le_bytes());
        assert_eq!(ids[0], *blake3::hash(&expected).as_bytes());
        assert_eq!(ids[1], without_n);
    }
}
