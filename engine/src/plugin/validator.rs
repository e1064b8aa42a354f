//! Validator plugins in the ingest path: Arrow chunks cross as packed columns, verdicts come
//! back packed, and the answer is checked before ingest trusts it.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

use super::bindings::packed_validator::exports::tributary::plugins0_1_0::validation as packed_wit;
use super::bindings::types;
use super::bindings::validator::exports::tributary::plugins::validation as wit;
use super::packed;
use wasmtime::Store;

use super::host::HostState;
use super::runtime::{Bound, LoadedPlugin, OutputSize};
use super::state::StateChanges;
use super::PluginError;
use crate::datanet::schema::FieldType;
use crate::datanet::validate::{
    FieldValue, Rewrite, Validation, Validator, ValidatorError, Verdict,
};
use crate::datanet::Datanet;

/// What a validator context is configured from: everything `configure` tells the plugin
/// (the Datanet as [`datanet_info`] describes it, and the config). Equal keys, equal
/// context. An instance keeps the last key with its id, so that a call for the same Datanet
/// and config (every chunk of a contribution) compares instead of hashing.
#[derive(Hash, PartialEq)]
pub(crate) struct ContextKey {
    datanet: String,
    name: String,
    license: String,
    tags: Vec<String>,
    fields: Vec<(u8, bool, String)>,
    text_field: String,
    config: String,
}

impl ContextKey {
    fn new(datanet: &Datanet, config: &str) -> Self {
        let spec = &datanet.spec;
        Self {
            datanet: spec.id.clone(),
            name: spec.name.clone(),
            license: spec.license.clone(),
            tags: spec.tags.clone(),
            fields: spec
                .schema
                .fields
                .iter()
                .map(|f| (f.field_type.tag(), f.required, f.name.clone()))
                .collect(),
            text_field: spec.schema.text_field.clone(),
            config: config.to_string(),
        }
    }

    /// Whether `datanet` and `config` make this key, compared in place. (The pattern names
    /// every field, so a field added to the key does not compile until it is compared.)
    fn matches(&self, datanet: &Datanet, config: &str) -> bool {
        let Self {
            datanet: id,
            name,
            license,
            tags,
            fields,
            text_field,
            config: configured,
        } = self;
        let spec = &datanet.spec;
        *id == spec.id
            && configured == config
            && *name == spec.name
            && *license == spec.license
            && *tags == spec.tags
            && *text_field == spec.schema.text_field
            && fields.len() == spec.schema.fields.len()
            && fields
                .iter()
                .zip(&spec.schema.fields)
                .all(|((tag, required, name), f)| {
                    *tag == f.field_type.tag() && *required == f.required && *name == f.name
                })
    }

    /// The context's id. The hash is keyed per process, so ids cannot be chosen to collide.
    fn id(&self) -> u64 {
        use std::hash::BuildHasher;
        static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        KEY.get_or_init(std::hash::RandomState::new).hash_one(self)
    }
}

/// The context id of `datanet` and `config`, from the instance's last one where they match.
fn context_in(state: &mut HostState, datanet: &Datanet, config: &str) -> u64 {
    match &state.last_context {
        Some((last, id)) if last.matches(datanet, config) => *id,
        _ => {
            let key = ContextKey::new(datanet, config);
            let id = key.id();
            state.last_context = Some((key, id));
            id
        }
    }
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

/// What a validator answered, as it crossed the boundary.
pub enum Answer {
    /// From 0.1.0's `validate`.
    Typed(wit::Verdicts),
    /// From 0.1.2's `validate-packed`.
    Packed(Vec<u8>),
}

impl OutputSize for Answer {
    fn output_size(&self) -> usize {
        match self {
            Answer::Typed(v) => v.output_size(),
            Answer::Packed(bytes) => bytes.len(),
        }
    }
}

impl Answer {
    /// Checks the answer for a batch of `rows` rows of `fields` fields and unpacks it.
    pub fn unpack(self, rows: usize, fields: usize) -> Result<Validation, String> {
        match self {
            Answer::Typed(v) => unpack(v, rows, fields),
            Answer::Packed(bytes) => packed::unpack_verdicts(&bytes, rows, fields),
        }
    }
}

/// A validator plugin, callable from ingest.
pub struct WasmValidator {
    plugin: Arc<LoadedPlugin>,
    /// Typed batches whose buffers the next calls of 0.1.0 components reuse (0.1.2 ones pack
    /// into their instance's own buffer).
    spare: Spares<types::RecordBatch>,
    /// Calls 0.1.0's typed `validate` even where the component takes packed batches.
    typed_only: bool,
}

/// 0.1.0's verdicts as the 0.1.2 world's bindings generate them: the same record, another
/// Rust type.
fn typed_from_packed_world(v: packed_wit::Verdicts) -> wit::Verdicts {
    wit::Verdicts {
        quality: v.quality,
        rejections: v
            .rejections
            .into_iter()
            .map(|r| wit::Rejection {
                row: r.row,
                reason: r.reason,
            })
            .collect(),
        rewrites: v
            .rewrites
            .into_iter()
            .map(|r| wit::Rewrite {
                row: r.row,
                field: r.field,
                value: r.value,
            })
            .collect(),
    }
}

impl WasmValidator {
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            plugin,
            spare: Spares::new(),
            typed_only: false,
        }
    }

    /// A validator called through 0.1.0's typed `validate` only, as a host older than 0.1.2
    /// calls it: for comparing the two paths.
    pub fn typed_only(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            typed_only: true,
            ..Self::new(plugin)
        }
    }

    /// Runs the plugin over `batch` and returns its answer as it gave it.
    pub fn call(
        &self,
        datanet: &Datanet,
        config: &str,
        batch: &RecordBatch,
        state: &mut StateChanges,
    ) -> Result<Answer, PluginError> {
        let configure = |store: &mut Store<HostState>, context: u64, guest: Configure<'_>| {
            ensure_configured(store, context, |store| {
                let info = datanet_info(datanet);
                match guest {
                    Configure::V0(g) => g.call_configure(store, context, &info, config),
                    Configure::V2(g) => g.call_configure(store, context, &info, config),
                }
            })
        };
        if self.plugin.takes_packed_batches() && !self.typed_only {
            return self.plugin.call("validate", state, |store, bound| {
                let Bound::PackedValidator(v) = bound else {
                    return Err(wasmtime::Error::msg("not a packed validator"));
                };
                let context = context_in(store.data_mut(), datanet, config);
                let guest = Configure::V2(v.tributary_plugins0_1_0_validation());
                if let Err(message) = configure(store, context, guest)? {
                    return Ok(Err(message));
                }
                // The instance's own buffer: no lock to take one, and warm from its last call.
                let mut buffer = std::mem::take(&mut store.data_mut().packing);
                packed::pack_batch(&datanet.spec.schema, batch, &mut buffer);
                let answer = v
                    .tributary_plugins0_1_2_packed_validation()
                    .call_validate_packed(&mut *store, context, &buffer);
                store.data_mut().packing = buffer;
                Ok(answer?.map(Answer::Packed))
            });
        }
        let mut packed = self.spare.take(|| types::RecordBatch {
            rows: 0,
            columns: Vec::new(),
        });
        pack_into(datanet, batch, &mut packed);
        let answer = self
            .plugin
            .call("validate", state, |store, bound| match bound {
                Bound::Validator(v) => {
                    let context = context_in(store.data_mut(), datanet, config);
                    let guest = v.tributary_plugins_validation();
                    if let Err(message) = configure(store, context, Configure::V0(guest))? {
                        return Ok(Err(message));
                    }
                    Ok(guest
                        .call_validate(store, context, &packed)?
                        .map(Answer::Typed))
                }
                Bound::PackedValidator(v) => {
                    let context = context_in(store.data_mut(), datanet, config);
                    let guest = v.tributary_plugins0_1_0_validation();
                    if let Err(message) = configure(store, context, Configure::V2(guest))? {
                        return Ok(Err(message));
                    }
                    Ok(guest
                        .call_validate(store, context, &packed)?
                        .map(|v| Answer::Typed(typed_from_packed_world(v))))
                }
                _ => Err(wasmtime::Error::msg("not a validator")),
            });
        self.spare.give(packed);
        answer
    }
}

/// 0.1.0's `validation` interface, as either world's bindings reach it.
enum Configure<'a> {
    V0(&'a wit::Guest),
    V2(&'a packed_wit::Guest),
}

/// Configures `context` in the instance unless it already is: an instance learns a
/// Datanet's schema and config once, not with every batch.
fn ensure_configured(
    store: &mut Store<HostState>,
    context: u64,
    configure: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<Result<(), String>>,
) -> wasmtime::Result<Result<(), String>> {
    if store.data().is_configured(context) {
        return Ok(Ok(()));
    }
    let said = configure(store)?;
    if said.is_ok() {
        store.data_mut().configured(context);
    }
    Ok(said.map_err(|message| format!("config: {message}")))
}

/// Buffers kept between calls so that packing reuses memory earlier batches touched.
struct Spares<T>(std::sync::Mutex<Vec<T>>);

impl<T> Spares<T> {
    const KEPT: usize = 4;

    fn new() -> Self {
        Self(std::sync::Mutex::new(Vec::new()))
    }

    /// A kept buffer, or `empty()`.
    fn take(&self, empty: impl FnOnce() -> T) -> T {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(empty)
    }

    fn give(&self, spare: T) {
        let mut spares = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spares.len() < Self::KEPT {
            spares.push(spare);
        }
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

/// Verdicts from the qualities and rejections a validator answered for `rows` rows: a
/// rejected row's quality is ignored (as the WIT says), every other must lie in 0..=1.
pub(crate) fn verdicts(
    qualities: impl ExactSizeIterator<Item = f64>,
    rows: usize,
    rejections: impl IntoIterator<Item = (usize, String)>,
) -> Result<Vec<Verdict>, String> {
    if qualities.len() != rows {
        return Err(format!(
            "answered {} qualities for {rows} rows",
            qualities.len()
        ));
    }
    let mut out: Vec<Verdict> = qualities
        .map(|quality| Verdict::Accept { quality })
        .collect();
    for (row, reason) in rejections {
        let Some(slot) = out.get_mut(row) else {
            return Err(format!("rejected row {row} of {rows}"));
        };
        *slot = Verdict::Reject { reason };
    }
    for (row, verdict) in out.iter().enumerate() {
        if let Verdict::Accept { quality } = verdict {
            if !(0.0..=1.0).contains(quality) {
                return Err(format!("quality {quality} of row {row} is outside 0..=1"));
            }
        }
    }
    Ok(out)
}

/// Checks that a rewrite names a row of the batch and a field of the schema.
pub(crate) fn check_rewrite(
    row: usize,
    field: usize,
    rows: usize,
    fields: usize,
) -> Result<(), String> {
    if row >= rows {
        return Err(format!("rewrote row {row} of {rows}"));
    }
    if field >= fields {
        return Err(format!("rewrote field {field} of {fields}"));
    }
    Ok(())
}

/// Checks a plugin's typed verdicts for `rows` rows of `fields` fields and unpacks them.
pub fn unpack(verdicts: wit::Verdicts, rows: usize, fields: usize) -> Result<Validation, String> {
    let out = self::verdicts(
        verdicts.quality.iter().copied(),
        rows,
        verdicts
            .rejections
            .into_iter()
            .map(|r| (r.row as usize, r.reason)),
    )?;
    let rewrites = verdicts
        .rewrites
        .into_iter()
        .map(|r| {
            let (row, field) = (r.row as usize, r.field as usize);
            check_rewrite(row, field, rows, fields)?;
            Ok(Rewrite {
                row,
                field,
                value: field_value(r.value),
            })
        })
        .collect::<Result<_, String>>()?;
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
        let answer = self
            .call(datanet, config, batch, state)
            .map_err(|e| fail(e.to_string()))?;
        answer
            .unpack(batch.num_rows(), datanet.spec.schema.fields.len())
            .map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datanet(tags: &[&str]) -> Datanet {
        let spec = serde_json::json!({
            "id": "notes", "name": "Notes", "license": "CC0-1.0", "tags": tags,
            "schema": {"text_field": "text", "fields": [{"name": "text", "type": "string", "required": true}]},
        });
        Datanet {
            spec: serde_json::from_value(spec).expect("spec"),
            curators: Vec::new(),
            created_at: chrono::Utc::now(),
            batches: 0,
            versions: 0,
        }
    }

    /// A context changes with anything `configure` tells the plugin, so an instance never
    /// validates under a config or description it was not given.
    #[test]
    fn a_context_follows_everything_configure_sends() {
        let base = datanet(&["a"]);
        let key = ContextKey::new(&base, "{}");
        assert!(key.matches(&base, "{}"));
        assert_eq!(key.id(), ContextKey::new(&datanet(&["a"]), "{}").id());
        let mut renamed = datanet(&["a"]);
        renamed.spec.name = "Other".into();
        let mut retyped = datanet(&["a"]);
        retyped.spec.schema.fields[0].required = false;
        for (other, config) in [
            (datanet(&["a"]), "{\"x\": 1}"),
            (datanet(&["b"]), "{}"),
            (renamed, "{}"),
            (retyped, "{}"),
        ] {
            assert!(!key.matches(&other, config));
            assert_ne!(key.id(), ContextKey::new(&other, config).id());
        }
    }
}
