//! Pays each contributor in proportion to the summed attribution scores of their records
//! (times each record's quality when `use_quality`), times the weight they keep after
//! penalties. What penalties take away goes to the pool's fallback account, so the payouts
//! always sum to the pool exactly.

use serde::Deserialize;
use tributary_sdk::reward::{
    pay_withholding_penalties, scored, sum_by_contributor, Request, RewardPolicy,
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub use_quality: bool,
}

/// Each contributor's weight, in order of first appearance.
pub fn weights(config: &Config, request: &Request) -> Vec<(String, f64)> {
    sum_by_contributor(request.entries, |e| Some(scored(e, config.use_quality)))
}

pub struct Proportional;

impl RewardPolicy for Proportional {
    type Config = Config;

    fn distribute(config: &Config, request: &Request) -> Result<Vec<(String, u128)>, String> {
        Ok(pay_withholding_penalties(request, weights(config, request)))
    }
}

tributary_sdk::export_reward_policy!(Proportional);
