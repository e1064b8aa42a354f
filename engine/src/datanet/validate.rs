//! The validation hook of ingest. After the native schema checks, each chunk of rows passes
//! through the Datanet's validator chain, which may reject rows (with a reason) and scores
//! the rest with a quality in 0..=1 that lands in the `_quality` column. The WASM validator
//! plugins implement [`Validator`]; an empty chain accepts everything with quality 1.
//!
//! Validators run on the server only, after the contributor signed: the signature covers the
//! rows the contributor sent, and validators decide which of them the Datanet keeps.

use std::sync::Arc;

use arrow::array::RecordBatch;

use super::ingest::{Chunk, ErrorReport};
use super::Datanet;

/// A validator's word on one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accept { quality: f64 },
    Reject { reason: String },
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
    /// One verdict per row of `batch`, in order.
    fn validate(
        &self,
        datanet: &Datanet,
        batch: &RecordBatch,
    ) -> Result<Vec<Verdict>, ValidatorError>;
}

/// What the chain decided for a chunk.
pub struct Judgement {
    pub keep: Vec<bool>,
    pub quality: Vec<f64>,
}

#[derive(Clone, Default)]
pub struct ValidatorChain {
    validators: Vec<Arc<dyn Validator>>,
}

impl ValidatorChain {
    pub fn new(validators: Vec<Arc<dyn Validator>>) -> Self {
        Self { validators }
    }

    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    /// Runs every validator over the chunk. A row is kept if all accept it; its quality is the
    /// lowest any validator gave. Rejections go into `report`, naming the validator.
    pub fn judge(
        &self,
        datanet: &Datanet,
        chunk: &Chunk,
        report: &mut ErrorReport,
    ) -> Result<Judgement, ValidatorError> {
        let n = chunk.batch.num_rows();
        let mut keep = vec![true; n];
        let mut quality = vec![1.0f64; n];
        for validator in &self.validators {
            let verdicts = validator.validate(datanet, &chunk.batch)?;
            if verdicts.len() != n {
                return Err(ValidatorError {
                    validator: validator.name().to_string(),
                    message: format!("answered {} verdicts for {n} rows", verdicts.len()),
                });
            }
            for (i, verdict) in verdicts.into_iter().enumerate() {
                match verdict {
                    Verdict::Accept { quality: q } if (0.0..=1.0).contains(&q) => {
                        quality[i] = quality[i].min(q);
                    }
                    Verdict::Accept { quality: q } => {
                        return Err(ValidatorError {
                            validator: validator.name().to_string(),
                            message: format!("quality {q} is outside 0..=1"),
                        })
                    }
                    Verdict::Reject { reason } => {
                        if keep[i] {
                            report.push(
                                chunk.rows[i],
                                None,
                                format!("{}: {reason}", validator.name()),
                            );
                        }
                        keep[i] = false;
                    }
                }
            }
        }
        Ok(Judgement { keep, quality })
    }
}
