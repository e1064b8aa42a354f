//! A Datanet's schema: the curator's fields, the text field models train on, and the system
//! columns every segment carries. Inside, a schema is an Arrow schema.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Timestamps are microseconds since the Unix epoch, in UTC.
pub const TIMEZONE: &str = "UTC";
pub const MAX_FIELDS: usize = 256;

/// System columns, in the order they follow the curator's fields.
pub const COL_RECORD_ID: &str = "_record_id";
pub const COL_CONTRIBUTOR: &str = "_contributor";
pub const COL_BATCH: &str = "_batch";
pub const COL_SUBMITTED_AT: &str = "_submitted_at";
pub const COL_QUALITY: &str = "_quality";

/// The type of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum FieldType {
    #[serde(rename = "string")]
    String,
    #[serde(rename = "int64")]
    Int64,
    #[serde(rename = "float64")]
    Float64,
    #[serde(rename = "bool")]
    Bool,
    /// RFC 3339 text, or an integer count of microseconds since the epoch.
    #[serde(rename = "timestamp")]
    Timestamp,
    #[serde(rename = "list<string>")]
    ListOfStrings,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::ListOfStrings => "list<string>",
        }
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => timestamp_type(),
            FieldType::ListOfStrings => {
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
            }
        }
    }

    /// The tag that identifies the type in a record's canonical encoding.
    pub fn tag(self) -> u8 {
        match self {
            FieldType::String => 1,
            FieldType::Int64 => 2,
            FieldType::Float64 => 3,
            FieldType::Bool => 4,
            FieldType::Timestamp => 5,
            FieldType::ListOfStrings => 6,
        }
    }
}

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(TIMEZONE.into()))
}

/// One field of a Datanet's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Letters, digits and `_`, not starting with `_` (reserved for system columns).
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// A required field must be present and non-null in every record.
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The curator's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatanetSchema {
    pub fields: Vec<FieldSpec>,
    /// The string field whose text models train on.
    pub text_field: String,
}

/// A schema problem, naming the field path at fault (for example `schema.fields[2].name`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SchemaError {
    pub field: String,
    pub message: String,
}

fn schema_error(field: impl Into<String>, message: impl Into<String>) -> SchemaError {
    SchemaError {
        field: field.into(),
        message: message.into(),
    }
}

impl DatanetSchema {
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.fields.is_empty() {
            return Err(schema_error(
                "schema.fields",
                "a schema needs at least one field",
            ));
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(schema_error(
                "schema.fields",
                format!(
                    "at most {MAX_FIELDS} fields are allowed, got {}",
                    self.fields.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, field) in self.fields.iter().enumerate() {
            let path = format!("schema.fields[{i}].name");
            let name = field.name.as_str();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
            if !valid {
                return Err(schema_error(
                    path,
                    format!(
                        "field name {name:?} must start with a letter and hold only letters, \
                         digits and '_' (at most 64); names starting with '_' are system columns"
                    ),
                ));
            }
            if !seen.insert(name) {
                return Err(schema_error(
                    path,
                    format!("field name {name:?} appears twice"),
                ));
            }
        }
        match self.field(&self.text_field) {
            None => Err(schema_error(
                "schema.text_field",
                format!(
                    "text field {:?} is not one of the schema's fields",
                    self.text_field
                ),
            )),
            Some((_, f)) if f.field_type != FieldType::String => Err(schema_error(
                "schema.text_field",
                format!(
                    "text field {:?} must be a string, not {}",
                    f.name,
                    f.field_type.name()
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    pub fn field(&self, name: &str) -> Option<(usize, &FieldSpec)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name)
    }

    /// The Arrow schema of the curator's columns alone.
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .fields
            .iter()
            .map(|f| Field::new(&f.name, f.field_type.arrow_type(), !f.required))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The Arrow schema of a segment: the curator's columns, then the system columns, with
    /// `_record_id` as its 32 bytes.
    pub fn segment_schema(&self) -> SchemaRef {
        self.with_system_fields(DataType::FixedSizeBinary(RECORD_ID_BYTES))
    }

    /// The Arrow schema of a version's export: a segment's, with `_record_id` as the 64 hex
    /// digits the API shows, for people reading the file with pyarrow or DuckDB.
    pub fn export_schema(&self) -> SchemaRef {
        self.with_system_fields(DataType::Utf8)
    }

    fn with_system_fields(&self, record_id: DataType) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .fields
            .iter()
            .map(|f| Field::new(&f.name, f.field_type.arrow_type(), !f.required))
            .collect();
        fields.extend(system_fields(record_id));
        Arc::new(Schema::new(fields))
    }
}

/// A record id's length in a segment's `_record_id`.
pub const RECORD_ID_BYTES: i32 = 32;

fn system_fields(record_id: DataType) -> Vec<Field> {
    vec![
        Field::new(COL_RECORD_ID, record_id, false),
        Field::new(COL_CONTRIBUTOR, DataType::Utf8, false),
        Field::new(COL_BATCH, DataType::UInt64, false),
        Field::new(COL_SUBMITTED_AT, timestamp_type(), false),
        Field::new(COL_QUALITY, DataType::Float64, false),
    ]
}

#[cfg(test)]
impl DatanetSchema {
    /// One required string field, `text`, that models train on: the schema unit tests share.
    pub(crate) fn text_only() -> Self {
        DatanetSchema {
            fields: vec![FieldSpec {
                name: "text".into(),
                field_type: FieldType::String,
                required: true,
                description: None,
            }],
            text_field: "text".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, t: FieldType) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            field_type: t,
            required: false,
            description: None,
        }
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        let ok = DatanetSchema {
            fields: vec![
                field("text", FieldType::String),
                field("n", FieldType::Int64),
            ],
            text_field: "text".into(),
        };
        ok.validate().expect("valid");

        let mut dup = ok.clone();
        dup.fields.push(field("n", FieldType::Bool));
        assert_eq!(
            dup.validate().expect_err("dup").field,
            "schema.fields[2].name"
        );

        let mut system = ok.clone();
        system.fields[1].name = "_quality".into();
        assert_eq!(
            system.validate().expect_err("system").field,
            "schema.fields[1].name"
        );

        let mut not_text = ok.clone();
        not_text.text_field = "n".into();
        assert_eq!(
            not_text.validate().expect_err("type").field,
            "schema.text_field"
        );
    }

    #[test]
    fn type_names_round_trip_through_json() {
        let t: FieldType = serde_json::from_str("\"list<string>\"").expect("parses");
        assert_eq!(t, FieldType::ListOfStrings);
        assert!(serde_json::from_str::<FieldType>("\"uint8\"").is_err());
    }
}
