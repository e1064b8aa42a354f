//! Settling closed epochs through the configured ledger-adapter plugin. A try that fails is
//! kept with its error and tried again later, each wait twice the one before (from 2 s to
//! 10 minutes); adapters must make settling an epoch again return the same receipt, so a
//! retry after a lost answer records the epoch once.

use super::epochs::{self, earnings};
use super::{ClosedEpoch, LedgerSettings, SettlementStatus};
use crate::plugin::ledger::{self, Settlement};
use crate::plugin::state::StateChanges;
use crate::plugin::PluginKind;
use crate::rewards::book;
use crate::rewards::{Rewards, RewardsError};
use crate::store::CF_REWARDS;

const FIRST_WAIT_S: i64 = 2;
const LONGEST_WAIT_S: i64 = 600;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Sets the ledger future epochs settle on; its config must fit the adapter's schema.
pub fn configure(
    rewards: &Rewards,
    settings: LedgerSettings,
) -> Result<LedgerSettings, RewardsError> {
    let plugins = rewards
        .plugins()
        .ok_or_else(|| RewardsError::invalid("adapter", "this server runs without plugins"))?;
    plugins
        .get_kind(&settings.adapter, PluginKind::LedgerAdapter)
        .map_err(|e| RewardsError::invalid("adapter", e.to_string()))?;
    plugins
        .check_config(&settings.adapter, &settings.config)
        .map_err(|e| RewardsError::invalid("config", e.to_string()))?;
    let mut batch = rewards.store().batch();
    batch.put_json(CF_REWARDS, book::LEDGER_KEY, &settings)?;
    batch.commit()?;
    Ok(settings)
}

pub fn settings(rewards: &Rewards) -> Result<Option<LedgerSettings>, RewardsError> {
    Ok(rewards
        .store()
        .get_json(CF_REWARDS, book::LEDGER_KEY.as_bytes())?)
}

/// The settlement of a closed epoch as the adapter is given it.
pub fn settlement(rewards: &Rewards, closed: &ClosedEpoch) -> Result<Settlement, RewardsError> {
    let payouts: Vec<(String, u128)> = earnings(rewards, closed.epoch)?
        .into_iter()
        .map(|(a, u)| (a.to_checksum(), u))
        .collect();
    Ok(Settlement {
        epoch: closed.epoch,
        payout_root: closed.payout_root.clone(),
        total: closed.total,
        payouts,
    })
}

/// The adapter config `closed` settles with now: the ledger settings' while they still name
/// its adapter (so an operator can correct a pending epoch's node or contract), else none.
fn current_config(rewards: &Rewards, adapter: &str) -> Result<serde_json::Value, String> {
    Ok(settings(rewards)
        .map_err(|e| e.to_string())?
        .filter(|s| s.adapter == adapter)
        .map(|s| s.config)
        .unwrap_or_else(|| serde_json::json!({})))
}

/// The config a settled epoch's receipt was made under (epochs settled before it was kept
/// have the current one).
pub(super) fn settled_config(
    rewards: &Rewards,
    epoch: u64,
    adapter: &str,
) -> Result<serde_json::Value, String> {
    let kept: Option<serde_json::Value> = rewards
        .store()
        .get_json(CF_REWARDS, book::settled_with_key(epoch).as_bytes())
        .map_err(|e| e.to_string())?;
    match kept {
        Some(config) => Ok(config),
        None => current_config(rewards, adapter),
    }
}

/// Calls `f` with the adapter plugin, the epoch's settlement and `config`; any failure comes
/// back as its message.
pub(super) fn with_adapter<T>(
    rewards: &Rewards,
    closed: &ClosedEpoch,
    adapter: &str,
    config: &serde_json::Value,
    f: impl FnOnce(
        &crate::plugin::LoadedPlugin,
        &Settlement,
        &str,
    ) -> Result<T, crate::plugin::PluginError>,
) -> Result<T, String> {
    let plugins = rewards
        .plugins()
        .ok_or("this server runs without plugins")?;
    let plugin = plugins
        .get_kind(adapter, PluginKind::LedgerAdapter)
        .map_err(|e| e.to_string())?;
    let s = settlement(rewards, closed).map_err(|e| e.to_string())?;
    f(&plugin, &s, &config.to_string()).map_err(|e| e.to_string())
}

/// Tries to settle `epoch` now, whatever its schedule; returns the epoch as it then stands.
/// A settled epoch is returned as it is.
pub fn attempt(rewards: &Rewards, epoch: u64) -> Result<ClosedEpoch, RewardsError> {
    // The state is read under the lock: an attempt that waited finds the epoch settled.
    let _settling = rewards.lock_settling();
    let mut closed = epochs::get(rewards, epoch)?;
    let Some(state) = closed.settlement.clone() else {
        return Err(RewardsError::invalid(
            "epoch",
            format!("epoch {epoch} closed with no ledger configured"),
        ));
    };
    if state.status == SettlementStatus::Settled {
        return Ok(closed);
    }
    let mut changes = StateChanges::default();
    let config = current_config(rewards, &state.adapter);
    let outcome = config.as_ref().map_err(Clone::clone).and_then(|config| {
        with_adapter(
            rewards,
            &closed,
            &state.adapter,
            config,
            |plugin, s, config| ledger::settle(plugin, s, config, &mut changes),
        )
    });
    let mut next = state;
    next.attempts += 1;
    match outcome {
        Ok(receipt) => {
            next.status = SettlementStatus::Settled;
            next.last_error = None;
            next.receipt = Some(receipt);
        }
        Err(e) => {
            let wait =
                (FIRST_WAIT_S << next.attempts.min(20).saturating_sub(1)).min(LONGEST_WAIT_S);
            tracing::warn!(epoch, adapter = %next.adapter, attempt = next.attempts, "settlement failed: {e}; next try in {wait} s");
            next.last_error = Some(e);
            next.next_attempt_at = now() + wait;
        }
    }
    closed.settlement = Some(next);
    let _book = rewards.lock_book();
    let mut batch = rewards.store().batch();
    batch.put_json(CF_REWARDS, book::epoch_key(epoch), &closed)?;
    if let (Some(SettlementStatus::Settled), Ok(config)) =
        (closed.settlement.as_ref().map(|s| s.status), &config)
    {
        batch.put_json(CF_REWARDS, book::settled_with_key(epoch), config)?;
    }
    changes.write_to(rewards.store(), &mut batch)?;
    batch.commit()?;
    Ok(closed)
}

/// Tries every pending settlement whose time has come; returns how many settled.
pub fn due(rewards: &Rewards) -> Result<usize, RewardsError> {
    let mut settled = 0;
    let t = now();
    for closed in epochs::list(rewards)? {
        let Some(s) = &closed.settlement else {
            continue;
        };
        if s.status == SettlementStatus::Pending && s.next_attempt_at <= t {
            let after = attempt(rewards, closed.epoch)?;
            if after
                .settlement
                .is_some_and(|s| s.status == SettlementStatus::Settled)
            {
                settled += 1;
            }
        }
    }
    Ok(settled)
}

/// Whether a settled epoch's receipt still proves it on its ledger, or the adapter's error.
pub type Verdict = Result<bool, String>;

/// Each settled epoch with its [`Verdict`].
pub fn verify_all(rewards: &Rewards) -> Result<Vec<(u64, Verdict)>, RewardsError> {
    let mut out = Vec::new();
    for closed in epochs::list(rewards)? {
        let Some(state) = &closed.settlement else {
            continue;
        };
        let Some(receipt) = &state.receipt else {
            continue;
        };
        let verdict = settled_config(rewards, closed.epoch, &state.adapter).and_then(|config| {
            with_adapter(
                rewards,
                &closed,
                &state.adapter,
                &config,
                |plugin, s, config| {
                    ledger::verify(plugin, s, receipt, config, &mut StateChanges::default())
                },
            )
        });
        out.push((closed.epoch, verdict));
    }
    Ok(out)
}
