//! The validation hook of ingest. After the native schema checks, each chunk of rows passes
//! through the Datanet's validator chain: each validator may reject rows (with a reason),
//! rewrite fields of the rows it accepts, and scores them with a quality in 0..=1; a row's
//! `_quality` is the lowest score of the chain. The WASM validator plugins implement
//! [`Validator`]; an empty chain accepts everything with quality 1.
//!
//! Validators run on the server only, after the contributor signed: the signature covers the
//! rows the contributor sent, and validators decide which of them the Datanet keeps and in
//! what form. A rewritten record gets the id of what is stored.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, ListBuilder, PrimitiveArray, RecordBatch,
    StringBuilder,
};
use arrow::datatypes::{ArrowPrimitiveType, Float64Type, Int64Type, TimestampMicrosecondType};

use super::ingest::{Chunk, ErrorReport};
use super::schema::{DatanetSchema, FieldType, TIMEZONE};
use super::Datanet;
use crate::plugin::state::StateChanges;

/// A validator's word on one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accept { quality: f64 },
    Reject { reason: String },
}

/// A value a validator writes into a field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Null,
    String(String),
    Int64(i64),
    Float64(f64),
    Bool(bool),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
    StringList(Vec<String>),
}

/// A new value for field `field` (its index in the schema) of row `row`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    pub row: usize,
    pub field: usize,
    pub value: FieldValue,
}

/// What a validator said about a batch: a verdict per row, in order, and rewrites of
/// accepted rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validation {
    pub verdicts: Vec<Verdict>,
    pub rewrites: Vec<Rewrite>,
}

/// A validator that failed as a whole (it trapped, timed out, or answered the wrong number of
/// verdicts): the batch cannot be judged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("validator {validator} failed: {message}")]
pub struct ValidatorError {
    pub validator: String,
    pub message: String,
}

pub trait Validator: Send + Sync {
    fn name(&self) -> &str;
    /// Judges `batch`, whose columns are the schema's fields in order. `config` is the JSON
    /// the Datanet attached the validator with; `state` holds key-value writes not yet
    /// committed, which a validator reads through and adds to.
    fn validate(
        &self,
        datanet: &Datanet,
        config: &str,
        batch: &RecordBatch,
        state: &mut StateChanges,
    ) -> Result<Validation, ValidatorError>;
}

/// Finds the validator a Datanet names (the plugin registry, in the server).
pub trait ValidatorResolver: Send + Sync {
    fn resolve(&self, plugin: &str) -> Result<Arc<dyn Validator>, ValidatorError>;
    /// Whether `plugin` is a validator that takes `config`; otherwise why not.
    fn check(&self, plugin: &str, config: &serde_json::Value) -> Result<(), String>;
}

/// What the chain decided for a chunk.
pub struct Judgement {
    pub keep: Vec<bool>,
    pub quality: Vec<f64>,
    /// The chunk with every rewrite applied, if there was one.
    pub rewritten: Option<RecordBatch>,
}

/// Validators with their configs, run in order.
#[derive(Clone, Default)]
pub struct ValidatorChain {
    validators: Vec<(Arc<dyn Validator>, String)>,
}

impl ValidatorChain {
    /// A chain of validators without config.
    pub fn new(validators: Vec<Arc<dyn Validator>>) -> Self {
        Self {
            validators: validators.into_iter().map(|v| (v, String::new())).collect(),
        }
    }

    pub fn push(&mut self, validator: Arc<dyn Validator>, config: String) {
        self.validators.push((validator, config));
    }

    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    /// Runs every validator over the chunk, each seeing the rows as the one before left
    /// them. A row is kept if all accept it; its quality is the lowest any validator gave.
    /// Rejections go into `report`, naming the validator.
    pub fn judge(
        &self,
        datanet: &Datanet,
        chunk: &Chunk,
        state: &mut StateChanges,
        report: &mut ErrorReport,
    ) -> Result<Judgement, ValidatorError> {
        let n = chunk.batch.num_rows();
        let mut keep = vec![true; n];
        let mut quality = vec![1.0f64; n];
        let mut rewritten: Option<RecordBatch> = None;
        // Rejections count only if the whole chain judged the chunk.
        let mut rejected = ErrorReport::default();
        for (validator, config) in &self.validators {
            let fail = |message: String| ValidatorError {
                validator: validator.name().to_string(),
                message,
            };
            let batch = rewritten.as_ref().unwrap_or(&chunk.batch);
            let validation = validator.validate(datanet, config, batch, state)?;
            if validation.verdicts.len() != n {
                return Err(fail(format!(
                    "answered {} verdicts for {n} rows",
                    validation.verdicts.len()
                )));
            }
            for (i, verdict) in validation.verdicts.into_iter().enumerate() {
                match verdict {
                    Verdict::Accept { quality: q } if (0.0..=1.0).contains(&q) => {
                        quality[i] = quality[i].min(q);
                    }
                    Verdict::Accept { quality: q } => {
                        return Err(fail(format!("quality {q} is outside 0..=1")))
                    }
                    Verdict::Reject { reason } => {
                        if keep[i] {
                            rejected.push(
                                chunk.rows[i],
                                None,
                                format!("{}: {reason}", validator.name()),
                            );
                        }
                        keep[i] = false;
                    }
                }
            }
            if !validation.rewrites.is_empty() {
                let next = apply_rewrites(&datanet.spec.schema, batch, &validation.rewrites)
                    .map_err(fail)?;
                rewritten = Some(next);
            }
        }
        report.merge(rejected);
        Ok(Judgement {
            keep,
            quality,
            rewritten,
        })
    }
}

/// `batch` with `rewrites` applied; an error names a rewrite that does not fit the schema.
pub fn apply_rewrites(
    schema: &DatanetSchema,
    batch: &RecordBatch,
    rewrites: &[Rewrite],
) -> Result<RecordBatch, String> {
    let rows = batch.num_rows();
    let mut by_field: Vec<Vec<(usize, &FieldValue)>> = vec![Vec::new(); schema.fields.len()];
    for r in rewrites {
        let Some(spec) = schema.fields.get(r.field) else {
            return Err(format!(
                "rewrite of field {} of {}",
                r.field,
                schema.fields.len()
            ));
        };
        if r.row >= rows {
            return Err(format!("rewrite of row {} of {rows}", r.row));
        }
        let fits = matches!(
            (&r.value, spec.field_type),
            (FieldValue::Null, _)
                | (FieldValue::String(_), FieldType::String)
                | (FieldValue::Int64(_), FieldType::Int64)
                | (FieldValue::Float64(_), FieldType::Float64)
                | (FieldValue::Bool(_), FieldType::Bool)
                | (FieldValue::Timestamp(_), FieldType::Timestamp)
                | (FieldValue::StringList(_), FieldType::ListOfStrings)
        );
        if !fits {
            return Err(format!(
                "rewrote field {} ({}) with a value of another type",
                spec.name,
                spec.field_type.name()
            ));
        }
        if spec.required && r.value == FieldValue::Null {
            return Err(format!("rewrote required field {} with null", spec.name));
        }
        if let FieldValue::Float64(v) = r.value {
            if !v.is_finite() {
                return Err(format!("rewrote field {} with {v}", spec.name));
            }
        }
        by_field[r.field].push((r.row, &r.value));
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (field, mut changes) in by_field.into_iter().enumerate() {
        if changes.is_empty() {
            continue;
        }
        // The last rewrite of a cell wins.
        changes.sort_by_key(|(row, _)| *row);
        let mut changed: Vec<Option<&FieldValue>> = vec![None; rows];
        for (row, value) in changes {
            changed[row] = Some(value);
        }
        columns[field] = rebuild(
            schema.fields[field].field_type,
            batch.column(field),
            &changed,
        );
    }
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| e.to_string())
}

/// A primitive column with the `changed` cells replaced: `value` reads a rewrite's value, and
/// a rewrite it cannot read (null) becomes a null.
fn rebuild_primitive<T: ArrowPrimitiveType>(
    old: &ArrayRef,
    changed: &[Option<&FieldValue>],
    value: impl Fn(&FieldValue) -> Option<T::Native>,
) -> PrimitiveArray<T> {
    let old = old.as_primitive::<T>();
    changed
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Some(v) => value(v),
            None => old.is_valid(i).then(|| old.value(i)),
        })
        .collect()
}

/// A column with the `changed` cells replaced (types already checked).
fn rebuild(t: FieldType, old: &ArrayRef, changed: &[Option<&FieldValue>]) -> ArrayRef {
    let rows = changed.len();
    match t {
        FieldType::String => {
            let old = old.as_string::<i32>();
            let mut b = StringBuilder::with_capacity(rows, old.value_data().len());
            for (i, c) in changed.iter().enumerate() {
                match c {
                    Some(FieldValue::String(s)) => b.append_value(s),
                    Some(_) => b.append_null(),
                    None if old.is_null(i) => b.append_null(),
                    None => b.append_value(old.value(i)),
                }
            }
            Arc::new(b.finish())
        }
        FieldType::Int64 => Arc::new(rebuild_primitive::<Int64Type>(old, changed, |v| match v {
            FieldValue::Int64(v) => Some(*v),
            _ => None,
        })),
        FieldType::Float64 => Arc::new(rebuild_primitive::<Float64Type>(
            old,
            changed,
            |v| match v {
                FieldValue::Float64(v) => Some(*v),
                _ => None,
            },
        )),
        FieldType::Timestamp => Arc::new(
            rebuild_primitive::<TimestampMicrosecondType>(old, changed, |v| match v {
                FieldValue::Timestamp(v) => Some(*v),
                _ => None,
            })
            .with_timezone(TIMEZONE),
        ),
        FieldType::Bool => {
            let old = old.as_boolean();
            let mut b = BooleanBuilder::with_capacity(rows);
            for (i, c) in changed.iter().enumerate() {
                match c {
                    Some(FieldValue::Bool(v)) => b.append_value(*v),
                    Some(_) => b.append_null(),
                    None => b.append_option(old.is_valid(i).then(|| old.value(i))),
                }
            }
            Arc::new(b.finish())
        }
        FieldType::ListOfStrings => {
            let old = old.as_list::<i32>();
            let mut b = ListBuilder::new(StringBuilder::new()).with_field(
                arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Utf8, true),
            );
            for (i, c) in changed.iter().enumerate() {
                match c {
                    Some(FieldValue::StringList(items)) => {
                        for item in items {
                            b.values().append_value(item);
                        }
                        b.append(true);
                    }
                    Some(_) => b.append(false),
                    None if old.is_null(i) => b.append(false),
                    None => {
                        let items = old.value(i);
                        let items = items.as_string::<i32>();
                        for j in 0..items.len() {
                            if items.is_null(j) {
                                b.values().append_null();
                            } else {
                                b.values().append_value(items.value(j));
                            }
                        }
                        b.append(true);
                    }
                }
            }
            Arc::new(b.finish())
        }
    }
}
