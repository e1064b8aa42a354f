//! Pays only records whose attribution score reaches `min_score`: a sliver of an answer is
//! noise, not a contribution. The eligible records pay their contributors in proportion to
//! score (times quality when `use_quality`) times the weight each keeps after penalties;
//! what penalties take is shared among the others, not withheld. With nobody eligible, the
//! pool goes to the fallback.

use serde::Deserialize;
use tributary_sdk::reward::{
    scored, split_proportionally, sum_by_contributor, Request, RewardPolicy,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub min_score: f64,
    pub use_quality: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_score: 0.05,
            use_quality: false,
        }
    }
}

pub struct Threshold;

impl RewardPolicy for Threshold {
    type Config = Config;

    fn distribute(config: &Config, request: &Request) -> Result<Vec<(String, u128)>, String> {
        let mut weights = sum_by_contributor(request.entries, |e| {
            (e.score >= config.min_score).then(|| scored(e, config.use_quality))
        });
        for (account, w) in weights.iter_mut() {
            *w *= request.kept_weight(account);
        }
        if weights.iter().all(|(_, w)| *w <= 0.0) {
            return Ok(vec![(request.pool.fallback.clone(), request.pool.amount)]);
        }
        let shares = split_proportionally(
            request.pool.amount,
            &weights.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
        );
        Ok(weights
            .into_iter()
            .map(|(a, _)| a)
            .zip(shares)
            .filter(|(_, units)| *units > 0)
            .collect())
    }
}

tributary_sdk::export_reward_policy!(Threshold);

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_sdk::reward::{AttributionEntry, Penalty, Pool};

    fn entry(contributor: &str, score: f64) -> AttributionEntry {
        AttributionEntry {
            record_id: "00".repeat(32),
            datanet: "d".into(),
            contributor: contributor.into(),
            score,
            quality: 1.0,
        }
    }

    fn run(
        entries: &[AttributionEntry],
        penalties: &[Penalty],
        min_score: f64,
    ) -> Vec<(String, u128)> {
        let request = Request {
            pool: Pool {
                amount: 1_000_003,
                fallback: "0xf0".into(),
            },
            attribution_id: "a",
            entries,
            datanets: &[],
            penalties,
        };
        let config = Config {
            min_score,
            use_quality: false,
        };
        let out = Threshold::distribute(&config, &request).expect("pays");
        assert_eq!(out.iter().map(|(_, u)| u).sum::<u128>(), 1_000_003);
        out
    }

    #[test]
    fn small_scores_pay_nothing_and_penalised_shares_go_to_the_others() {
        let entries = [entry("0xa", 0.6), entry("0xb", 0.36), entry("0xc", 0.04)];
        let out = run(&entries, &[], 0.05);
        assert!(out.iter().all(|(a, _)| a != "0xc"), "{out:?}");
        // 0.6 : 0.36 of the whole pool.
        assert_eq!(out[0], ("0xa".into(), 625_002));
        let penalty = Penalty {
            contributor: "0xb".into(),
            weight: 0.0,
            reason: "flagged".into(),
        };
        assert_eq!(
            run(&entries, &[penalty], 0.05),
            vec![("0xa".into(), 1_000_003)]
        );
        assert_eq!(run(&entries, &[], 0.9), vec![("0xf0".into(), 1_000_003)]);
    }
}
