//! Attribution records: what an attribution said, in a form anyone holding the pinned index
//! can recompute. The canonical encoding is the record's JSON without its id (fields in a
//! fixed order, integers only), and the id is the keccak256 of a domain tag and that
//! encoding, so that ids can be leaves of an epoch's Merkle tree and checked on chain.

use serde::{Deserialize, Serialize};

use super::trace::{RecordScore, Trace, TraceParams, SCORE_UNIT};
use super::{AttributionError, Index};
use crate::identity::Address;
use crate::merkle::keccak256;

/// The attribution method a record was made by.
pub const METHOD_SPAN: &str = "span";

/// Tag hashed before the encoding, so an id cannot be another kind of hash.
const DOMAIN: &[u8] = b"tributary:attribution:1\0";

/// A span of the output, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordSpan {
    pub start: u64,
    pub end: u64,
    pub count: u64,
}

/// One training record's share of the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoredRecord {
    /// 64 hex digits.
    pub record_id: String,
    /// EIP-55 address.
    pub contributor: String,
    /// Parts of `score_unit`.
    pub score: u64,
}

/// One contributor's share: the sum of their records'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoredContributor {
    pub contributor: String,
    pub score: u64,
}

impl From<&RecordScore> for ScoredRecord {
    fn from(r: &RecordScore) -> Self {
        Self {
            record_id: hex::encode(r.id),
            contributor: r.contributor.to_checksum(),
            score: r.score,
        }
    }
}

impl From<&(Address, u64)> for ScoredContributor {
    fn from((a, s): &(Address, u64)) -> Self {
        Self {
            contributor: a.to_checksum(),
            score: *s,
        }
    }
}

/// An attribution, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttributionRecord {
    /// keccak256 of the canonical encoding, 0x-prefixed hex; not part of the encoding.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The inference or request this attributes; one record per request id.
    pub request_id: String,
    pub method: String,
    /// The index (its content hash) and the tokenizer it was built with.
    pub index: String,
    pub tokenizer: String,
    pub datanet: Option<String>,
    pub version: Option<u32>,
    pub params: TraceParams,
    /// BLAKE3 of the output's token ids (u32, little-endian), hex.
    pub output_hash: String,
    pub output_tokens: u64,
    /// Rarest first.
    pub spans: Vec<RecordSpan>,
    /// Highest first; scores sum to `score_unit` when there is any span.
    pub records: Vec<ScoredRecord>,
    pub contributors: Vec<ScoredContributor>,
    pub score_unit: u64,
}

/// BLAKE3 of token ids as the record hashes them.
pub fn output_hash(output: &[u32]) -> String {
    let mut h = blake3::Hasher::new();
    for id in output {
        h.update(&id.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

impl AttributionRecord {
    /// The record of tracing `output` against `index`.
    pub fn from_trace(
        request_id: &str,
        index: &Index,
        params: &TraceParams,
        output: &[u32],
        trace: &Trace,
    ) -> Self {
        let mut record = Self {
            id: String::new(),
            request_id: request_id.to_string(),
            method: METHOD_SPAN.to_string(),
            index: index.meta.hash.clone(),
            tokenizer: index.meta.tokenizer_hash.clone(),
            datanet: index.meta.datanet.clone(),
            version: index.meta.version,
            params: params.clone(),
            output_hash: output_hash(output),
            output_tokens: output.len() as u64,
            spans: trace
                .spans
                .iter()
                .map(|s| RecordSpan {
                    start: s.start as u64,
                    end: s.end as u64,
                    count: s.count,
                })
                .collect(),
            records: trace.records.iter().map(ScoredRecord::from).collect(),
            contributors: trace
                .contributors
                .iter()
                .map(ScoredContributor::from)
                .collect(),
            score_unit: SCORE_UNIT,
        };
        record.id = format!("0x{}", hex::encode(record.digest()));
        record
    }

    /// The canonical encoding: the record's JSON without its id.
    pub fn canonical(&self) -> Vec<u8> {
        let mut unnamed = self.clone();
        unnamed.id = String::new();
        // A struct of strings, integers, options and vectors always serializes.
        serde_json::to_vec(&unnamed).unwrap_or_default()
    }

    /// keccak256 of the domain tag and the canonical encoding.
    pub fn digest(&self) -> [u8; 32] {
        let mut bytes = DOMAIN.to_vec();
        bytes.extend_from_slice(&self.canonical());
        keccak256(&bytes)
    }

    /// Checks that the id is the digest of the contents and that the scores add up.
    pub fn check(&self) -> Result<(), AttributionError> {
        if self.id != format!("0x{}", hex::encode(self.digest())) {
            return Err(AttributionError::invalid(
                "id",
                "is not the hash of the record",
            ));
        }
        let sum: u64 = self.records.iter().map(|r| r.score).sum();
        let by_contributor: u64 = self.contributors.iter().map(|c| c.score).sum();
        let expected = if self.spans.is_empty() {
            0
        } else {
            self.score_unit
        };
        if sum != expected || by_contributor != expected {
            return Err(AttributionError::invalid(
                "records",
                format!("scores sum to {sum} and {by_contributor}, not {expected}"),
            ));
        }
        Ok(())
    }
}
