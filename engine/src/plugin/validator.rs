//! Validator plugins in the ingest path: Arrow chunks cross as packed columns, verdicts come
//! back packed, and the answer is checked before ingest trusts it.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

use super::bindings::types;
use super::bindings::validator::exports::tributary::plugins::validation as wit;
use super::runtime::{Bound, LoadedPlugin, OutputSize};
use super::state::StateChanges;
use super::PluginError;
use crate::datanet::schema::FieldType;
use crate::datanet::validate::{
    FieldValue, Rewrite, Validation, Validator, ValidatorError, Verdict,
};
use crate::datanet::Datanet;

/// The context a Datanet and config are configured under in an instance: equal inputs,
/// equal id. The hash is keyed per process (so ids cannot be chosen to collide) and cheap,
/// since every call computes it.
fn context_id(datanet: &Datanet, config: &str) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let mut h = KEY.get_or_init(std::hash::RandomState::new).build_hasher();
    let schema = &datanet.spec.schema;
    datanet.spec.id.hash(&mut h);
    for f in &schema.fields {
        (f.field_type.tag(), f.required, &f.name).hash(&mut h);
    }
    schema.text_field.hash(&mut h);
    config.hash(&mut h);
    h.finish()
}

/// What the plugin is told about a Datanet.
pub fn datanet_info(datanet: &Datanet) -> types::DatanetInfo {
    let schema = &datanet.spec.schema;
    types::DatanetInfo {
        id: datanet.spec.id.clone(),
        name: datanet.spec.name.clone(),
        license: datanet.spec.license.clone(),
        tags: datanet.spec.tags.clone(),
        fields: schema
            .fields
            .iter()
            .map(|f| types::Field {
                name: f.name.clone(),
                type_: match f.field_type {
                    FieldType::String => types::FieldType::String,
                    FieldType::Int64 => types::FieldType::Int64,
                    FieldType::Float64 => types::FieldType::Float64,
                    FieldType::Bool => types::FieldType::Boolean,
                    FieldType::Timestamp => types::FieldType::Timestamp,
                    FieldType::ListOfStrings => types::FieldType::StringList,
                },
                required: f.required,
            })
            .collect(),
        text_field: schema
            .field(&schema.text_field)
            .map_or(0, |(i, _)| i as u32),
    }
}

/// Copies a string array into `out`, reusing its buffers: one copy of the bytes, and
/// offsets rebased to start at 0.
fn fill_strings(array: &arrow::array::StringArray, out: &mut types::StringColumn) {
    let offsets = array.value_offsets();
    let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
    out.data.clear();
    out.data.extend_from_slice(&array.value_data()[first..last]);
    out.offsets.clear();
    out.offsets
        .extend(offsets.iter().map(|o| (*o as usize - first) as u32));
}

fn fill_present(array: &dyn Array, out: &mut Option<Vec<bool>>) {
    match array.logical_nulls().filter(|n| n.null_count() > 0) {
        Some(nulls) => {
            let mut v = out.take().unwrap_or_default();
            v.clear();
            v.extend(nulls.iter());
            *out = Some(v);
        }
        None => *out = None,
    }
}

fn string_column() -> types::StringColumn {
    types::StringColumn {
        data: Vec::new(),
        offsets: Vec::new(),
    }
}

/// The chunk's columns, packed. `batch` has the schema's fields in order.
pub fn to_wit(datanet: &Datanet, batch: &RecordBatch) -> types::RecordBatch {
    let mut out = types::RecordBatch {
        rows: 0,
        columns: Vec::new(),
    };
    pack_into(datanet, batch, &mut out);
    out
}

/// Packs `batch` into `out`, reusing the buffers `out` already has: a batch's strings are
/// copied once, into memory that earlier batches already touched.
pub fn pack_into(datanet: &Datanet, batch: &RecordBatch, out: &mut types::RecordBatch) {
    let fields = &datanet.spec.schema.fields;
    out.rows = batch.num_rows() as u32;
    out.columns.truncate(fields.len());
    for (i, (field, array)) in fields.iter().zip(batch.columns()).enumerate() {
        if out.columns.len() <= i {
            out.columns.push(types::Column {
                values: types::ColumnValues::Int64(Vec::new()),
                present: None,
            });
        }
        let column = &mut out.columns[i];
        fill_present(array.as_ref(), &mut column.present);
        let values = &mut column.values;
        match field.field_type {
            FieldType::String => {
                if !matches!(values, types::ColumnValues::String(_)) {
                    *values = types::ColumnValues::String(string_column());
                }
                if let types::ColumnValues::String(c) = values {
                    fill_strings(array.as_string::<i32>(), c);
                }
            }
            FieldType::Int64 | FieldType::Timestamp => {
                let source = if field.field_type == FieldType::Int64 {
                    array.as_primitive::<Int64Type>().values().as_ref()
                } else {
                    array
                        .as_primitive::<TimestampMicrosecondType>()
                        .values()
                        .as_ref()
                };
                let mut v = match std::mem::replace(values, types::ColumnValues::Int64(Vec::new()))
                {
                    types::ColumnValues::Int64(v) | types::ColumnValues::Timestamp(v) => v,
                    _ => Vec::new(),
                };
                v.clear();
                v.extend_from_slice(source);
                *values = if field.field_type == FieldType::Int64 {
                    types::ColumnValues::Int64(v)
                } else {
                    types::ColumnValues::Timestamp(v)
                };
            }
            FieldType::Float64 => {
                if !matches!(values, types::ColumnValues::Float64(_)) {
                    *values = types::ColumnValues::Float64(Vec::new());
                }
                if let types::ColumnValues::Float64(v) = values {
                    v.clear();
                    v.extend_from_slice(array.as_primitive::<Float64Type>().values());
                }
            }
            FieldType::Bool => {
                if !matches!(values, types::ColumnValues::Boolean(_)) {
                    *values = types::ColumnValues::Boolean(Vec::new());
                }
                if let types::ColumnValues::Boolean(v) = values {
                    v.clear();
                    v.extend(array.as_boolean().values().iter());
                }
            }
            FieldType::ListOfStrings => {
                if !matches!(values, types::ColumnValues::StringList(_)) {
                    *values = types::ColumnValues::StringList(types::StringListColumn {
                        lists: Vec::new(),
                        items: string_column(),
                    });
                }
                if let types::ColumnValues::StringList(c) = values {
                    let list = array.as_list::<i32>();
                    let offsets = list.value_offsets();
                    let first = offsets[0] as usize;
                    let last = offsets[offsets.len() - 1] as usize;
                    let items = list.values().slice(first, last - first);
                    c.lists.clear();
                    c.lists
                        .extend(offsets.iter().map(|o| (*o as usize - first) as u32));
                    fill_strings(items.as_string::<i32>(), &mut c.items);
                }
            }
        }
    }
}

impl OutputSize for wit::Verdicts {
    fn output_size(&self) -> usize {
        fn value(v: &types::FieldValue) -> usize {
            match v {
                types::FieldValue::String(s) => s.len(),
                types::FieldValue::StringList(items) => items.iter().map(|s| s.len() + 8).sum(),
                _ => 8,
            }
        }
        self.quality.len() * 8
            + self
                .rejections
                .iter()
                .map(|r| r.reason.len() + 8)
                .sum::<usize>()
            + self
                .rewrites
                .iter()
                .map(|r| value(&r.value) + 8)
                .sum::<usize>()
    }
}

/// A validator plugin, callable from ingest.
pub struct WasmValidator {
    plugin: Arc<LoadedPlugin>,
    /// Packed batches whose buffers the next calls reuse.
    spare: std::sync::Mutex<Vec<types::RecordBatch>>,
}

impl WasmValidator {
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            plugin,
            spare: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs the plugin over `batch` and returns its answer as it gave it.
    pub fn call(
        &self,
        datanet: &Datanet,
        config: &str,
        batch: &RecordBatch,
        state: &mut StateChanges,
    ) -> Result<wit::Verdicts, PluginError> {
        let context = context_id(datanet, config);
        let mut packed = self
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or(types::RecordBatch {
                rows: 0,
                columns: Vec::new(),
            });
        pack_into(datanet, batch, &mut packed);
        let answer = self.plugin.call("validate", state, |store, bound| {
            let Bound::Validator(v) = bound else {
                return Err(wasmtime::Error::msg("not a validator"));
            };
            let guest = v.tributary_plugins_validation();
            // An instance learns a Datanet's schema and config once, not with every batch.
            if !store.data().is_configured(context) {
                let info = datanet_info(datanet);
                if let Err(message) = guest.call_configure(&mut *store, context, &info, config)? {
                    return Ok(Err(format!("config: {message}")));
                }
                store.data_mut().configured(context);
            }
            guest.call_validate(store, context, &packed)
        });
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < 4 {
            spare.push(packed);
        }
        answer
    }
}

fn field_value(v: types::FieldValue) -> FieldValue {
    match v {
        types::FieldValue::Null => FieldValue::Null,
        types::FieldValue::String(s) => FieldValue::String(s),
        types::FieldValue::Int64(v) => FieldValue::Int64(v),
        types::FieldValue::Float64(v) => FieldValue::Float64(v),
        types::FieldValue::Boolean(v) => FieldValue::Bool(v),
        types::FieldValue::Timestamp(v) => FieldValue::Timestamp(v),
        types::FieldValue::StringList(v) => FieldValue::StringList(v),
    }
}

/// Checks a plugin's packed verdicts for `rows` rows and unpacks them.
pub fn unpack(verdicts: wit::Verdicts, rows: usize) -> Result<Validation, String> {
    if verdicts.quality.len() != rows {
        return Err(format!(
            "answered {} qualities for {rows} rows",
            verdicts.quality.len()
        ));
    }
    let mut out: Vec<Verdict> = Vec::with_capacity(rows);
    for (row, q) in verdicts.quality.iter().enumerate() {
        if !(0.0..=1.0).contains(q) {
            return Err(format!("quality {q} of row {row} is outside 0..=1"));
        }
        out.push(Verdict::Accept { quality: *q });
    }
    for rejection in verdicts.rejections {
        let row = rejection.row as usize;
        let Some(slot) = out.get_mut(row) else {
            return Err(format!("rejected row {row} of {rows}"));
        };
        *slot = Verdict::Reject {
            reason: rejection.reason,
        };
    }
    let rewrites = verdicts
        .rewrites
        .into_iter()
        .map(|r| Rewrite {
            row: r.row as usize,
            field: r.field as usize,
            value: field_value(r.value),
        })
        .collect();
    Ok(Validation {
        verdicts: out,
        rewrites,
    })
}

impl Validator for WasmValidator {
    fn name(&self) -> &str {
        self.plugin.id()
    }

    fn validate(
        &self,
        datanet: &Datanet,
        config: &str,
        batch: &RecordBatch,
        state: &mut StateChanges,
    ) -> Result<Validation, ValidatorError> {
        let fail = |message: String| ValidatorError {
            validator: self.plugin.id().to_string(),
            message,
        };
        let verdicts = self
            .call(datanet, config, batch, state)
            .map_err(|e| fail(e.to_string()))?;
        unpack(verdicts, batch.num_rows()).map_err(fail)
    }
}
