//! Pays each contributor in proportion to the summed attribution scores of their records
//! (times each record's quality when `use_quality`), times the weight they keep after
//! penalties. What penalties take away goes to the pool's fallback account, so the payouts
//! always sum to the pool exactly.

use serde::Deserialize;
use tributary_sdk::reward::{split_proportionally, Request, RewardPolicy};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub use_quality: bool,
}

/// Each contributor's weight, in order of first appearance.
pub fn weights(config: &Config, request: &Request) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for entry in request.entries {
        let score = entry.score.max(0.0)
            * if config.use_quality {
                entry.quality.clamp(0.0, 1.0)
            } else {
                1.0
            };
        match out
            .iter_mut()
            .find(|(a, _)| a.eq_ignore_ascii_case(&entry.contributor))
        {
            Some((_, w)) => *w += score,
            None => out.push((entry.contributor.clone(), score)),
        }
    }
    out
}

pub struct Proportional;

impl RewardPolicy for Proportional {
    type Config = Config;

    fn distribute(config: &Config, request: &Request) -> Result<Vec<(String, u128)>, String> {
        let earned = weights(config, request);
        let total_weight: f64 = earned.iter().map(|(_, w)| w).sum();
        if total_weight <= 0.0 {
            return Ok(vec![(request.pool.fallback.clone(), request.pool.amount)]);
        }
        // Split among everyone first, then move what penalties withhold to the fallback.
        let mut weights: Vec<f64> = earned
            .iter()
            .map(|(a, w)| w * request.kept_weight(a))
            .collect();
        let withheld: f64 =
            earned.iter().map(|(_, w)| w).sum::<f64>() - weights.iter().sum::<f64>();
        weights.push(withheld.max(0.0));
        let shares = split_proportionally(request.pool.amount, &weights);
        let mut payouts: Vec<(String, u128)> = earned
            .into_iter()
            .map(|(a, _)| a)
            .zip(shares.iter().copied())
            .collect();
        payouts.push((request.pool.fallback.clone(), shares[shares.len() - 1]));
        payouts.retain(|(_, units)| *units > 0);
        Ok(payouts)
    }
}

tributary_sdk::export_reward_policy!(Proportional);
