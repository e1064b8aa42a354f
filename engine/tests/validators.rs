//! The validation hook: a validator in the chain rejects rows with a reason and scores the rest,
//! and the scores land in the `_quality` column; a failing validator stores nothing.

use std::sync::Arc;

mod common;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use tributary::datanet::validate::{
    Validation, Validator, ValidatorChain, ValidatorError, Verdict,
};
use tributary::plugin::state::StateChanges;
use tributary::{Datanet, DatanetError, Datanets, Key};

/// Rejects texts that mention "spam"; scores the rest by length (longer is better, up to 1).
struct LengthScore;

impl Validator for LengthScore {
    fn name(&self) -> &str {
        "length-score"
    }
    fn validate(
        &self,
        datanet: &Datanet,
        _config: &str,
        batch: &RecordBatch,
        _state: &mut StateChanges,
    ) -> Result<Validation, ValidatorError> {
        let text = batch
            .column_by_name(&datanet.spec.schema.text_field)
            .expect("text")
            .as_string::<i32>();
        let verdicts = (0..text.len())
            .map(|i| {
                let t = text.value(i);
                if t.contains("spam") {
                    Verdict::Reject {
                        reason: "mentions spam".into(),
                    }
                } else {
                    Verdict::Accept {
                        quality: (t.len() as f64 / 100.0).min(1.0),
                    }
                }
            })
            .collect();
        Ok(Validation {
            verdicts,
            rewrites: Vec::new(),
        })
    }
}

struct Broken;

impl Validator for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn validate(
        &self,
        _: &Datanet,
        _: &str,
        _: &RecordBatch,
        _: &mut StateChanges,
    ) -> Result<Validation, ValidatorError> {
        Ok(Validation::default())
    }
}

const SPEC: &str = r#"{"id": "notes", "name": "Notes", "license": "CC0-1.0", "invalid_rows": "skip", "review": "auto",
  "schema": {"fields": [{"name": "text", "type": "string", "required": true}], "text_field": "text"}}"#;
const ROWS: &str = "{\"text\": \"short\"}\n{\"text\": \"buy spam now\"}\n{\"text\": \"a much longer note that goes on for a while about stock\"}\n";

/// A fresh data directory with the "notes" Datanet, whose contributions pass `validator`.
fn notes_with(validator: Arc<dyn Validator>) -> (tempfile::TempDir, Datanets) {
    let dir = tempfile::tempdir().expect("tempdir");
    let datanets = Datanets::open(dir.path())
        .expect("open")
        .with_validators(ValidatorChain::new(vec![validator]));
    datanets
        .create(serde_json::from_str(SPEC).expect("spec"), "carol")
        .expect("create");
    (dir, datanets)
}

fn contribute(datanets: &Datanets) -> Result<tributary::Batch, DatanetError> {
    let key = Key::generate();
    common::contribute_jsonl(datanets, "notes", ROWS, &key, &key)
}

#[test]
fn validators_reject_rows_and_set_quality() {
    let (_dir, datanets) = notes_with(Arc::new(LengthScore));
    let batch = contribute(&datanets).expect("contribute");
    assert_eq!((batch.accepted, batch.invalid), (2, 1));
    assert_eq!(batch.errors.errors[0].row, 2);
    assert!(batch.errors.errors[0]
        .message
        .contains("length-score: mentions spam"));

    let version = datanets.publish("notes").expect("publish");
    let path = datanets.export("notes", version.version).expect("export");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).expect("file"),
    )
    .expect("parquet")
    .build()
    .expect("reader");
    let mut qualities: Vec<f64> = reader
        .flat_map(|b| {
            let b = b.expect("batch");
            let q = b
                .column_by_name("_quality")
                .expect("_quality")
                .as_primitive::<Float64Type>()
                .clone();
            q.values().to_vec()
        })
        .collect();
    qualities.sort_by(f64::total_cmp);
    assert_eq!(qualities, vec![0.05, 0.55]);
}

#[test]
fn a_failing_validator_stores_nothing() {
    let (_dir, datanets) = notes_with(Arc::new(Broken));
    let err = contribute(&datanets).expect_err("a broken validator fails the batch");
    assert!(
        matches!(err, DatanetError::Validator(ref e) if e.validator == "broken"),
        "{err}"
    );
    assert_eq!(datanets.get("notes").expect("get").batches, 0);
    assert!(datanets.batches("notes", None).expect("batches").is_empty());
}
