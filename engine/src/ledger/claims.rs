//! What accounts have claimed of settled epochs. Claiming happens on the ledger (a
//! distributor contract pays whoever proves their share), so the engine asks the adapter
//! that settled the epoch, where it exports 0.1.1's `claims`, and books what it reports:
//! per account and epoch under `claimed/`, summed into the account's `claimed` and the
//! epoch's. The ledger is the truth: a report replaces the last one (a claim undone by a
//! chain reorganisation is undone here too), but never beyond what the epoch owes. The
//! background task asks only epochs with something left to claim whose ledger tracks
//! claims; `POST /v1/epochs/{n}/claims/sync` asks any settled epoch.

use std::collections::BTreeMap;

use super::epochs;
use super::settle::{settled_config, with_adapter};
use super::{ClosedEpoch, SettlementStatus};
use crate::identity::Address;
use crate::plugin::ledger;
use crate::plugin::state::StateChanges;
use crate::rewards::book::{self, AccountTotals};
use crate::rewards::{Rewards, RewardsError};
use crate::store::CF_REWARDS;

/// The outcome of asking one epoch's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// The epoch is not settled yet, or its ledger keeps no record of claims; what was
    /// booked before stands.
    NotTracked { claimed: u128 },
    /// The claims now booked, and how many accounts' changed.
    Claims { claimed: u128, changed: usize },
}

fn conflict(epoch: u64, adapter: &str, what: String) -> RewardsError {
    RewardsError::Ledger(format!(
        "epoch {epoch}: ledger adapter {adapter} reported {what}; nothing was booked"
    ))
}

/// Checks a report against what the epoch owes: each account once, owed, and no more.
fn checked(
    epoch: u64,
    adapter: &str,
    owed: &BTreeMap<String, u128>,
    report: Vec<(String, u128)>,
) -> Result<BTreeMap<String, u128>, RewardsError> {
    let mut claims = BTreeMap::new();
    for (account, units) in report {
        let address: Address = account.parse().map_err(|e| {
            conflict(
                epoch,
                adapter,
                format!("an account {account:?} that is not an address ({e})"),
            )
        })?;
        let key = address.to_checksum();
        let Some(due) = owed.get(&key) else {
            return Err(conflict(
                epoch,
                adapter,
                format!("a claim by {key}, who earned nothing in it"),
            ));
        };
        if units > *due {
            return Err(conflict(
                epoch,
                adapter,
                format!("{key} claimed {units}, more than the {due} it earned"),
            ));
        }
        if claims.insert(key.clone(), units).is_some() {
            return Err(conflict(epoch, adapter, format!("{key} twice")));
        }
    }
    Ok(claims)
}

/// Asks the ledger of `epoch` what has been claimed and books it.
pub fn sync(rewards: &Rewards, epoch: u64) -> Result<Synced, RewardsError> {
    // One ask at a time, each report booked before the next is made: an older report never
    // lands over a newer one.
    let _settling = rewards.lock_settling();
    let closed = epochs::get(rewards, epoch)?;
    let untracked = Synced::NotTracked {
        claimed: closed.claimed,
    };
    let Some(state) = closed.settlement.as_ref() else {
        return Ok(untracked);
    };
    let Some(receipt) = state
        .receipt
        .as_ref()
        .filter(|_| state.status == SettlementStatus::Settled)
    else {
        return Ok(untracked);
    };
    let config = settled_config(rewards, epoch, &state.adapter).map_err(RewardsError::Ledger)?;
    // What the epoch owes is the settlement the adapter is given: its earnings are read once.
    let mut owed = BTreeMap::new();
    let report = with_adapter(
        rewards,
        &closed,
        &state.adapter,
        &config,
        |plugin, s, config| {
            owed = s.payouts.iter().cloned().collect();
            ledger::claimed(plugin, s, receipt, config, &mut StateChanges::default())
        },
    )
    .map_err(RewardsError::Ledger)?;
    let Some(report) = report else {
        rewards.claims_untracked(epoch);
        return Ok(untracked);
    };
    let claims = checked(epoch, &state.adapter, &owed, report)?;
    book_claims(rewards, closed, &owed, &claims)
}

/// Writes `claims` (the whole report for the epoch) over the last one, in one batch.
fn book_claims(
    rewards: &Rewards,
    mut closed: ClosedEpoch,
    owed: &BTreeMap<String, u128>,
    claims: &BTreeMap<String, u128>,
) -> Result<Synced, RewardsError> {
    let epoch = closed.epoch;
    let _book = rewards.lock_book();
    let store = rewards.store();
    let mut batch = store.batch();
    let mut changed = 0;
    for account in owed.keys() {
        let key = book::claimed_key(epoch, account);
        let before = store
            .get(CF_REWARDS, key.as_bytes())?
            .and_then(|v| book::parse_units(&v))
            .unwrap_or(0);
        let now = claims.get(account).copied().unwrap_or(0);
        if now == before {
            continue;
        }
        changed += 1;
        let account_key = book::account_key(account);
        let mut totals: AccountTotals = store
            .get_json(CF_REWARDS, account_key.as_bytes())?
            .unwrap_or_default();
        // Both stay within what the account earned: `now` is at most the epoch's share,
        // and `before` was booked the same way.
        totals.claimed = totals
            .claimed
            .checked_sub(before)
            .and_then(|c| c.checked_add(now))
            .ok_or_else(|| {
                RewardsError::Conservation(format!(
                    "{account}'s claimed total {} cannot take back {before}",
                    totals.claimed
                ))
            })?;
        batch.put_json(CF_REWARDS, account_key, &totals)?;
        batch.put(CF_REWARDS, key, now.to_string());
    }
    let claimed = claims.values().sum();
    if changed > 0 || closed.claimed != claimed {
        // The epoch as read before the adapter was asked: only settling changes it, and
        // settling holds the lock this ask holds.
        closed.claimed = claimed;
        batch.put_json(CF_REWARDS, book::epoch_key(epoch), &closed)?;
    }
    batch.commit()?;
    Ok(Synced::Claims { claimed, changed })
}

/// Asks every settled epoch with something left to claim; returns how many accounts'
/// claims changed. One epoch's failure is logged and does not stop the others.
pub fn sync_all(rewards: &Rewards) -> Result<usize, RewardsError> {
    let mut changed = 0;
    for closed in epochs::list(rewards)? {
        let settled = closed
            .settlement
            .as_ref()
            .is_some_and(|s| s.status == SettlementStatus::Settled);
        let done = closed.claimed == closed.total;
        if !settled || done || rewards.is_claims_untracked(closed.epoch) {
            continue;
        }
        match sync(rewards, closed.epoch) {
            Ok(Synced::Claims { changed: n, .. }) => changed += n,
            Ok(Synced::NotTracked { .. }) => {}
            Err(e) => tracing::warn!(epoch = closed.epoch, "reading claims: {e}"),
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_refused_whole_when_any_claim_is_not_owed() {
        let alice = "0x00000000000000000000000000000000000000A1".to_string();
        let bob = "0x00000000000000000000000000000000000000b2".to_string();
        let owed: BTreeMap<String, u128> = [(alice.clone(), 10)].into_iter().collect();
        let ok = checked(0, "x", &owed, vec![(alice.to_lowercase(), 10)]).expect("owed");
        assert_eq!(ok.get(&alice), Some(&10));
        for report in [
            vec![(alice.clone(), 11)],
            vec![(bob, 1)],
            vec![(alice.clone(), 1), (alice.clone(), 2)],
            vec![("0x12".to_string(), 1)],
        ] {
            let e = checked(0, "x", &owed, report)
                .expect_err("refused")
                .to_string();
            assert!(e.contains("nothing was booked"), "{e}");
        }
    }
}
