//! The books as stored, in the `rewards` column family:
//!
//! - `terms/{model}`: a model's [`ModelTerms`](super::ModelTerms);
//! - `fee/{completion}`: a completion's [`FeeRecord`], the key that makes accounting
//!   idempotent (a completion with one is never charged again);
//! - `acct/{address}`: an account's [`AccountTotals`];
//! - `earn/{epoch:020}/{address}`: what the account earned in that epoch (decimal), the
//!   leaves of the epoch's payout tree;
//! - `pay/{address}/{epoch:020}/{completion}`: one [`Payment`], the account's history;
//! - `flag/{contributor}/{datanet}/{record}`: a curator's [`Flag`](super::flags::Flag);
//! - `epoch/{epoch:020}`: a closed epoch (`crate::ledger::ClosedEpoch`);
//! - `claimed/{epoch:020}/{address}`: what the account has claimed of that epoch (decimal),
//!   as the epoch's ledger last reported it;
//! - `settled-with/{epoch:020}`: the adapter config (JSON) a settled epoch's receipt was made
//!   under, which verifying it uses; kept apart from the epoch, which readers see, since a
//!   config may hold a node URL with a key in it;
//! - `ledger`: the operator's ledger settings (`crate::ledger::LedgerSettings`).
//!
//! Addresses in keys are lowercase hex, so an account is one key whatever its casing.

use serde::{Deserialize, Serialize};

use super::money::{units, Fee};

/// One account's share of a completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Payout {
    /// EIP-55 address.
    pub account: String,
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub amount: u128,
    /// `platform`, `owner`, `contributor` or `fallback`.
    pub role: String,
}

/// Whether a completion's fee was paid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FeeStatus {
    Paid,
    /// Held whole, with the reason: nothing of it was paid.
    Escrow,
}

/// What a completion cost and where the money went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeeRecord {
    pub completion: String,
    pub model: String,
    /// The epoch the payouts accrue in.
    pub epoch: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub fee: Fee,
    pub status: FeeStatus,
    /// Why the fee is in escrow.
    pub reason: Option<String>,
    /// The reward-policy plugin that split the pool.
    pub policy: String,
    /// The attribution records the pool was split by.
    pub attributions: Vec<String>,
    /// Every account paid, summing to the fee when paid.
    pub payouts: Vec<Payout>,
    /// Unix seconds.
    pub at: i64,
}

impl FeeRecord {
    /// Conservation: a paid fee's payouts sum to it exactly, an escrowed one pays nothing.
    pub fn check(&self) -> Result<(), String> {
        self.fee.check().map_err(|e| e.to_string())?;
        let sum = self
            .payouts
            .iter()
            .try_fold(0u128, |acc, p| acc.checked_add(p.amount))
            .ok_or("payouts overflow 128 bits")?;
        let expected = match self.status {
            FeeStatus::Paid => self.fee.total,
            FeeStatus::Escrow => 0,
        };
        if sum != expected {
            return Err(format!(
                "completion {}: payouts sum to {sum}, expected {expected}",
                self.completion
            ));
        }
        Ok(())
    }
}

/// An account's running totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccountTotals {
    /// Everything ever credited.
    #[serde(with = "units")]
    pub earned: u128,
    /// What settled claims took out.
    #[serde(with = "units")]
    pub claimed: u128,
}

/// One credit to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Payment {
    pub completion: String,
    pub model: String,
    pub epoch: u64,
    #[serde(with = "units")]
    #[schema(value_type = String)]
    pub amount: u128,
    /// The roles it was paid under, joined by `+` (`owner+fallback`).
    pub role: String,
    /// The attribution records behind it (`GET /v1/attributions/{id}`).
    pub attributions: Vec<String>,
    pub at: i64,
}

pub fn account_key(address: &str) -> String {
    format!("acct/{}", address.to_ascii_lowercase())
}

pub fn earn_prefix(epoch: u64) -> String {
    format!("earn/{epoch:020}/")
}

pub fn earn_key(epoch: u64, address: &str) -> String {
    format!("{}{}", earn_prefix(epoch), address.to_ascii_lowercase())
}

pub fn payment_prefix(address: &str) -> String {
    format!("pay/{}/", address.to_ascii_lowercase())
}

pub fn payment_key(address: &str, epoch: u64, completion: &str) -> String {
    format!("{}{epoch:020}/{completion}", payment_prefix(address))
}

pub fn fee_key(completion: &str) -> String {
    format!("fee/{completion}")
}

pub fn terms_key(model: &str) -> String {
    format!("terms/{model}")
}

pub fn flag_prefix(contributor: &str) -> String {
    format!("flag/{}/", contributor.to_ascii_lowercase())
}

pub fn flag_key(contributor: &str, datanet: &str, record: &str) -> String {
    format!("{}{datanet}/{record}", flag_prefix(contributor))
}

pub fn epoch_key(epoch: u64) -> String {
    format!("epoch/{epoch:020}")
}

pub fn claimed_key(epoch: u64, address: &str) -> String {
    format!("claimed/{epoch:020}/{}", address.to_ascii_lowercase())
}

pub fn settled_with_key(epoch: u64) -> String {
    format!("settled-with/{epoch:020}")
}

pub const LEDGER_KEY: &str = "ledger";

/// Reads a decimal amount as stored under an `earn/` key.
pub fn parse_units(bytes: &[u8]) -> Option<u128> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}
