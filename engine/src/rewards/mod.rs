//! Rewards: what each completion costs, who is paid, and the books that say so.
//!
//! A completion's fee comes from its model's [`terms::ModelTerms`]; the platform's and the
//! owner's shares come off the top and the rest, the contributor pool, goes to the model's
//! reward-policy plugin with the completion's attribution, the records' quality and the
//! contributors' penalties. The host checks the plugin's payouts (known accounts, summing
//! exactly to the pool) and commits the fee, every balance change and the account histories
//! in one RocksDB batch keyed by the completion id; a policy that fails or breaks the rules
//! leaves the whole fee in escrow with the reason. Balances accrue per epoch; closing one
//! freezes them into a payout Merkle tree (`crate::ledger`).
//!
//! The attribution record is filed before the fee, in its own batch, under a request id made
//! of the completion's id: filing it again returns the same record. A crash between the two
//! leaves a record and no fee, and the next charge of the completion (asking for its
//! attribution does it) finds the record and commits the fee; it can never leave a fee
//! without its record, nor a balance without its fee.

pub mod book;
pub mod flags;
pub mod money;
pub mod service;
pub mod terms;

pub use money::{Fee, Price, Split};
pub use service::Rewards;
pub use terms::ModelTerms;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RewardsError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("model {0} has no terms: set them with PUT /v1/models/{{id}}/terms")]
    NoTerms(String),
    #[error("{0}")]
    NotFound(String),
    /// Money that would not add up: a bug, never committed.
    #[error("conservation check failed: {0}")]
    Conservation(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
    /// A ledger that failed to answer, or answered what cannot be booked.
    #[error("{0}")]
    Ledger(String),
}

impl RewardsError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}
