//! Reward-policy plugins: the host hands a policy the pool and the attribution, and checks
//! its answer before anything is paid. Payouts go only to contributors the attribution
//! names or to the fallback, and sum exactly to the pool; any other answer is refused.

use std::collections::BTreeMap;

use super::bindings::reward_policy::exports::tributary::plugins::policy as wit;
use super::bindings::types;
use super::runtime::{Bound, LoadedPlugin, OutputSize};
use super::state::StateChanges;
use super::PluginError;

/// Joins a WIT amount into base units.
pub fn units(amount: types::Amount) -> u128 {
    (u128::from(amount.high) << 64) | u128::from(amount.low)
}

/// Splits base units into a WIT amount.
pub fn amount(units: u128) -> types::Amount {
    types::Amount {
        high: (units >> 64) as u64,
        low: units as u64,
    }
}

/// One record's share of an output, as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub record_id: String,
    pub datanet: String,
    pub contributor: String,
    pub score: f64,
    pub quality: f64,
}

/// A curator's flag on a contributor: they keep `weight` of their reward.
#[derive(Debug, Clone, PartialEq)]
pub struct Penalty {
    pub contributor: String,
    pub weight: f64,
    pub reason: String,
}

/// What a policy is asked to split.
#[derive(Debug, Clone)]
pub struct Distribution {
    pub pool: u128,
    pub fallback: String,
    pub attribution_id: String,
    pub entries: Vec<Entry>,
    pub penalties: Vec<Penalty>,
}

impl OutputSize for Vec<types::Payout> {
    fn output_size(&self) -> usize {
        self.iter().map(|p| p.account.len() + 16).sum()
    }
}

/// Checks payouts against the rules and merges payouts to the same account.
pub fn check_payouts(
    request: &Distribution,
    payouts: &[(String, u128)],
) -> Result<BTreeMap<String, u128>, String> {
    let known = |account: &str| {
        account.eq_ignore_ascii_case(&request.fallback)
            || request
                .entries
                .iter()
                .any(|e| e.contributor.eq_ignore_ascii_case(account))
    };
    let mut merged: BTreeMap<String, u128> = BTreeMap::new();
    let mut sum: u128 = 0;
    for (account, units) in payouts {
        if !known(account) {
            return Err(format!(
                "pays {account}, which is neither in attribution {} nor the fallback",
                request.attribution_id
            ));
        }
        sum = sum.checked_add(*units).ok_or("payouts overflow 128 bits")?;
        *merged.entry(account.to_ascii_lowercase()).or_default() += units;
    }
    if sum != request.pool {
        return Err(format!(
            "payouts sum to {sum} base units, but the pool is {}",
            request.pool
        ));
    }
    Ok(merged)
}

/// Asks the policy plugin to split a pool and checks its answer.
pub fn distribute(
    plugin: &LoadedPlugin,
    request: &Distribution,
    datanets: &[types::DatanetInfo],
    config: &str,
    state: &mut StateChanges,
) -> Result<Vec<(String, u128)>, PluginError> {
    let pool = wit::FeePool {
        amount: amount(request.pool),
        fallback: request.fallback.clone(),
    };
    let attribution = wit::Attribution {
        id: request.attribution_id.clone(),
        entries: request
            .entries
            .iter()
            .map(|e| types::AttributionEntry {
                record_id: e.record_id.clone(),
                datanet: e.datanet.clone(),
                contributor: e.contributor.clone(),
                score: e.score,
                quality: e.quality,
            })
            .collect(),
    };
    let penalties: Vec<wit::Penalty> = request
        .penalties
        .iter()
        .map(|p| wit::Penalty {
            contributor: p.contributor.clone(),
            weight: p.weight,
            reason: p.reason.clone(),
        })
        .collect();
    let payouts = plugin.call("distribute", state, |store, bound| match bound {
        Bound::RewardPolicy(p) => p.tributary_plugins_policy().call_distribute(
            store,
            &pool,
            &attribution,
            datanets,
            &penalties,
            config,
        ),
        _ => Err(wasmtime::Error::msg("not a reward policy")),
    })?;
    let payouts: Vec<(String, u128)> = payouts
        .into_iter()
        .map(|p| (p.account, units(p.amount)))
        .collect();
    check_payouts(request, &payouts).map_err(|message| PluginError::Refused {
        plugin: plugin.id().to_string(),
        call: "distribute",
        message,
    })?;
    Ok(payouts)
}
