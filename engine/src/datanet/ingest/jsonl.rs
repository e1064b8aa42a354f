//! JSON Lines: one JSON object a line, keys naming schema fields.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use super::cells::{finite, parse_timestamp, Cell, RowBuilder};
use super::flat_json;
use super::{Chunk, ChunkReader, ErrorReport, IngestError, CHUNK_ROWS};
use crate::datanet::schema::{DatanetSchema, FieldType};

/// A JSON value as parsed, before it meets its field's type. Strings borrow from the line
/// where they carry no escapes.
pub(super) enum Json<'a> {
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

pub(super) struct JsonSeed;

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

pub(super) fn coerce<'a>(value: Json<'a>, ty: FieldType) -> Result<Cell<'a>, String> {
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
    parser: LineParser,
    /// A line that did not fit in what `input` had buffered.
    line: Vec<u8>,
    line_no: u64,
    done: bool,
}

/// What turns one line into a row of the builder.
struct LineParser {
    schema: DatanetSchema,
    by_name: HashMap<String, usize>,
    types: Vec<FieldType>,
    builder: RowBuilder,
    /// Whether lines may take [`flat_json`]'s fast path (off only in tests, to compare).
    fast: bool,
}

impl JsonlReader {
    pub fn new(input: Box<dyn Read + Send>, schema: &DatanetSchema) -> Self {
        Self {
            input: BufReader::with_capacity(1 << 20, input),
            parser: LineParser {
                schema: schema.clone(),
                by_name: schema
                    .fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.name.clone(), i))
                    .collect(),
                types: schema.fields.iter().map(|f| f.field_type).collect(),
                builder: RowBuilder::new(schema, CHUNK_ROWS),
                fast: true,
            },
            line: Vec::with_capacity(4096),
            line_no: 0,
            done: false,
        }
    }

    /// Reads and parses the next line; false at the end of the input.
    fn next_line(&mut self, report: &mut ErrorReport) -> Result<bool, IngestError> {
        // Most lines lie whole in the read buffer and are parsed where they are.
        let buffered = self.input.fill_buf()?;
        if buffered.is_empty() {
            return Ok(false);
        }
        if let Some(end) = memchr::memchr(b'\n', buffered) {
            self.line_no += 1;
            self.parser
                .parse_line(&buffered[..end], self.line_no, report);
            self.input.consume(end + 1);
            return Ok(true);
        }
        self.line.clear();
        let read = (&mut self.input)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut self.line)?;
        if read == 0 {
            return Ok(false);
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
            return Ok(true);
        }
        self.parser.parse_line(&self.line, self.line_no, report);
        Ok(true)
    }
}

impl LineParser {
    /// The field a key names. Schemas are short, so a scan beats hashing the key.
    fn field(&self, key: &str) -> Option<usize> {
        if self.schema.fields.len() <= 16 {
            self.schema.fields.iter().position(|f| f.name == key)
        } else {
            self.by_name.get(key).copied()
        }
    }

    /// Parses line `row` (its bytes, the newline included or not) into the builder.
    fn parse_line(&mut self, line: &[u8], row: u64, report: &mut ErrorReport) {
        let mut text = trim_ascii(line);
        if row == 1 {
            text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(text);
        }
        if text.is_empty() {
            return;
        }
        // A line's cells live on the stack for the usual schema, not in an allocation a line.
        let mut inline: [Cell<'_>; INLINE_FIELDS] = std::array::from_fn(|_| Cell::Null);
        let mut spilled = Vec::new();
        let cells: &mut [Cell<'_>] = if self.types.len() <= INLINE_FIELDS {
            &mut inline[..self.types.len()]
        } else {
            spilled.resize(self.types.len(), Cell::Null);
            &mut spilled
        };
        if self.fast && flat_json::parse(text, |k| self.field(k), &self.types, cells).is_ok() {
            self.builder.finish_row(
                row,
                cells,
                true,
                report,
                "required field is missing or null",
            );
            return;
        }
        cells.fill(Cell::Null);
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
        let mut ok = true;
        for (key, value) in entries {
            let Some(i) = self.field(&key.0) else {
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
            .finish_row(row, cells, ok, report, "required field is missing or null");
    }
}

/// Schemas up to this many fields parse a line without allocating its cells.
const INLINE_FIELDS: usize = 16;

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
        while !self.done && self.parser.builder.len() < CHUNK_ROWS {
            if !self.next_line(report)? {
                self.done = true;
            }
        }
        if self.parser.builder.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.parser.builder.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datanet::schema::FieldSpec;

    /// Every line of `input` read with the fast path and without: the same rows, values and
    /// report.
    fn both_ways(schema: &DatanetSchema, input: &str) -> (Vec<Chunk>, ErrorReport) {
        let read = |fast: bool| {
            let bytes = input.as_bytes().to_vec();
            let mut reader = JsonlReader::new(Box::new(std::io::Cursor::new(bytes)), schema);
            reader.parser.fast = fast;
            let mut report = ErrorReport::default();
            let mut chunks = Vec::new();
            while let Some(chunk) = reader.next_chunk(&mut report).expect("read") {
                chunks.push(chunk);
            }
            (chunks, report)
        };
        let (fast, fast_report) = read(true);
        let (general, general_report) = read(false);
        assert_eq!(fast.len(), general.len());
        for (a, b) in fast.iter().zip(&general) {
            assert_eq!(a.rows, b.rows);
            assert_eq!(a.batch, b.batch);
        }
        assert_eq!(
            serde_json::to_value(&fast_report).expect("json"),
            serde_json::to_value(&general_report).expect("json")
        );
        (fast, fast_report)
    }

    #[test]
    fn a_schema_wider_than_the_inline_cells_reads_alike() {
        let mut schema = DatanetSchema::text_only();
        for i in 0..INLINE_FIELDS + 4 {
            schema.fields.push(FieldSpec {
                name: format!("f{i}"),
                field_type: FieldType::Int64,
                required: false,
                description: None,
            });
        }
        let input =
            "{\"text\": \"wide\", \"f0\": 1, \"f19\": 20}\n{\"text\": \"bad\", \"f18\": \"x\"}\n";
        let (chunks, report) = both_ways(&schema, input);
        assert_eq!(chunks[0].rows, vec![1]);
        let last = chunks[0].batch.column(schema.fields.len() - 1);
        use arrow::array::AsArray;
        assert_eq!(
            last.as_primitive::<arrow::datatypes::Int64Type>().value(0),
            20
        );
        assert_eq!(report.total, 1);
        assert_eq!(report.errors[0].field.as_deref(), Some("f18"));
    }

    #[test]
    fn the_fast_path_reads_every_line_as_the_general_parser_does() {
        let field = |name: &str, field_type| FieldSpec {
            name: name.into(),
            field_type,
            required: false,
            description: None,
        };
        let mut schema = DatanetSchema::text_only();
        schema.fields.extend([
            field("n", FieldType::Int64),
            field("x", FieldType::Float64),
            field("ok", FieldType::Bool),
            field("at", FieldType::Timestamp),
            field("tags", FieldType::ListOfStrings),
        ]);
        let lines = [
            r#"{"text": "plain", "n": 42, "ok": true, "at": "2026-01-02T03:04:05Z", "tags": ["a", "b"]}"#,
            r#"{"text":"no spaces","n":-7,"x":3,"ok":false,"tags":[]}"#,
            r#"  {"text": "padded", "n": 0, "x": -12}  "#,
            r#"{"text": "fraction", "x": 1.5}"#,
            r#"{"text": "big", "n": 123456789012345678, "x": 1e300}"#,
            r#"{"text": "past 18 digits", "n": 1234567890123456789}"#,
            r#"{"text": "past i64", "n": 98765432109876543210}"#,
            r#"{"text": "minus zero", "n": -0, "x": -0}"#,
            r#"{"text": "float zero", "x": -0.0}"#,
            r#"{"text": "float as int", "n": 4.0}"#,
            r#"{"text": "esc\"aped \\ \u00e9 \n"}"#,
            "{\"text\": \"utf-8 \u{e9}\u{4e2d}\u{1f980} ok\"}",
            "{\"text\": \"tab\tinside\"}",
            r#"{"text": "nulls", "n": null, "x": null, "ok": null, "at": null, "tags": null}"#,
            r#"{"text": "dup", "text": "last wins"}"#,
            r#"{"text": "ts as micros", "at": 1700000000000000}"#,
            r#"{"text": "leading zero", "n": 007}"#,
            r#"{"text": "plus", "n": +1}"#,
            r#"{"text": "trailing comma",}"#,
            r#"{"text": "garbage after"} x"#,
            r#"{"text": "unknown", "nope": 1}"#,
            r#"{"text": "wrong type", "n": "seven"}"#,
            r#"{"text": "nested", "tags": [["a"]]}"#,
            r#"{"text": "object", "n": {"a": 1}}"#,
            r#"{"n": 1}"#,
            r#"{}"#,
            r#"[1, 2]"#,
            r#"{"text": "unterminated"#,
            r#"{"text": "bad ts", "at": "yesterday"}"#,
            r#"{"text": "tru", "ok": tru}"#,
            r#"{"text": "list of numbers", "tags": [1]}"#,
            "",
            r#"{"text": "nan", "x": NaN}"#,
        ];
        let input = lines.join("\n");
        let (chunks, report) = both_ways(&schema, &input);
        let rows: usize = chunks.iter().map(|c| c.rows.len()).sum();
        assert_eq!(rows, 14, "rows kept");
        assert_eq!(report.total, 18, "problems: {:?}", report.errors);
        // The usual lines do take the fast path.
        let types: Vec<FieldType> = schema.fields.iter().map(|f| f.field_type).collect();
        let find = |k: &str| schema.fields.iter().position(|f| f.name == k);
        for line in &lines[..3] {
            let mut cells = vec![Cell::Null; types.len()];
            assert_eq!(
                flat_json::parse(line.trim().as_bytes(), find, &types, &mut cells),
                Ok(()),
                "{line}"
            );
        }
        // Lines split across the read buffer's end read the same as lines inside it.
        let long: String = (0..40_000)
            .map(|i| format!("{{\"text\": \"record {i} {}\"}}\n", "z".repeat(i % 50)))
            .collect();
        let (chunks, report) = both_ways(&schema, &long);
        assert_eq!(chunks.iter().map(|c| c.rows.len()).sum::<usize>(), 40_000);
        assert_eq!(report.total, 0);
    }

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
