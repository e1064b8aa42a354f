//! A model's commercial terms: its price, how each fee splits, who is paid the platform's and
//! the owner's shares, and which reward-policy plugin splits the contributor pool.

use serde::{Deserialize, Serialize};

use super::money::{Price, Split};
use super::RewardsError;
use crate::identity::Address;

/// The reward policy used when terms name none.
pub const DEFAULT_POLICY: &str = "proportional";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelTerms {
    pub price: Price,
    #[serde(default)]
    pub split: Split,
    /// Receives the platform's share.
    pub platform: Address,
    /// Receives the model owner's share.
    pub owner: Address,
    /// Receives what the policy gives no contributor (an answer nobody's data shaped, shares
    /// penalties withhold); the owner when absent.
    #[serde(default)]
    pub fallback: Option<Address>,
    /// The reward-policy plugin's id.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// The policy's settings, checked against its config schema.
    #[serde(default = "empty_config")]
    #[schema(value_type = Object)]
    pub policy_config: serde_json::Value,
}

fn default_policy() -> String {
    DEFAULT_POLICY.into()
}

fn empty_config() -> serde_json::Value {
    serde_json::json!({})
}

impl ModelTerms {
    pub fn check(&self) -> Result<(), RewardsError> {
        self.split.check()?;
        if !self.policy_config.is_object() {
            return Err(RewardsError::invalid(
                "policy_config",
                "must be a JSON object",
            ));
        }
        if self.policy.is_empty() {
            return Err(RewardsError::invalid(
                "policy",
                "must name a reward-policy plugin",
            ));
        }
        Ok(())
    }

    pub fn fallback(&self) -> Address {
        self.fallback.unwrap_or(self.owner)
    }
}
