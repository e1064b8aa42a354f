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
//! A completion's attribution records are filed in the same batch as its fee: the policy
//! runs on the traced records before any lock is taken, then the records, the fee, the
//! balances and the histories commit together under the book's lock
//! (`crate::api::rewards::attribute_and_charge`), so a crash leaves all of them or none. The
//! records' request ids are made of the completion's id: asking again finds them, and the
//! fee record keyed by the completion id stops a second charge. Should the charge fail to
//! write (storage; a policy's failure is not one, it sends the fee to escrow), the records
//! are filed alone and the next ask of the completion charges it.

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
