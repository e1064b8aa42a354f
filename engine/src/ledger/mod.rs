//! Settlement: closing an epoch freezes what every account earned in it into a payout
//! Merkle tree (OpenZeppelin's `StandardMerkleTree` of `(address, uint256)`), committed
//! with the root over the epoch's attribution records; a ledger-adapter plugin then records
//! the epoch somewhere others can check, retried with backoff until it takes.

pub mod claims;
pub mod epochs;
pub mod settle;

use serde::{Deserialize, Serialize};

use crate::plugin::ledger::Receipt;
use crate::rewards::money::units;

/// The operator's choice of ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// The ledger-adapter plugin's id.
    pub adapter: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// How an epoch's settlement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SettlementStatus {
    /// Not yet tried, or failed and waiting for its next try.
    Pending,
    Settled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SettlementState {
    pub adapter: String,
    pub status: SettlementStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix seconds of the next try, while pending.
    pub next_attempt_at: i64,
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<Receipt>,
}

/// A closed epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClosedEpoch {
    pub epoch: u64,
    /// keccak256 Merkle root of the epoch's attribution record ids (0x hex, zero when none).
    pub root: String,
    pub attributions: u64,
    /// Root of the payout tree over `(address, uint256)` leaves (zero when nobody earned).
    pub payout_root: String,
    /// What the epoch pays in all.
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub total: u128,
    pub accounts: u64,
    /// What accounts have claimed of `total`, as the ledger last reported it (zero for
    /// ledgers that keep no record of claims).
    #[serde(default, with = "units")]
    #[schema(value_type = String)]
    pub claimed: u128,
    pub closed_at: i64,
    /// Absent when no ledger was configured at close.
    pub settlement: Option<SettlementState>,
}

/// A contributor's claim on a closed epoch, as a Merkle distributor checks it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Claim {
    pub epoch: u64,
    /// EIP-55.
    pub account: String,
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub amount: u128,
    /// What the account has claimed of `amount`, as the ledger last reported it.
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub claimed: u128,
    /// keccak256(keccak256(abi.encode(account, amount))), 0x hex.
    pub leaf: String,
    pub proof: Vec<String>,
    pub root: String,
    /// The account's claim as the settling ledger issued it, when its receipt carries
    /// per-account claims (`evm-sigclaim`: amount and signature for `SigDispersal.claim`).
    #[schema(value_type = Option<Object>)]
    pub ledger_claim: Option<serde_json::Value>,
}
