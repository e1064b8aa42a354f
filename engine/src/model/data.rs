//! Training text from a version's records: one text field, or a prompt and a response field
//! rendered as a two-turn conversation by the model's chat template. Reads a version's
//! Parquet export or a JSONL file.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use super::chat::{ChatTemplate, Message};

/// Which fields of a record a model learns from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TextSource {
    /// Chat data: the user's turn and the assistant's answer.
    Chat { prompt: String, response: String },
    /// Plain text.
    Field(String),
}

impl TextSource {
    fn fields(&self) -> Vec<&str> {
        match self {
            Self::Field(f) => vec![f],
            Self::Chat { prompt, response } => vec![prompt, response],
        }
    }

    fn render(&self, values: &[&str], template: &ChatTemplate) -> Result<String, String> {
        match self {
            Self::Field(_) => Ok(values[0].to_string()),
            Self::Chat { .. } => template
                .render(
                    &[
                        Message::new("user", values[0]),
                        Message::new("assistant", values[1]),
                    ],
                    false,
                )
                .map_err(|e| e.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DataError {
    pub path: String,
    pub message: String,
}

fn data_error(path: &Path, message: impl std::fmt::Display) -> DataError {
    DataError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The training texts of a Parquet (`.parquet`) or JSONL file, in file order. A record whose
/// fields are null or missing is skipped only in Parquet exports, where optional fields are
/// null; a JSONL line without them is an error that names the line.
pub fn read_texts(
    path: &Path,
    source: &TextSource,
    template: &ChatTemplate,
) -> Result<Vec<String>, DataError> {
    if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet(path, source, template)
    } else {
        read_jsonl(path, source, template)
    }
}

fn read_parquet(
    path: &Path,
    source: &TextSource,
    template: &ChatTemplate,
) -> Result<Vec<String>, DataError> {
    let file = File::open(path).map_err(|e| data_error(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(8192).build())
        .map_err(|e| data_error(path, e))?;
    let mut texts = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| data_error(path, e))?;
        let columns = source
            .fields()
            .into_iter()
            .map(|name| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| data_error(path, format!("no column {name:?}")))?
                    .as_string_opt::<i32>()
                    .ok_or_else(|| data_error(path, format!("column {name:?} is not text")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if columns.iter().any(|c| c.is_null(row)) {
                continue;
            }
            let values: Vec<&str> = columns.iter().map(|c| c.value(row)).collect();
            texts.push(
                source
                    .render(&values, template)
                    .map_err(|e| data_error(path, e))?,
            );
        }
    }
    Ok(texts)
}

fn read_jsonl(
    path: &Path,
    source: &TextSource,
    template: &ChatTemplate,
) -> Result<Vec<String>, DataError> {
    let file = File::open(path).map_err(|e| data_error(path, e))?;
    let mut texts = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let at = |m: String| data_error(path, format!("line {}: {m}", i + 1));
        let line = line.map_err(|e| at(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let values = source
            .fields()
            .into_iter()
            .map(|f| {
                value
                    .get(f)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| at(format!("no string field {f:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        texts.push(source.render(&values, template).map_err(at)?);
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_records_render_through_the_template_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.jsonl");
        std::fs::write(
            &path,
            "{\"q\": \"2+2?\", \"a\": \"4\"}\n\n{\"q\": \"Hi\", \"a\": \"Hello\"}\n",
        )
        .expect("write");
        let chat = TextSource::Chat {
            prompt: "q".into(),
            response: "a".into(),
        };
        let texts = read_texts(&path, &chat, &ChatTemplate::chatml()).expect("read");
        assert_eq!(texts.len(), 2);
        assert_eq!(
            texts[0],
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        );
        let err = read_texts(
            &path,
            &TextSource::Field("text".into()),
            &ChatTemplate::chatml(),
        )
        .expect_err("no text field");
        assert!(err.to_string().contains("line 1") && err.to_string().contains("\"text\""));
    }
}
