//! Curators' flags on records. A flagged record's contributor carries a penalty into every
//! reward policy: they keep `weight` (0 to 1) of what they would earn, the lowest weight of
//! their flags. The flag stays on record with who set it and why.

use serde::{Deserialize, Serialize};

use super::RewardsError;
use crate::identity::Address;

/// Why a record was flagged.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum FlagKind {
    LowQuality,
    Adversarial,
}

impl FlagKind {
    /// The weight a contributor keeps when the request gives none.
    pub fn default_weight(self) -> f64 {
        match self {
            Self::LowQuality => 0.5,
            Self::Adversarial => 0.0,
        }
    }
}

/// What a curator asks.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagRequest {
    pub kind: FlagKind,
    pub reason: String,
    /// The share of their rewards the contributor keeps, 0 to 1; by kind when absent (0.5
    /// for low quality, 0 for adversarial).
    #[serde(default)]
    pub weight: Option<f64>,
}

/// A flag as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Flag {
    pub datanet: String,
    pub record_id: String,
    pub contributor: Address,
    pub kind: FlagKind,
    pub reason: String,
    pub weight: f64,
    /// The curator's token subject.
    pub by: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

impl FlagRequest {
    pub fn weight(&self) -> Result<f64, RewardsError> {
        let w = self.weight.unwrap_or(self.kind.default_weight());
        if !(0.0..=1.0).contains(&w) {
            return Err(RewardsError::invalid(
                "weight",
                format!("{w} is not between 0 and 1"),
            ));
        }
        if self.reason.trim().is_empty() {
            return Err(RewardsError::invalid(
                "reason",
                "say why the record is flagged",
            ));
        }
        Ok(w)
    }
}
