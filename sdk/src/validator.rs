//! Validators: judge each record of a contribution, and optionally rewrite it.
//!
//! A batch crosses the boundary as packed columns; [`Batch`] and [`Record`] read it in place,
//! so looking at a field costs no copy. Implement [`Validator::check`] for a verdict per
//! record, or [`Validator::validate`] to see the whole batch at once (near-duplicate
//! detection across a batch, say).

use crate::bindings::types::{DatanetInfo, Field, FieldValue, RecordBatch};
use crate::bindings::validator::exports::tributary::plugins0_1_0::validation as wit;
use crate::packed::{self, Values, VerdictWriter};

/// A field's value, borrowed from the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    String(&'a str),
    Int64(i64),
    Float64(f64),
    Bool(bool),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    StringList(Vec<&'a str>),
}

/// A value to write into a field of an accepted record.
#[derive(Debug, Clone, PartialEq)]
pub enum NewValue {
    Null,
    String(String),
    Int64(i64),
    Float64(f64),
    Bool(bool),
    Timestamp(i64),
    StringList(Vec<String>),
}

/// What a validator says about one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accept {
        /// In 0..=1; the engine keeps the lowest score any validator of the chain gave.
        quality: f64,
        /// Fields to replace, by name.
        rewrites: Vec<(String, NewValue)>,
    },
    Reject {
        reason: String,
    },
}

impl Verdict {
    pub fn accept(quality: f64) -> Self {
        Verdict::Accept {
            quality,
            rewrites: Vec::new(),
        }
    }

    pub fn reject(reason: impl Into<String>) -> Self {
        Verdict::Reject {
            reason: reason.into(),
        }
    }

    /// Replaces `field` of an accepted record with `value`; a rejection stays one.
    pub fn rewrite(mut self, field: &str, value: NewValue) -> Self {
        if let Verdict::Accept { rewrites, .. } = &mut self {
            rewrites.push((field.to_string(), value));
        }
        self
    }
}

/// A batch of records with the Datanet's schema.
pub struct Batch<'a> {
    datanet: &'a DatanetInfo,
    batch: &'a packed::Batch<'a>,
}

impl<'a> Batch<'a> {
    pub fn len(&self) -> usize {
        self.batch.rows
    }

    pub fn is_empty(&self) -> bool {
        self.batch.rows == 0
    }

    pub fn datanet_id(&self) -> &'a str {
        &self.datanet.id
    }

    pub fn fields(&self) -> &'a [Field] {
        &self.datanet.fields
    }

    /// The position of the field called `name`.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.datanet.fields.iter().position(|f| f.name == name)
    }

    pub fn record(&self, row: usize) -> Record<'a> {
        Record {
            datanet: self.datanet,
            batch: self.batch,
            row,
        }
    }

    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + '_ {
        (0..self.len()).map(|row| self.record(row))
    }
}

/// One record of a batch, read in place.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    datanet: &'a DatanetInfo,
    batch: &'a packed::Batch<'a>,
    row: usize,
}

/// Whether every byte of `bytes` is ASCII, 32 at a time. Not `<[u8]>::is_ascii`, which goes
/// a `usize` (4 bytes on wasm32) at a time: in a component each loop iteration also pays an
/// epoch check, so fewer, wider iterations go faster.
fn is_ascii(bytes: &[u8]) -> bool {
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let mut blocks = bytes.chunks_exact(32);
    let mut high = 0u64;
    for b in &mut blocks {
        high |= word(&b[..8]) | word(&b[8..16]) | word(&b[16..24]) | word(&b[24..]);
    }
    let tail = blocks.remainder().iter().fold(0u8, |acc, b| acc | b);
    high & 0x8080_8080_8080_8080 == 0 && tail < 0x80
}

/// Whether all of a column's string bytes are ASCII: then any slice of them is a string,
/// and reading a value needs no UTF-8 check. One pass over a column's bytes, made when a
/// validator first reads from it, costs a fraction of checking each value apart (which took
/// about a quarter of `pii-redact`'s time as a component).
fn column_is_ascii(column: &packed::Column) -> bool {
    column.ascii(is_ascii)
}

fn string_at<'a>(strings: &packed::Strings<'a>, ascii: bool, i: usize) -> &'a str {
    let bytes = strings.bytes(i);
    if ascii {
        // SAFETY: every byte of the column is below 0x80 (checked by `column_is_ascii`), so any
        // slice of it is ASCII, which is valid UTF-8.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(bytes)
        }
    } else {
        // The host sends valid UTF-8 from Arrow string arrays; a broken buffer reads as empty.
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl<'a> Record<'a> {
    /// The record's position in the batch.
    pub fn row(&self) -> usize {
        self.row
    }

    /// The text models train on.
    pub fn text(&self) -> &'a str {
        self.str_at(self.datanet.text_field as usize)
            .unwrap_or_default()
    }

    /// The string at field `index`, if the field is a string column and the record has a
    /// value there: what [`Record::get_index`] reads, without building a [`Value`] (most
    /// validators read only strings, once a record).
    fn str_at(&self, index: usize) -> Option<&'a str> {
        let column = self.batch.column(index)?;
        match &column.values {
            Values::Strings(s) if column.present(self.row) => {
                Some(string_at(s, column_is_ascii(column), self.row))
            }
            _ => None,
        }
    }

    /// The name of the text field.
    pub fn text_field_name(&self) -> &'a str {
        self.datanet
            .fields
            .get(self.datanet.text_field as usize)
            .map_or("", |f| f.name.as_str())
    }

    /// The value of field `name`; `Null` for a field the schema lacks.
    pub fn get(&self, name: &str) -> Value<'a> {
        match self.datanet.fields.iter().position(|f| f.name == name) {
            Some(i) => self.get_index(i),
            None => Value::Null,
        }
    }

    /// A string field's value, if it has one.
    pub fn str(&self, name: &str) -> Option<&'a str> {
        self.str_at(self.datanet.fields.iter().position(|f| f.name == name)?)
    }

    /// The value of the field at `index` in the schema.
    pub fn get_index(&self, index: usize) -> Value<'a> {
        let Some(column) = self.batch.column(index) else {
            return Value::Null;
        };
        let row = self.row;
        if !column.present(row) {
            return Value::Null;
        }
        let ascii = || column_is_ascii(column);
        match (column.kind, &column.values) {
            (_, Values::Strings(s)) => Value::String(string_at(s, ascii(), row)),
            (packed::INT64, Values::Words(_)) => Value::Int64(i64::from_le_bytes(column.word(row))),
            (packed::FLOAT64, Values::Words(_)) => {
                Value::Float64(f64::from_le_bytes(column.word(row)))
            }
            (_, Values::Words(_)) => Value::Timestamp(i64::from_le_bytes(column.word(row))),
            (_, Values::Bools(b)) => Value::Bool(b.get(row) == Some(&1)),
            (_, Values::Lists { lists, items }) => {
                let ascii = ascii();
                Value::StringList(
                    (lists.get(row)..lists.get(row + 1))
                        .map(|i| string_at(items, ascii, i))
                        .collect(),
                )
            }
        }
    }
}

/// A validator. `Config` is what the Datanet attaches it with, parsed from JSON.
pub trait Validator {
    type Config: serde::de::DeserializeOwned + 'static;

    /// The verdict on one record.
    fn check(config: &Self::Config, record: &Record) -> Verdict;

    /// Verdicts for a whole batch, one per record in order. The default calls
    /// [`Validator::check`] on each.
    fn validate(config: &Self::Config, batch: &Batch) -> Result<Vec<Verdict>, String> {
        Ok(check_each::<Self>(config, batch))
    }
}

/// [`Validator::check`] of every record, as the default [`Validator::validate`] does: for a
/// validator that overrides `validate` but judges record by record in some configs.
pub fn check_each<V: Validator + ?Sized>(config: &V::Config, batch: &Batch) -> Vec<Verdict> {
    let mut verdicts = spare_verdicts();
    verdicts.extend(batch.records().map(|r| V::check(config, &r)));
    verdicts
}

fn new_value(value: NewValue) -> FieldValue {
    match value {
        NewValue::Null => FieldValue::Null,
        NewValue::String(s) => FieldValue::String(s),
        NewValue::Int64(v) => FieldValue::Int64(v),
        NewValue::Float64(v) => FieldValue::Float64(v),
        NewValue::Bool(v) => FieldValue::Boolean(v),
        NewValue::Timestamp(v) => FieldValue::Timestamp(v),
        NewValue::StringList(v) => FieldValue::StringList(v),
    }
}

thread_local! {
    /// The verdict list of the last batch, emptied, for the next: an allocation spared per
    /// call, where a call's fixed cost is counted in tens of nanoseconds.
    static SPARE_VERDICTS: std::cell::Cell<Vec<Verdict>> = const { std::cell::Cell::new(Vec::new()) };
}

fn spare_verdicts() -> Vec<Verdict> {
    SPARE_VERDICTS.with(|spare| spare.take())
}

fn keep_verdicts(mut verdicts: Vec<Verdict>) {
    verdicts.clear();
    SPARE_VERDICTS.with(|spare| spare.set(verdicts));
}

/// What `configure` said about a context: the Datanet and the parsed config.
struct Context {
    datanet: DatanetInfo,
    config: std::rc::Rc<dyn std::any::Any>,
}

/// Contexts an instance keeps; past this many the oldest is dropped (the host configures a
/// context again when it needs it).
const MAX_CONTEXTS: usize = 64;

thread_local! {
    static CONTEXTS: std::cell::RefCell<Vec<(u64, std::rc::Rc<Context>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Parses and keeps a context's config (called by [`crate::export_validator`]).
#[doc(hidden)]
pub fn configure<V: Validator>(
    context: u64,
    datanet: DatanetInfo,
    config: String,
) -> Result<(), String> {
    let parsed = crate::cached::parse_config::<V::Config>(&config)?;
    let entry = std::rc::Rc::new(Context {
        datanet,
        config: parsed as std::rc::Rc<dyn std::any::Any>,
    });
    CONTEXTS.with(|c| {
        let mut contexts = c.borrow_mut();
        contexts.retain(|(id, _)| *id != context);
        if contexts.len() >= MAX_CONTEXTS {
            contexts.remove(0);
        }
        contexts.push((context, entry));
    });
    Ok(())
}

/// Runs `V` over a packed batch; returns its verdicts, checked to be one a record, with the
/// Datanet they were given under.
fn judge<V: Validator>(
    context: u64,
    batch: &packed::Batch<'_>,
) -> Result<(Vec<Verdict>, std::rc::Rc<Context>), String> {
    let found = CONTEXTS.with(|c| {
        c.borrow()
            .iter()
            .rev()
            .find(|(id, _)| *id == context)
            .map(|(_, ctx)| ctx.clone())
    });
    let ctx = found.ok_or_else(|| format!("context {context} was not configured"))?;
    let config = ctx
        .config
        .clone()
        .downcast::<V::Config>()
        .map_err(|_| "the context holds another validator's config".to_string())?;
    let view = Batch {
        datanet: &ctx.datanet,
        batch,
    };
    let verdicts = V::validate(&config, &view)?;
    if verdicts.len() != view.len() {
        return Err(format!(
            "the validator gave {} verdicts for {} records",
            verdicts.len(),
            view.len()
        ));
    }
    Ok((verdicts, ctx))
}

fn field_index(datanet: &DatanetInfo, field: &str) -> Result<usize, String> {
    datanet
        .fields
        .iter()
        .position(|f| f.name == field)
        .ok_or_else(|| format!("rewrite of unknown field {field}"))
}

/// Runs `V` over a packed batch and packs its verdicts (0.1.2's `validate-packed`, called by
/// [`crate::export_validator`]).
#[doc(hidden)]
pub fn run_packed<V: Validator>(context: u64, batch: Vec<u8>) -> Result<Vec<u8>, String> {
    let batch = packed::Batch::parse(&batch)?;
    let (verdicts, ctx) = judge::<V>(context, &batch)?;
    let mut verdicts = verdicts;
    let mut out = VerdictWriter::new(verdicts.len());
    // Each verdict is dropped once written, so a large answer is not held twice for long.
    for (row, verdict) in verdicts.drain(..).enumerate() {
        match verdict {
            Verdict::Accept { quality, rewrites } => {
                out.quality(quality);
                for (field, value) in &rewrites {
                    let index = field_index(&ctx.datanet, field)?;
                    out.rewrite(row, index, value);
                }
            }
            Verdict::Reject { reason } => {
                out.quality(0.0);
                out.reject(row, &reason);
            }
        }
    }
    keep_verdicts(verdicts);
    Ok(out.finish())
}

/// Runs `V` over a typed batch, from a host older than 0.1.2 (0.1.0's `validate`, called by
/// [`crate::export_validator`]).
#[doc(hidden)]
pub fn run<V: Validator>(context: u64, batch: RecordBatch) -> Result<wit::Verdicts, String> {
    let bytes = packed::pack_typed(&batch);
    let batch = packed::Batch::parse(&bytes)?;
    let (verdicts, ctx) = judge::<V>(context, &batch)?;
    let mut out = wit::Verdicts {
        quality: Vec::with_capacity(verdicts.len()),
        rejections: Vec::new(),
        rewrites: Vec::new(),
    };
    for (row, verdict) in verdicts.into_iter().enumerate() {
        match verdict {
            Verdict::Accept { quality, rewrites } => {
                out.quality.push(quality);
                for (field, value) in rewrites {
                    out.rewrites.push(wit::Rewrite {
                        row: row as u32,
                        field: field_index(&ctx.datanet, &field)? as u32,
                        value: new_value(value),
                    });
                }
            }
            Verdict::Reject { reason } => {
                out.quality.push(0.0);
                out.rejections.push(wit::Rejection {
                    row: row as u32,
                    reason,
                });
            }
        }
    }
    Ok(out)
}

/// Exports `$ty`, which implements [`Validator`], as the component's validator.
#[macro_export]
macro_rules! export_validator {
    ($ty:ty) => {
        // Only components export the world; on the host the plugin is a library for its tests.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::validator::exports::tributary::plugins0_1_0::validation as __wit;
            use $crate::__private::types as __types;

            struct __Export;

            impl __wit::Guest for __Export {
                fn configure(
                    context: u64,
                    datanet: __types::DatanetInfo,
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::validator::configure::<$ty>(context, datanet, config)
                }

                fn validate(
                    context: u64,
                    batch: __types::RecordBatch,
                ) -> ::std::result::Result<__wit::Verdicts, ::std::string::String> {
                    $crate::validator::run::<$ty>(context, batch)
                }
            }

            impl $crate::__private::validator::exports::tributary::plugins0_1_2::packed_validation::Guest for __Export {
                fn validate_packed(
                    context: u64,
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    $crate::validator::run_packed::<$ty>(context, batch)
                }
            }

            $crate::__private::validator::export_world!(__Export with_types_in $crate::__private::validator);
            $crate::__stamp_api_version!(b"0.1.2");
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_found_at_every_length_and_a_high_byte_at_every_position() {
        for len in 0..80 {
            let mut bytes = vec![b'a'; len];
            assert!(is_ascii(&bytes), "length {len}");
            for at in 0..len {
                bytes[at] = 0xc3;
                assert!(!is_ascii(&bytes), "length {len}, high byte at {at}");
                bytes[at] = b'a';
            }
        }
    }

    #[test]
    fn fields_read_the_same_with_and_without_the_ascii_shortcut() {
        use crate::bindings::types::{Column, ColumnValues, StringColumn};
        let column = |texts: &[&str]| {
            let mut data = Vec::new();
            let mut offsets = vec![0u32];
            for t in texts {
                data.extend_from_slice(t.as_bytes());
                offsets.push(data.len() as u32);
            }
            Column {
                values: ColumnValues::String(StringColumn { data, offsets }),
                present: None,
            }
        };
        let typed = RecordBatch {
            rows: 2,
            columns: vec![column(&["plain", "text"]), column(&["café", "naïve"])],
        };
        let bytes = packed::pack_typed(&typed);
        let batch = packed::Batch::parse(&bytes).expect("parse");
        let found: Vec<bool> = (0..2)
            .map(|c| column_is_ascii(batch.column(c).expect("column")))
            .collect();
        assert_eq!(found, vec![true, false]);
        let Values::Strings(accented) = batch.column(1).expect("column").values else {
            unreachable!("a string column")
        };
        assert_eq!(string_at(&accented, false, 1), "naïve");
        let broken_bytes = packed::pack_typed(&RecordBatch {
            rows: 1,
            columns: vec![Column {
                values: ColumnValues::String(StringColumn {
                    data: vec![0xff, b'a'],
                    offsets: vec![0, 2],
                }),
                present: None,
            }],
        });
        let broken_batch = packed::Batch::parse(&broken_bytes).expect("parse");
        let Values::Strings(broken) = broken_batch.column(0).expect("column").values else {
            unreachable!("a string column")
        };
        assert_eq!(
            string_at(&broken, false, 0),
            "",
            "invalid UTF-8 reads as empty"
        );
    }
}
