//! Closing epochs and proving claims. A closed epoch's payout tree is kept as a file of its
//! nodes (`<data>/epochs/<epoch>.payouts`), so a proof is a handful of reads, not a rebuild.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Claim, ClosedEpoch, LedgerSettings, SettlementState, SettlementStatus};
use crate::attribution::AttributionError;
use crate::identity::Address;
use crate::merkle::{self, MerkleTree, StoredTree};
use crate::rewards::book;
use crate::rewards::{Rewards, RewardsError};
use crate::store::CF_REWARDS;

fn io(e: impl std::fmt::Display) -> RewardsError {
    RewardsError::Io(e.to_string())
}

fn hex32(h: &merkle::Hash) -> String {
    format!("0x{}", hex::encode(h))
}

/// Where closed epochs' trees live.
pub fn epochs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("epochs")
}

fn tree_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch:020}.payouts"))
}

/// What each account earned in `epoch`, in key order.
pub fn earnings(rewards: &Rewards, epoch: u64) -> Result<Vec<(Address, u128)>, RewardsError> {
    let prefix = book::earn_prefix(epoch);
    let mut out = Vec::new();
    rewards
        .store()
        .for_each_prefix(CF_REWARDS, prefix.as_bytes(), |key, value| {
            let address = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|a| a.parse::<Address>().ok());
            let amount = book::parse_units(value);
            if let (Some(a), Some(u)) = (address, amount) {
                if u > 0 {
                    out.push((a, u));
                }
            }
            Ok(())
        })?;
    Ok(out)
}

/// Closes the open epoch: its attribution root and payout tree commit in one batch, with
/// the settlement to make when a ledger is configured. No fee lands in the epoch after this.
pub fn close(rewards: &Rewards, data_dir: &Path) -> Result<ClosedEpoch, RewardsError> {
    let _book = rewards.lock_book();
    let epoch = rewards.attributions().current_epoch().map_err(io)?;
    let earned = earnings(rewards, epoch)?;
    let total = earned
        .iter()
        .try_fold(0u128, |acc, (_, u)| acc.checked_add(*u))
        .ok_or_else(|| RewardsError::Conservation(format!("epoch {epoch} overflows 128 bits")))?;
    let tree = MerkleTree::from_leaves(merkle::leaves_address_uint256(earned.len(), |i| {
        (earned[i].0 .0, earned[i].1)
    }));
    // The tree is on disk before the epoch is marked closed; a crash in between leaves a
    // file that the next close of this epoch overwrites.
    let dir = epochs_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let path = tree_path(&dir, epoch);
    let part = path.with_extension("part");
    {
        let mut file = std::fs::File::create(&part).map_err(io)?;
        file.write_all(&tree.to_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&part, &path).map_err(io)?;
    let settings: Option<LedgerSettings> = rewards
        .store()
        .get_json(CF_REWARDS, book::LEDGER_KEY.as_bytes())?;
    let payout_root = hex32(&tree.root());
    let accounts = earned.len() as u64;
    let mut closed = None;
    rewards
        .attributions()
        .close_epoch(|root, batch| {
            debug_assert_eq!(root.epoch, epoch);
            let c = ClosedEpoch {
                epoch,
                root: root.root.clone(),
                attributions: root.attributions,
                payout_root: payout_root.clone(),
                total,
                accounts,
                claimed: 0,
                closed_at: chrono::Utc::now().timestamp(),
                settlement: settings.map(|s| SettlementState {
                    adapter: s.adapter,
                    status: SettlementStatus::Pending,
                    attempts: 0,
                    last_error: None,
                    next_attempt_at: 0,
                    receipt: None,
                }),
            };
            batch
                .put_json(CF_REWARDS, book::epoch_key(epoch), &c)
                .map_err(|e| AttributionError::Io(std::io::Error::other(e.to_string())))?;
            closed = Some(c);
            Ok(())
        })
        .map_err(io)?;
    closed.ok_or_else(|| io("the epoch closed without its payout record"))
}

pub fn get(rewards: &Rewards, epoch: u64) -> Result<ClosedEpoch, RewardsError> {
    rewards
        .store()
        .get_json(CF_REWARDS, book::epoch_key(epoch).as_bytes())?
        .ok_or_else(|| RewardsError::NotFound(format!("epoch {epoch} is not closed")))
}

/// Every closed epoch, oldest first.
pub fn list(rewards: &Rewards) -> Result<Vec<ClosedEpoch>, RewardsError> {
    Ok(rewards.store().scan_prefix_json(CF_REWARDS, b"epoch/")?)
}

/// An account's claim on a closed epoch, with its proof against the payout root.
pub fn claim(
    rewards: &Rewards,
    data_dir: &Path,
    epoch: u64,
    address: &str,
) -> Result<Claim, RewardsError> {
    let account: Address = address
        .parse()
        .map_err(|e| RewardsError::invalid("address", format!("{e}")))?;
    let closed = get(rewards, epoch)?;
    let checksum = account.to_checksum();
    let amount = rewards
        .store()
        .get(CF_REWARDS, book::earn_key(epoch, &checksum).as_bytes())?
        .and_then(|v| book::parse_units(&v))
        .filter(|u| *u > 0)
        .ok_or_else(|| {
            RewardsError::NotFound(format!("{checksum} earned nothing in epoch {epoch}"))
        })?;
    let leaf = merkle::leaf_address_uint256(&account.0, amount);
    let file = std::fs::File::open(tree_path(&epochs_dir(data_dir), epoch)).map_err(io)?;
    let tree = StoredTree::open(file).map_err(io)?;
    let proof = tree.proof(&leaf).map_err(io)?.ok_or_else(|| {
        io(format!(
            "epoch {epoch}'s payout tree lacks {checksum}'s leaf"
        ))
    })?;
    let ledger_claim = closed
        .settlement
        .as_ref()
        .and_then(|s| s.receipt.as_ref())
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.details).ok())
        .and_then(|d| {
            d.get("claims")?
                .as_array()?
                .iter()
                .find(|c| {
                    c.get("account")
                        .and_then(|a| a.as_str())
                        .is_some_and(|a| a.eq_ignore_ascii_case(&checksum))
                })
                .cloned()
        });
    let claimed = rewards
        .store()
        .get(CF_REWARDS, book::claimed_key(epoch, &checksum).as_bytes())?
        .and_then(|v| book::parse_units(&v))
        .unwrap_or(0);
    Ok(Claim {
        epoch,
        account: checksum,
        amount,
        claimed,
        leaf: hex32(&leaf),
        proof: proof.iter().map(hex32).collect(),
        root: closed.payout_root,
        ledger_claim,
    })
}
