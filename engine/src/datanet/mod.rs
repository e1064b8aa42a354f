//! Datanets: curated datasets with a schema, contributed to in signed batches, reviewed, and
//! published as immutable versions.
//!
//! The data types come first here; [`service::Datanets`] holds the operations over them.

pub mod contribute;
pub mod file_commitment;
pub mod ingest;
mod known;
mod new_records;
mod pending_index;
pub mod record;
pub mod schema;
pub mod segment;
pub mod service;
pub mod validate;
pub mod versions;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::identity::Address;
use ingest::{ErrorReport, InputFormat};
use schema::DatanetSchema;

/// Who can read a Datanet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone can read it, without a token.
    #[default]
    Public,
    /// Only admins, its curators and tokens scoped to it can read it.
    Private,
}

/// Whether new batches wait for a curator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReviewMode {
    #[default]
    Manual,
    Auto,
}

/// What happens to a batch with bad rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvalidRows {
    /// The whole batch is refused and nothing of it is stored.
    #[default]
    Reject,
    /// Bad rows are left out and reported; the rest is accepted.
    Skip,
}

/// What happens to a batch when a validator fails as a whole (traps, times out, breaks a
/// limit), rather than judging rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnValidatorFailure {
    /// The batch is refused and nothing of it is stored.
    #[default]
    Reject,
    /// The batch is stored for the curator to review, whatever the review mode, with the
    /// failure as its review reason; rows after the failure are not validated.
    Hold,
}

/// A validator plugin attached to a Datanet, with the config it runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatorAttachment {
    /// The installed plugin's id.
    pub plugin: String,
    /// Checked against the plugin's config schema when attached.
    #[serde(default = "empty_config")]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

fn empty_config() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// What a curator sends to create a Datanet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatanetSpec {
    /// Lowercase letters, digits and `-`, 1 to 64 characters; stable forever.
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// An SPDX licence identifier or expression, for example `CC-BY-4.0`.
    pub license: String,
    pub schema: DatanetSchema,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default)]
    pub review: ReviewMode,
    #[serde(default)]
    pub invalid_rows: InvalidRows,
    /// Validator plugins every contribution passes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validators: Vec<ValidatorAttachment>,
    #[serde(default)]
    pub on_validator_failure: OnValidatorFailure,
}

/// Changes a curator can make after creation; the schema and licence stay fixed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatanetUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub visibility: Option<Visibility>,
    pub review: Option<ReviewMode>,
    pub invalid_rows: Option<InvalidRows>,
    pub validators: Option<Vec<ValidatorAttachment>>,
    pub on_validator_failure: Option<OnValidatorFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Datanet {
    #[serde(flatten)]
    pub spec: DatanetSpec,
    /// Subjects (token holders) who curate it.
    pub curators: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Batches received so far; the next batch gets this number plus one.
    pub batches: u64,
    /// Versions published so far; the latest version's number.
    pub versions: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    Pending,
    Approved,
    Rejected,
}

/// A record of the batch already in the Datanet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Duplicate {
    /// Row of this upload.
    pub row: u64,
    pub record_id: String,
    /// The batch that contributed the record first.
    pub first_batch: u64,
}

/// One contribution batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Batch {
    pub datanet: String,
    pub id: u64,
    pub status: BatchStatus,
    pub contributor: Address,
    /// The signed commitment: the Merkle root of the ids of the batch's valid rows.
    pub merkle_root: String,
    pub signature: String,
    pub format: InputFormat,
    pub submitted_at: DateTime<Utc>,
    /// Valid rows received (new and duplicate).
    pub rows: u64,
    /// New records stored by this batch.
    pub accepted: u64,
    pub duplicates: u64,
    /// Rows left out because they broke the schema (only when the Datanet skips bad rows).
    pub invalid: u64,
    /// The first duplicates, each with the batch that holds the record.
    pub duplicate_examples: Vec<Duplicate>,
    pub errors: ErrorReport,
    /// Segment file, relative to the data directory; none when nothing new was stored.
    pub segment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_reason: Option<String>,
}

/// A segment as a version sees it: rows minus its deletion vector.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionSegment {
    pub batch: u64,
    pub file: String,
    pub rows: u64,
    /// Rows of the segment that this version leaves out (withdrawn), ascending.
    pub deleted: Vec<u32>,
}

/// A published version: an immutable manifest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Version {
    pub datanet: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub records: u64,
    /// keccak256 root of an OpenZeppelin `StandardMerkleTree` over the record ids (`bytes32`).
    pub merkle_root: String,
    pub schema: DatanetSchema,
    pub license: String,
    pub segments: Vec<VersionSegment>,
    /// File of the Merkle tree's nodes, relative to the data directory, for proofs.
    pub tree: String,
}

/// Where a record lives and who contributed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLocation {
    pub batch: u64,
    pub row: u32,
    pub contributor: Address,
}

impl RecordLocation {
    pub const ENCODED_LEN: usize = 32;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.batch.to_be_bytes());
        out[8..12].copy_from_slice(&self.row.to_be_bytes());
        out[12..].copy_from_slice(&self.contributor.0);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let mut batch = [0u8; 8];
        batch.copy_from_slice(&bytes[..8]);
        let mut row = [0u8; 4];
        row.copy_from_slice(&bytes[8..12]);
        let mut address = [0u8; 20];
        address.copy_from_slice(&bytes[12..]);
        Some(Self {
            batch: u64::from_be_bytes(batch),
            row: u32::from_be_bytes(row),
            contributor: Address(address),
        })
    }
}

/// What the API says about one record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordInfo {
    pub record_id: String,
    pub datanet: String,
    pub batch: u64,
    pub row: u32,
    pub contributor: Address,
    pub batch_status: BatchStatus,
    pub withdrawn: bool,
}

/// An inclusion proof of a record in a version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InclusionProof {
    pub datanet: String,
    pub version: u32,
    pub record_id: String,
    /// `keccak256(keccak256(record_id))`, the `StandardMerkleTree` leaf for `bytes32`.
    pub leaf: String,
    pub proof: Vec<String>,
    pub root: String,
}

/// A contributor's request to withdraw records, signed with their key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    pub record_ids: Vec<String>,
    pub contributor: Address,
    /// EIP-191 signature over [`withdrawal_message`].
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WithdrawalReceipt {
    pub datanet: String,
    pub withdrawn: Vec<String>,
    /// Records that were already withdrawn.
    pub already_withdrawn: Vec<String>,
}

/// The text a contributor signs to withdraw records. It is not 32 bytes long, so it can never
/// be mistaken for a batch commitment.
pub fn withdrawal_message(datanet: &str, root: &crate::merkle::Hash) -> String {
    format!(
        "Tributary withdrawal\ndatanet: {datanet}\nrecords root: 0x{}",
        hex::encode(root)
    )
}

pub fn hex32(bytes: &[u8; 32]) -> String {
    format!("0x{}", hex::encode(bytes))
}

pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}
