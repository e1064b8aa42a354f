//! Ledger-adapter plugins: settle a closed epoch, verify a receipt later, and (0.1.1) report
//! what accounts have claimed.

use super::bindings::ledger_adapter::exports::tributary::plugins::ledger as wit;
use super::bindings::types;
use super::reward::amount;
use super::runtime::{Bound, LedgerBound, LoadedPlugin, OutputSize};
use super::state::StateChanges;
use super::PluginError;

/// A closed epoch's payouts, in base units.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub epoch: u64,
    /// 0x-prefixed hex of the payout Merkle root.
    pub payout_root: String,
    pub total: u128,
    pub payouts: Vec<(String, u128)>,
}

/// Where a ledger recorded a settlement.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    pub ledger: String,
    pub reference: String,
    pub details: String,
}

impl OutputSize for wit::Receipt {
    fn output_size(&self) -> usize {
        self.ledger.len() + self.reference.len() + self.details.len()
    }
}

impl OutputSize for bool {
    fn output_size(&self) -> usize {
        1
    }
}

fn to_wit(s: &Settlement) -> Result<wit::Settlement, PluginError> {
    let sum = s
        .payouts
        .iter()
        .try_fold(0u128, |acc, (_, u)| acc.checked_add(*u));
    if sum != Some(s.total) {
        return Err(PluginError::Io(format!(
            "settlement of epoch {}: payouts do not sum to its total {}",
            s.epoch, s.total
        )));
    }
    Ok(wit::Settlement {
        epoch: s.epoch,
        payout_root: s.payout_root.clone(),
        total: amount(s.total),
        payouts: s
            .payouts
            .iter()
            .map(|(account, units)| types::Payout {
                account: account.clone(),
                amount: amount(*units),
            })
            .collect(),
    })
}

pub fn settle(
    plugin: &LoadedPlugin,
    settlement: &Settlement,
    config: &str,
    state: &mut StateChanges,
) -> Result<Receipt, PluginError> {
    let s = to_wit(settlement)?;
    let r = plugin.call("settle", state, |store, bound| match bound {
        Bound::LedgerAdapter(l) => l
            .ledger
            .tributary_plugins_ledger()
            .call_settle(store, &s, config),
        _ => Err(wasmtime::Error::msg("not a ledger adapter")),
    })?;
    Ok(Receipt {
        ledger: r.ledger,
        reference: r.reference,
        details: r.details,
    })
}

pub fn verify(
    plugin: &LoadedPlugin,
    settlement: &Settlement,
    receipt: &Receipt,
    config: &str,
    state: &mut StateChanges,
) -> Result<bool, PluginError> {
    let s = to_wit(settlement)?;
    let r = wit::Receipt {
        ledger: receipt.ledger.clone(),
        reference: receipt.reference.clone(),
        details: receipt.details.clone(),
    };
    plugin.call("verify", state, |store, bound| match bound {
        Bound::LedgerAdapter(l) => l
            .ledger
            .tributary_plugins_ledger()
            .call_verify(store, &s, &r, config),
        _ => Err(wasmtime::Error::msg("not a ledger adapter")),
    })
}

/// What `claimed` answers: per account, or nothing when the ledger keeps no record.
type Claimed = Option<Vec<types::Payout>>;

impl OutputSize for Claimed {
    fn output_size(&self) -> usize {
        self.as_ref()
            .map_or(1, |c| c.iter().map(|p| p.account.len() + 16).sum())
    }
}

/// What each account has claimed of a settled epoch, as the ledger reports it; `None` when
/// the adapter has no `claims` interface (built for 0.1.0) or keeps no record of claims.
pub fn claimed(
    plugin: &LoadedPlugin,
    settlement: &Settlement,
    receipt: &Receipt,
    config: &str,
    state: &mut StateChanges,
) -> Result<Option<Vec<(String, u128)>>, PluginError> {
    let s = to_wit(settlement)?;
    let r = wit::Receipt {
        ledger: receipt.ledger.clone(),
        reference: receipt.reference.clone(),
        details: receipt.details.clone(),
    };
    let answer = plugin.call("claimed", state, |store, bound| match bound {
        Bound::LedgerAdapter(LedgerBound {
            claimed: Some(f), ..
        }) => {
            let f = f
                .typed::<(&wit::Settlement, &wit::Receipt, &str), (Result<Claimed, String>,)>(
                    &*store,
                )?;
            Ok(f.call(store, (&s, &r, config))?.0)
        }
        Bound::LedgerAdapter(_) => Ok(Ok(None)),
        _ => Err(wasmtime::Error::msg("not a ledger adapter")),
    })?;
    Ok(answer.map(|claims| {
        claims
            .into_iter()
            .map(|p| (p.account, super::reward::units(p.amount)))
            .collect()
    }))
}
