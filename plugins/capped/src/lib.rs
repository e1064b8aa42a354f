//! Pays in proportion to attribution score (times quality when `use_quality`), but no
//! contributor more than `max_share` of the pool: so that one prolific contributor cannot
//! take a whole answer's pool. What a capped contributor would have had above the cap goes
//! to the uncapped ones in proportion, round after round, and to the fallback once everyone
//! is at the cap. Penalties are withheld to the fallback, as `proportional` does.

use serde::Deserialize;
use tributary_sdk::reward::{
    scored, split_proportionally, sum_by_contributor, Request, RewardPolicy,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub max_share: f64,
    pub use_quality: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_share: 0.5,
            use_quality: false,
        }
    }
}

/// Each contributor's fraction of the pool with the cap applied (water-filling), and the
/// fallback's: they sum to 1.
pub fn fractions(earned: &[f64], kept: &[f64], cap: f64) -> (Vec<f64>, f64) {
    let total: f64 = earned.iter().sum();
    let mut f: Vec<f64> = earned
        .iter()
        .zip(kept)
        .map(|(e, k)| e * k / total)
        .collect();
    let mut fallback = 1.0 - f.iter().sum::<f64>();
    loop {
        let excess: f64 = f.iter().map(|x| (x - cap).max(0.0)).sum();
        if excess <= 0.0 {
            break;
        }
        for x in f.iter_mut() {
            *x = x.min(cap);
        }
        let open: f64 = f.iter().filter(|x| **x < cap).sum();
        if open <= 0.0 {
            fallback += excess;
            break;
        }
        for x in f.iter_mut().filter(|x| **x < cap) {
            *x += excess * *x / open;
        }
    }
    (f, fallback.max(0.0))
}

pub struct Capped;

impl RewardPolicy for Capped {
    type Config = Config;

    fn distribute(config: &Config, request: &Request) -> Result<Vec<(String, u128)>, String> {
        if !(config.max_share > 0.0 && config.max_share <= 1.0) {
            return Err(format!("max_share {} is not in (0, 1]", config.max_share));
        }
        let earned = sum_by_contributor(request.entries, |e| Some(scored(e, config.use_quality)));
        let pool = request.pool.amount;
        if earned.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Ok(vec![(request.pool.fallback.clone(), pool)]);
        }
        let weights: Vec<f64> = earned.iter().map(|(_, w)| *w).collect();
        let kept: Vec<f64> = earned.iter().map(|(a, _)| request.kept_weight(a)).collect();
        let (f, fallback) = fractions(&weights, &kept, config.max_share);
        let mut all = f.clone();
        all.push(fallback);
        let mut shares = split_proportionally(pool, &all);
        // Rounding must not lift anyone over the cap: whole units above it go to the fallback.
        let limit = (pool as f64 * config.max_share).floor() as u128;
        let last = shares.len() - 1;
        for i in 0..last {
            if shares[i] > limit {
                let over = shares[i] - limit;
                shares[i] = limit;
                shares[last] += over;
            }
        }
        let mut payouts: Vec<(String, u128)> = earned
            .into_iter()
            .map(|(a, _)| a)
            .zip(shares.iter().copied())
            .collect();
        payouts.push((request.pool.fallback.clone(), shares[last]));
        payouts.retain(|(_, u)| *u > 0);
        Ok(payouts)
    }
}

tributary_sdk::export_reward_policy!(Capped);

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_sdk::reward::{AttributionEntry, Pool};

    fn entry(contributor: &str, score: f64) -> AttributionEntry {
        AttributionEntry {
            record_id: "00".repeat(32),
            datanet: "d".into(),
            contributor: contributor.into(),
            score,
            quality: 1.0,
        }
    }

    fn run(entries: &[AttributionEntry], cap: f64) -> Vec<(String, u128)> {
        let request = Request {
            pool: Pool {
                amount: 1_000_000,
                fallback: "0xf0".into(),
            },
            attribution_id: "a",
            entries,
            datanets: &[],
            penalties: &[],
        };
        let config = Config {
            max_share: cap,
            use_quality: false,
        };
        let out = Capped::distribute(&config, &request).expect("pays");
        assert_eq!(out.iter().map(|(_, u)| u).sum::<u128>(), 1_000_000);
        out
    }

    #[test]
    fn nobody_passes_the_cap_and_the_excess_goes_to_the_others_first() {
        let out = run(
            &[entry("0xa", 0.8), entry("0xb", 0.15), entry("0xc", 0.05)],
            0.5,
        );
        // a at the cap; b and c share the other half 3 : 1.
        assert_eq!(
            out,
            vec![
                ("0xa".into(), 500_000),
                ("0xb".into(), 375_000),
                ("0xc".into(), 125_000)
            ]
        );
        // One contributor alone keeps the cap; the rest goes to the fallback.
        assert_eq!(
            run(&[entry("0xa", 1.0)], 0.3),
            vec![("0xa".into(), 300_000), ("0xf0".into(), 700_000)]
        );
        let (f, fallback) = fractions(&[0.5, 0.3, 0.2], &[1.0, 1.0, 1.0], 0.4);
        assert!((f.iter().sum::<f64>() + fallback - 1.0).abs() < 1e-12);
        assert!(f.iter().all(|x| *x <= 0.4 + 1e-12), "{f:?}");
    }
}
