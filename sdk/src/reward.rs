//! Reward policies: split a completion's contributor pool among the accounts whose records
//! shaped it. The engine checks every answer: payouts go to accounts in the attribution or
//! the fallback and sum exactly to the pool, or the answer is refused.

use crate::bindings::reward_policy::exports::tributary::plugins::policy as wit;
use crate::bindings::types::{self, DatanetInfo};
use crate::{amount_from_wit, amount_to_wit};

pub use types::AttributionEntry;

/// The money to share, in base units, and where the remainder goes.
#[derive(Debug, Clone)]
pub struct Pool {
    pub amount: u128,
    pub fallback: String,
}

/// A curator's flag: the contributor keeps `weight` (0..=1) of what they would earn.
#[derive(Debug, Clone)]
pub struct Penalty {
    pub contributor: String,
    pub weight: f64,
    pub reason: String,
}

/// What a policy is given.
pub struct Request<'a> {
    pub pool: Pool,
    pub attribution_id: &'a str,
    pub entries: &'a [AttributionEntry],
    pub datanets: &'a [DatanetInfo],
    pub penalties: &'a [Penalty],
}

impl Request<'_> {
    /// The weight a contributor keeps after penalties (1 when not flagged).
    pub fn kept_weight(&self, contributor: &str) -> f64 {
        self.penalties
            .iter()
            .filter(|p| p.contributor.eq_ignore_ascii_case(contributor))
            .map(|p| p.weight.clamp(0.0, 1.0))
            .fold(1.0, f64::min)
    }
}

pub trait RewardPolicy {
    type Config: serde::de::DeserializeOwned + 'static;

    /// Payouts as (account, base units).
    fn distribute(config: &Self::Config, request: &Request) -> Result<Vec<(String, u128)>, String>;
}

/// Splits `total` in proportion to `weights` exactly: each share is rounded down and the
/// units left over go one each to the largest remainders (ties to the earlier entry), so the
/// shares always sum to `total`. With no positive weight everything goes nowhere: the caller
/// pays its fallback.
pub fn split_proportionally(total: u128, weights: &[f64]) -> Vec<u128> {
    let sum: f64 = weights.iter().filter(|w| w.is_finite() && **w > 0.0).sum();
    if sum <= 0.0 || total == 0 {
        return vec![0; weights.len()];
    }
    // Work in fixed point so the split does not depend on float rounding of `total`.
    const SCALE: u128 = 1 << 52;
    let fixed: Vec<u128> = weights
        .iter()
        .map(|w| {
            if w.is_finite() && *w > 0.0 {
                ((w / sum) * SCALE as f64) as u128
            } else {
                0
            }
        })
        .collect();
    let denominator: u128 = fixed.iter().sum::<u128>().max(1);
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let (whole, part) = (total / denominator, total % denominator);
    for (i, f) in fixed.iter().enumerate() {
        // total * f / denominator without overflow: whole * f + part * f / denominator.
        let exact = whole * f + part * f / denominator;
        shares.push(exact);
        remainders.push(((part * f) % denominator, i));
    }
    let mut left = total - shares.iter().sum::<u128>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders.into_iter().filter(|(_, i)| fixed[*i] > 0) {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
}

/// Each contributor's summed weight over `entries`, in order of first appearance (addresses
/// compared without case); `weight` gives an entry's, and entries it gives `None` are left out.
pub fn sum_by_contributor(
    entries: &[AttributionEntry],
    weight: impl Fn(&AttributionEntry) -> Option<f64>,
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for e in entries {
        let Some(w) = weight(e) else { continue };
        match out
            .iter_mut()
            .find(|(a, _)| a.eq_ignore_ascii_case(&e.contributor))
        {
            Some((_, total)) => *total += w,
            None => out.push((e.contributor.clone(), w)),
        }
    }
    out
}

/// An entry's score, times its quality (clamped to 0..=1) when `use_quality`.
pub fn scored(e: &AttributionEntry, use_quality: bool) -> f64 {
    e.score.max(0.0)
        * if use_quality {
            e.quality.clamp(0.0, 1.0)
        } else {
            1.0
        }
}

/// Pays the pool in proportion to `earned`, each contributor keeping the weight their
/// penalties leave them; what penalties withhold, and the whole pool when nobody earned
/// anything, goes to the fallback. The payouts sum to the pool exactly.
pub fn pay_withholding_penalties(
    request: &Request,
    earned: Vec<(String, f64)>,
) -> Vec<(String, u128)> {
    let total: f64 = earned.iter().map(|(_, w)| w.max(0.0)).sum();
    if total <= 0.0 {
        return vec![(request.pool.fallback.clone(), request.pool.amount)];
    }
    let mut weights: Vec<f64> = earned
        .iter()
        .map(|(a, w)| w.max(0.0) * request.kept_weight(a))
        .collect();
    weights.push((total - weights.iter().sum::<f64>()).max(0.0));
    let shares = split_proportionally(request.pool.amount, &weights);
    let mut payouts: Vec<(String, u128)> = earned
        .into_iter()
        .map(|(a, _)| a)
        .zip(shares.iter().copied())
        .collect();
    payouts.push((request.pool.fallback.clone(), shares[shares.len() - 1]));
    payouts.retain(|(_, units)| *units > 0);
    payouts
}

#[doc(hidden)]
pub fn run<P: RewardPolicy>(
    pool: wit::FeePool,
    attribution: wit::Attribution,
    datanets: Vec<DatanetInfo>,
    penalties: Vec<wit::Penalty>,
    config: String,
) -> Result<Vec<types::Payout>, String> {
    let parsed = crate::cached::parse_config::<P::Config>(&config)?;
    let penalties: Vec<Penalty> = penalties
        .into_iter()
        .map(|p| Penalty {
            contributor: p.contributor,
            weight: p.weight,
            reason: p.reason,
        })
        .collect();
    let request = Request {
        pool: Pool {
            amount: amount_from_wit(pool.amount),
            fallback: pool.fallback,
        },
        attribution_id: &attribution.id,
        entries: &attribution.entries,
        datanets: &datanets,
        penalties: &penalties,
    };
    Ok(P::distribute(&parsed, &request)?
        .into_iter()
        .map(|(account, units)| types::Payout {
            account,
            amount: amount_to_wit(units),
        })
        .collect())
}

/// Exports `$ty`, which implements [`RewardPolicy`], as the component's reward policy.
#[macro_export]
macro_rules! export_reward_policy {
    ($ty:ty) => {
        // Only components export the world; on the host the plugin is a library for its tests.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::reward_policy::exports::tributary::plugins::policy as __wit;
            use $crate::__private::types as __types;

            struct __Export;

            impl __wit::Guest for __Export {
                fn distribute(
                    pool: __wit::FeePool,
                    attribution: __wit::Attribution,
                    datanets: ::std::vec::Vec<__types::DatanetInfo>,
                    penalties: ::std::vec::Vec<__wit::Penalty>,
                    config: ::std::string::String,
                ) -> ::std::result::Result<::std::vec::Vec<__types::Payout>, ::std::string::String> {
                    $crate::reward::run::<$ty>(pool, attribution, datanets, penalties, config)
                }
            }

            $crate::__private::reward_policy::export_world!(__Export with_types_in $crate::__private::reward_policy);
            $crate::__stamp_api_version!();
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportional_splits_sum_exactly_to_the_total() {
        for (total, weights) in [
            (100u128, vec![1.0, 1.0, 1.0]),
            (1, vec![0.5, 0.5]),
            (u128::MAX, vec![0.2, 0.3, 0.5]),
            (7, vec![0.0, 2.0, f64::NAN, 1.0]),
            (1_000_003, vec![1e-9, 1.0, 3.0]),
        ] {
            let shares = split_proportionally(total, &weights);
            assert_eq!(shares.iter().sum::<u128>(), total, "{weights:?}");
            for (share, w) in shares.iter().zip(&weights) {
                if !(w.is_finite() && *w > 0.0) {
                    assert_eq!(*share, 0);
                }
            }
        }
        assert_eq!(
            split_proportionally(100, &[1.0, 1.0, 1.0]),
            vec![34, 33, 33]
        );
        assert_eq!(split_proportionally(10, &[0.0]), vec![0]);
    }
}
