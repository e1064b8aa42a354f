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

/// A string array as one buffer and rebased offsets.
fn string_column(array: &arrow::array::StringArray) -> types::StringColumn {
    let offsets = array.value_offsets();
    let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
    types::StringColumn {
        data: array.value_data()[first..last].to_vec(),
        offsets: offsets
            .iter()
            .map(|o| (*o as usize - first) as u32)
            .collect(),
    }
}

fn present(array: &dyn Array) -> Vec<bool> {
    match array.logical_nulls() {
        Some(nulls) if nulls.null_count() > 0 => nulls.iter().collect(),
        _ => Vec::new(),
    }
}

/// The chunk's columns, packed. `batch` has the schema's fields in order.
pub fn to_wit(datanet: &Datanet, batch: &RecordBatch) -> types::RecordBatch {
    let columns = datanet
        .spec
        .schema
        .fields
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| {
            let values = match field.field_type {
                FieldType::String => {
                    types::ColumnValues::String(string_column(array.as_string::<i32>()))
                }
                FieldType::Int64 => {
                    types::ColumnValues::Int64(array.as_primitive::<Int64Type>().values().to_vec())
                }
                FieldType::Float64 => types::ColumnValues::Float64(
                    array.as_primitive::<Float64Type>().values().to_vec(),
                ),
                FieldType::Bool => {
                    types::ColumnValues::Boolean(array.as_boolean().values().iter().collect())
                }
                FieldType::Timestamp => types::ColumnValues::Timestamp(
                    array
                        .as_primitive::<TimestampMicrosecondType>()
                        .values()
                        .to_vec(),
                ),
                FieldType::ListOfStrings => {
                    let list = array.as_list::<i32>();
                    let offsets = list.value_offsets();
                    let first = offsets[0] as usize;
                    let last = offsets[offsets.len() - 1] as usize;
                    let items = list.values().slice(first, last - first);
                    types::ColumnValues::StringList(types::StringListColumn {
                        lists: offsets
                            .iter()
                            .map(|o| (*o as usize - first) as u32)
                            .collect(),
                        items: string_column(items.as_string::<i32>()),
                    })
                }
            };
            types::Column {
                values,
                present: present(array.as_ref()),
            }
        })
        .collect();
    types::RecordBatch {
        rows: batch.num_rows() as u32,
        columns,
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
}

impl WasmValidator {
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self { plugin }
    }

    /// Runs the plugin over `batch` and returns its answer as it gave it.
    pub fn call(
        &self,
        datanet: &Datanet,
        config: &str,
        batch: &RecordBatch,
        state: &mut StateChanges,
    ) -> Result<wit::Verdicts, PluginError> {
        let info = datanet_info(datanet);
        let packed = to_wit(datanet, batch);
        self.plugin
            .call("validate", state, |store, bound| match bound {
                Bound::Validator(v) => v
                    .tributary_plugins_validation()
                    .call_validate(store, &info, config, &packed),
                _ => Err(wasmtime::Error::msg("not a validator")),
            })
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
