//! JSON Lines: one JSON object a line, keys naming schema fields.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use super::cells::{finite, parse_timestamp, Cell, RowBuilder};
use super::{Chunk, ChunkReader, ErrorReport, IngestError, CHUNK_ROWS};
use crate::datanet::schema::{DatanetSchema, FieldType};

/// A JSON value as parsed, before it meets its field's type. Strings borrow from the line
/// where they carry no escapes.
enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object,
}

impl Json<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object => "an object",
        }
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v)
            .map(Json::Int)
            .unwrap_or(Json::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Json::Object)
    }
}

struct JsonSeed;

impl<'de> DeserializeSeed<'de> for JsonSeed {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// A map key, borrowed where it can be.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A whole line: the top-level object's entries in order, or the reason it is not one.
struct Line<'a>(Result<Vec<(Key<'a>, Json<'a>)>, &'static str>);

impl<'de> de::Deserialize<'de> for Line<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LineVisitor;
        impl<'de> Visitor<'de> for LineVisitor {
            type Value = Line<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    entries.push((key, map.next_value_seed(JsonSeed)?));
                }
                Ok(Line(Ok(entries)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Line(Err("an array")))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Line(Err("a boolean")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Line(Err("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Line(Err("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Line(Err("a number")))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Line(Err("a string")))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Line(Err("null")))
            }
        }
        d.deserialize_any(LineVisitor)
    }
}

fn coerce<'a>(value: Json<'a>, ty: FieldType) -> Result<Cell<'a>, String> {
    match (ty, value) {
        (_, Json::Null) => Ok(Cell::Null),
        (FieldType::String, Json::Str(s)) => Ok(Cell::Str(s)),
        (FieldType::Int64, Json::Int(v)) => Ok(Cell::Int(v)),
        (FieldType::Int64, Json::Float(v)) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
            Ok(Cell::Int(v as i64))
        }
        (FieldType::Float64, Json::Int(v)) => Ok(Cell::Float(v as f64)),
        (FieldType::Float64, Json::Float(v)) => finite(v),
        (FieldType::Bool, Json::Bool(v)) => Ok(Cell::Bool(v)),
        (FieldType::Timestamp, Json::Str(s)) => parse_timestamp(&s),
        (FieldType::Timestamp, Json::Int(v)) => Ok(Cell::Timestamp(v)),
        (FieldType::ListOfStrings, Json::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Json::Str(s) => Ok(s),
                other => Err(format!(
                    "list items must be strings, found {}",
                    other.kind()
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Cell::List),
        (ty, other) => Err(format!("expected {}, found {}", ty.name(), other.kind())),
    }
}

pub struct JsonlReader {
    input: BufReader<Box<dyn Read + Send>>,
    schema: DatanetSchema,
    by_name: HashMap<String, usize>,
    builder: RowBuilder,
    line: Vec<u8>,
    line_no: u64,
    done: bool,
}

impl JsonlReader {
    pub fn new(input: Box<dyn Read + Send>, schema: &DatanetSchema) -> Self {
        Self {
            input: BufReader::with_capacity(1 << 20, input),
            schema: schema.clone(),
            by_name: schema
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name.clone(), i))
                .collect(),
            builder: RowBuilder::new(schema, CHUNK_ROWS),
            line: Vec::with_capacity(4096),
            line_no: 0,
            done: false,
        }
    }

    fn parse_line(&mut self, report: &mut ErrorReport) {
        let row = self.line_no;
        let mut text = trim_ascii(&self.line);
        if row == 1 {
            text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(text);
        }
        if text.is_empty() {
            return;
        }
        let entries = match serde_json::from_slice::<Line<'_>>(text) {
            Ok(Line(Ok(entries))) => entries,
            Ok(Line(Err(kind))) => {
                report.push(
                    row,
                    None,
                    format!("each line must be a JSON object, found {kind}"),
                );
                return;
            }
            Err(e) => {
                report.push(row, None, format!("invalid JSON: {e}"));
                return;
            }
        };
        let mut cells: Vec<Cell<'_>> = vec![Cell::Null; self.schema.fields.len()];
        let mut ok = true;
        for (key, value) in entries {
            let Some(&i) = self.by_name.get(key.0.as_ref()) else {
                report.push(row, Some(&key.0), "field is not in the Datanet's schema");
                ok = false;
                continue;
            };
            let spec = &self.schema.fields[i];
            match coerce(value, spec.field_type) {
                Ok(cell) => cells[i] = cell,
                Err(message) => {
                    report.push(row, Some(&spec.name), message);
                    ok = false;
                }
            }
        }
        self.builder
            .finish_row(row, &cells, ok, report, "required field is missing or null");
    }
}

/// The longest line (one record) a JSONL upload may have.
const MAX_LINE_BYTES: u64 = 16 << 20;

fn skip_rest_of_line(input: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(end) => {
                input.consume(end + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                input.consume(len);
            }
        }
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

impl ChunkReader for JsonlReader {
    fn next_chunk(&mut self, report: &mut ErrorReport) -> Result<Option<Chunk>, IngestError> {
        while !self.done && self.builder.len() < CHUNK_ROWS {
            self.line.clear();
            let read = (&mut self.input)
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut self.line)?;
            if read == 0 {
                self.done = true;
                break;
            }
            self.line_no += 1;
            if read as u64 == MAX_LINE_BYTES && self.line.last() != Some(&b'\n') {
                // One record may not hold the reader's memory hostage: drop the rest of it.
                skip_rest_of_line(&mut self.input)?;
                report.push(
                    self.line_no,
                    None,
                    format!("the line is longer than {} MiB", MAX_LINE_BYTES >> 20),
                );
                continue;
            }
            self.parse_line(report);
        }
        if self.builder.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.builder.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlong_line_is_reported_and_the_next_line_still_read() {
        let schema = DatanetSchema::text_only();
        let mut input = format!(
            "{{\"text\": \"{}\"}}\n",
            "x".repeat(MAX_LINE_BYTES as usize)
        );
        input.push_str("{\"text\": \"short\"}\n");
        let mut reader =
            JsonlReader::new(Box::new(std::io::Cursor::new(input.into_bytes())), &schema);
        let mut report = ErrorReport::default();
        let chunk = reader
            .next_chunk(&mut report)
            .expect("read")
            .expect("a chunk");
        assert_eq!(chunk.rows, vec![2]);
        assert_eq!(report.total, 1);
        assert_eq!(report.errors[0].row, 1);
        assert!(report.errors[0].message.contains("longer than 16 MiB"));
    }
}
