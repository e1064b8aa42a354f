//! The buffers of 0.1.2's `packed-validation` (layout in `wit/0.1.2/packed-validation.wit`),
//! host side: Arrow chunks packed into one buffer, and packed verdicts read back and checked.

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

use crate::datanet::schema::{DatanetSchema, FieldType};
use crate::datanet::validate::{FieldValue, Rewrite, Validation};

const HEADER: usize = 8;
const DIRECTORY_ENTRY: usize = 12;

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u32).to_le_bytes());
}

/// `offsets` rebased to start at 0, as little-endian u32s.
fn put_offsets(out: &mut Vec<u8>, offsets: &OffsetBuffer<i32>) {
    let first = offsets[0];
    if first == 0 && cfg!(target_endian = "little") {
        // Arrow's offsets are non-negative i32s in the host's order: already the layout's
        // bytes, copied whole.
        out.extend_from_slice(offsets.inner().inner().as_slice());
    } else {
        out.extend(
            offsets
                .iter()
                .flat_map(|o| ((o - first) as u32).to_le_bytes()),
        );
    }
}

/// The offsets of `array`'s values rebased to start at 0, then their bytes.
fn put_strings(out: &mut Vec<u8>, array: &StringArray) {
    let offsets = array.offsets();
    let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
    put_offsets(out, offsets);
    out.extend_from_slice(&array.value_data()[first..last]);
}

/// Packs `batch`, whose columns follow `schema`'s fields, into `out` (cleared first, so a
/// caller can reuse one buffer for every call).
pub fn pack_batch(schema: &DatanetSchema, batch: &RecordBatch, out: &mut Vec<u8>) {
    let rows = batch.num_rows();
    let count = schema.fields.len().min(batch.num_columns());
    out.clear();
    put_u32(out, rows);
    put_u32(out, count);
    out.resize(HEADER + DIRECTORY_ENTRY * count, 0);
    for (c, (field, array)) in schema.fields.iter().zip(batch.columns()).enumerate() {
        let start = out.len();
        let nulls = array.logical_nulls().filter(|n| n.null_count() > 0);
        if let Some(nulls) = &nulls {
            out.extend(nulls.iter().map(u8::from));
        }
        match field.field_type {
            FieldType::String => put_strings(out, array.as_string::<i32>()),
            FieldType::Int64 => {
                for v in array.as_primitive::<Int64Type>().values() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            FieldType::Timestamp => {
                for v in array.as_primitive::<TimestampMicrosecondType>().values() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            FieldType::Float64 => {
                for v in array.as_primitive::<Float64Type>().values() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            FieldType::Bool => out.extend(array.as_boolean().values().iter().map(u8::from)),
            FieldType::ListOfStrings => {
                let list = array.as_list::<i32>();
                let offsets = list.offsets();
                let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
                put_offsets(out, offsets);
                let items = list.values().slice(first, last - first);
                put_strings(out, items.as_string::<i32>());
            }
        }
        let len = out.len() - start;
        let entry = HEADER + DIRECTORY_ENTRY * c;
        out[entry] = field.field_type.tag();
        out[entry + 1] = u8::from(nulls.is_some());
        out[entry + 4..entry + 8].copy_from_slice(&(start as u32).to_le_bytes());
        out[entry + 8..entry + 12].copy_from_slice(&(len as u32).to_le_bytes());
    }
}

/// Reads a verdict buffer front to back; every read names where it failed.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "the verdicts end at byte {} where {what} ({n} bytes) should be",
                self.bytes.len()
            ));
        };
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self, what: &str) -> Result<usize, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self, what: &str) -> Result<[u8; 8], String> {
        let b = self.take(8, what)?;
        Ok([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let at = self.at;
        let len = self.u32(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} at byte {at} is not UTF-8"))
    }

    fn value(&mut self) -> Result<FieldValue, String> {
        let at = self.at;
        Ok(match self.take(1, "a rewritten value's kind")?[0] {
            0 => FieldValue::Null,
            1 => FieldValue::String(self.string("a rewritten string")?),
            2 => FieldValue::Int64(i64::from_le_bytes(self.u64("a rewritten int64")?)),
            3 => FieldValue::Float64(f64::from_le_bytes(self.u64("a rewritten float64")?)),
            4 => FieldValue::Bool(self.take(1, "a rewritten bool")?[0] != 0),
            5 => FieldValue::Timestamp(i64::from_le_bytes(self.u64("a rewritten timestamp")?)),
            6 => {
                let n = self.u32("a rewritten list's length")?;
                // Each item takes at least its four length bytes.
                if n > (self.bytes.len() - self.at) / 4 {
                    return Err(format!("a rewritten list at byte {at} claims {n} items"));
                }
                let items = (0..n)
                    .map(|_| self.string("a rewritten list item"))
                    .collect::<Result<_, _>>()?;
                FieldValue::StringList(items)
            }
            other => return Err(format!("unknown value kind {other} at byte {at}")),
        })
    }
}

/// Reads and checks packed verdicts for a batch of `rows` rows of `fields` fields: a
/// quality for each row (in 0..=1 unless the row is rejected), rejections and rewrites of
/// rows and fields that exist, nothing after the end. Counts are checked before anything is
/// built from them, so an answer cannot make the host allocate much more than its size.
pub fn unpack_verdicts(bytes: &[u8], rows: usize, fields: usize) -> Result<Validation, String> {
    let mut r = Reader { bytes, at: 0 };
    let answered = r.u32("the row count")?;
    if answered != rows {
        return Err(format!("answered {answered} qualities for {rows} rows"));
    }
    let qualities = r
        .take(8 * rows, "the qualities")?
        .chunks_exact(8)
        .map(|q| f64::from_le_bytes([q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]]));
    let count = r.u32("the rejection count")?;
    if count > rows {
        return Err(format!("{count} rejections for {rows} rows"));
    }
    let mut rejections = Vec::with_capacity(count);
    for _ in 0..count {
        let row = r.u32("a rejected row")?;
        rejections.push((row, r.string("a rejection's reason")?));
    }
    let verdicts = super::validator::verdicts(qualities, rows, rejections)?;
    let count = r.u32("the rewrite count")?;
    if count > rows.saturating_mul(fields) {
        return Err(format!(
            "{count} rewrites for {rows} rows of {fields} fields"
        ));
    }
    let mut rewrites = Vec::with_capacity(count);
    for _ in 0..count {
        let row = r.u32("a rewritten row")?;
        let field = r.u32("a rewritten field")?;
        super::validator::check_rewrite(row, field, rows, fields)?;
        let value = r.value()?;
        rewrites.push(Rewrite { row, field, value });
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes follow the verdicts", bytes.len() - r.at));
    }
    Ok(Validation { verdicts, rewrites })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, ListBuilder, StringBuilder,
        TimestampMicrosecondArray,
    };

    use super::*;
    use crate::datanet::schema::FieldSpec;
    use crate::datanet::validate::Verdict;

    fn u32_at(b: &[u8], at: usize) -> usize {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
    }

    #[test]
    fn a_batch_packs_in_the_documented_layout() {
        let field = |name: &str, t: FieldType| FieldSpec {
            name: name.into(),
            field_type: t,
            required: false,
            description: None,
        };
        let schema = DatanetSchema {
            fields: vec![
                field("text", FieldType::String),
                field("n", FieldType::Int64),
                field("x", FieldType::Float64),
                field("ok", FieldType::Bool),
                field("at", FieldType::Timestamp),
                field("tags", FieldType::ListOfStrings),
            ],
            text_field: "text".into(),
        };
        let mut tags = ListBuilder::new(StringBuilder::new());
        tags.values().append_value("a");
        tags.values().append_value("bc");
        tags.append(true);
        tags.append(false);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["hi", "there"])),
            Arc::new(Int64Array::from(vec![Some(-3), None])),
            Arc::new(Float64Array::from(vec![0.5, 2.0])),
            Arc::new(BooleanArray::from(vec![true, false])),
            Arc::new(TimestampMicrosecondArray::from(vec![7, 9]).with_timezone("UTC")),
            Arc::new(tags.finish()),
        ];
        let batch = RecordBatch::try_new(schema.arrow_schema(), columns).expect("batch");
        // A sliced batch packs from offset 0 all the same.
        let mut whole = Vec::new();
        pack_batch(&schema, &batch, &mut whole);
        let mut out = vec![9; 3];
        pack_batch(&schema, &batch.slice(1, 1), &mut out);
        assert_eq!((u32_at(&out, 0), u32_at(&out, 4)), (1, 6));

        let b = &whole;
        assert_eq!((u32_at(b, 0), u32_at(b, 4)), (2, 6));
        let section = |c: usize| {
            let e = HEADER + DIRECTORY_ENTRY * c;
            (
                b[e],
                b[e + 1],
                &b[u32_at(b, e + 4)..u32_at(b, e + 4) + u32_at(b, e + 8)],
            )
        };
        let (kind, flagged, s) = section(0);
        assert_eq!((kind, flagged), (1, 0));
        assert_eq!((u32_at(s, 0), u32_at(s, 4), u32_at(s, 8)), (0, 2, 7));
        assert_eq!(&s[12..], b"hithere");
        let (kind, flagged, s) = section(1);
        assert_eq!((kind, flagged), (2, 1));
        assert_eq!(&s[..2], &[1, 0]);
        assert_eq!(i64::from_le_bytes(s[2..10].try_into().expect("8")), -3);
        let (kind, _, s) = section(2);
        assert_eq!(
            (kind, f64::from_le_bytes(s[8..16].try_into().expect("8"))),
            (3, 2.0)
        );
        assert_eq!(section(3).2, &[1, 0]);
        let (kind, _, s) = section(4);
        assert_eq!(
            (kind, i64::from_le_bytes(s[8..16].try_into().expect("8"))),
            (5, 9)
        );
        let (kind, flagged, s) = section(5);
        assert_eq!((kind, flagged), (6, 1));
        // presence, list offsets 0 2 2, item offsets 0 1 3, items.
        assert_eq!(&s[..2], &[1, 0]);
        assert_eq!((u32_at(s, 2), u32_at(s, 6), u32_at(s, 10)), (0, 2, 2));
        assert_eq!((u32_at(s, 14), u32_at(s, 18), u32_at(s, 22)), (0, 1, 3));
        assert_eq!(&s[26..], b"abc");
    }

    fn verdicts(rows: u32, qualities: &[f64], tail: &[u8]) -> Vec<u8> {
        let mut b = rows.to_le_bytes().to_vec();
        for q in qualities {
            b.extend_from_slice(&q.to_le_bytes());
        }
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn verdicts_unpack_and_every_malformed_answer_is_named() {
        let mut tail = 1u32.to_le_bytes().to_vec(); // one rejection
        tail.extend_from_slice(&1u32.to_le_bytes());
        tail.extend_from_slice(&2u32.to_le_bytes());
        tail.extend_from_slice(b"no");
        tail.extend_from_slice(&1u32.to_le_bytes()); // one rewrite
        tail.extend_from_slice(&0u32.to_le_bytes());
        tail.extend_from_slice(&3u32.to_le_bytes());
        tail.push(6);
        tail.extend_from_slice(&1u32.to_le_bytes());
        tail.extend_from_slice(&1u32.to_le_bytes());
        tail.extend_from_slice(b"x");
        let good = verdicts(2, &[0.5, 0.0], &tail);
        let v = unpack_verdicts(&good, 2, 4).expect("unpack");
        assert_eq!(v.verdicts[0], Verdict::Accept { quality: 0.5 });
        assert_eq!(
            v.verdicts[1],
            Verdict::Reject {
                reason: "no".into()
            }
        );
        assert_eq!(
            v.rewrites,
            vec![Rewrite {
                row: 0,
                field: 3,
                value: FieldValue::StringList(vec!["x".into()])
            }]
        );

        let none = [0u8; 8];
        let err = |bytes: &[u8], rows| unpack_verdicts(bytes, rows, 4).expect_err("malformed");
        assert!(err(&verdicts(3, &[0.5, 0.5], &none), 2).contains("3 qualities for 2 rows"));
        assert!(err(&verdicts(1, &[1.5], &none), 1).contains("outside 0..=1"));
        assert!(err(&verdicts(1, &[], &[]), 1).contains("the qualities"));
        assert!(err(&good[..good.len() - 1], 2).contains("a rewritten list item"));
        let mut extra = good.clone();
        extra.push(0);
        assert!(err(&extra, 2).contains("1 bytes follow"));
        let mut bad_row = verdicts(1, &[0.5], &1u32.to_le_bytes());
        bad_row.extend_from_slice(&5u32.to_le_bytes());
        bad_row.extend_from_slice(&0u32.to_le_bytes());
        bad_row.extend_from_slice(&0u32.to_le_bytes());
        assert!(err(&bad_row, 1).contains("rejected row 5 of 1"));
        // A rejected row's quality is not read; an accepted row's is.
        let mut rejected_nan = verdicts(2, &[f64::NAN, 0.5], &1u32.to_le_bytes());
        rejected_nan.extend_from_slice(&0u32.to_le_bytes());
        rejected_nan.extend_from_slice(&1u32.to_le_bytes());
        rejected_nan.push(b'x');
        rejected_nan.extend_from_slice(&0u32.to_le_bytes());
        let v = unpack_verdicts(&rejected_nan, 2, 4).expect("a rejected row's quality is free");
        assert_eq!(v.verdicts[0], Verdict::Reject { reason: "x".into() });
        // Rewrites of a field the schema lacks, or more of them than cells.
        let mut far_field = verdicts(1, &[0.5], &0u32.to_le_bytes());
        far_field.extend_from_slice(&1u32.to_le_bytes());
        far_field.extend_from_slice(&0u32.to_le_bytes());
        far_field.extend_from_slice(&4u32.to_le_bytes());
        far_field.push(0);
        assert!(err(&far_field, 1).contains("rewrote field 4 of 4"));
        let mut many = verdicts(1, &[0.5], &0u32.to_le_bytes());
        many.extend_from_slice(&5u32.to_le_bytes());
        assert!(err(&many, 1).contains("5 rewrites for 1 rows of 4 fields"));
        let mut huge = verdicts(1, &[0.5], &0u32.to_le_bytes());
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&[0; 8]);
        huge.push(6);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&huge, 1).contains("claims 4294967295 items"));
    }
}
