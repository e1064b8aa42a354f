//! A ledger in a file: `ledger.jsonl` in the one folder the operator grants (seen by the
//! plugin as `/ledger`). Each line is a settlement with the hash of the line before it and
//! its own hash, BLAKE3 over the line's canonical JSON without `hash`, so changing, removing
//! or reordering any line breaks the chain from there on. A receipt is the line's hash.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};

use serde::{Deserialize, Serialize};
use tributary_sdk::ledger::{LedgerAdapter, Receipt, Settlement};

pub const LEDGER: &str = "local-jsonl";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The ledger file, inside the granted folder.
    pub path: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            path: "/ledger/ledger.jsonl".into(),
        }
    }
}

/// One settled epoch. Amounts are decimal strings: JSON numbers lose precision past 2^53.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: u64,
    pub payout_root: String,
    pub total: String,
    pub payouts: Vec<(String, String)>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl Entry {
    fn new(s: &Settlement, prev: String) -> Self {
        let mut entry = Entry {
            epoch: s.epoch,
            payout_root: s.payout_root.clone(),
            total: s.total.to_string(),
            payouts: s
                .payouts
                .iter()
                .map(|(a, u)| (a.clone(), u.to_string()))
                .collect(),
            prev,
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// BLAKE3 of the entry's JSON with `hash` left out; serde writes fields in order.
    pub fn compute_hash(&self) -> String {
        let unhashed = Entry {
            hash: String::new(),
            ..self.clone()
        };
        let json = serde_json::to_vec(&unhashed).unwrap_or_default();
        blake3::hash(&json).to_hex().to_string()
    }

    fn matches(&self, s: &Settlement) -> bool {
        self.payout_root == s.payout_root
            && self.total == s.total.to_string()
            && self.payouts.len() == s.payouts.len()
            && self
                .payouts
                .iter()
                .zip(&s.payouts)
                .all(|((a, u), (b, v))| a == b && *u == v.to_string())
    }
}

/// The entries of the ledger at `path`, checking the chain; an error names the first line
/// that breaks it.
pub fn read_chain(path: &str) -> Result<Vec<Entry>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let mut entries: Vec<Entry> = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{path}: {e}"))?;
        let entry: Entry =
            serde_json::from_str(&line).map_err(|e| format!("{path} line {}: {e}", n + 1))?;
        let prev = entries.last().map_or(GENESIS, |e| e.hash.as_str());
        if entry.prev != prev {
            return Err(format!(
                "{path} line {}: the chain is broken (prev does not name line {})",
                n + 1,
                n
            ));
        }
        if entry.hash != entry.compute_hash() {
            return Err(format!(
                "{path} line {}: the line was changed (its hash does not match)",
                n + 1
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn receipt(entry: &Entry) -> Receipt {
    Receipt {
        ledger: LEDGER.into(),
        reference: entry.hash.clone(),
        details: format!("{{\"epoch\":{}}}", entry.epoch),
    }
}

pub struct LocalJsonl;

impl LedgerAdapter for LocalJsonl {
    type Config = Config;

    fn settle(config: &Config, settlement: &Settlement) -> Result<Receipt, String> {
        let entries = read_chain(&config.path)?;
        if let Some(entry) = entries.iter().find(|e| e.epoch == settlement.epoch) {
            return if entry.matches(settlement) {
                Ok(receipt(entry))
            } else {
                Err(format!(
                    "epoch {} is already settled with other payouts",
                    settlement.epoch
                ))
            };
        }
        if let Some(last) = entries.last() {
            if settlement.epoch <= last.epoch {
                return Err(format!(
                    "epoch {} comes after epoch {} on this ledger",
                    settlement.epoch, last.epoch
                ));
            }
        }
        let prev = entries
            .last()
            .map_or_else(|| GENESIS.to_string(), |e| e.hash.clone());
        let entry = Entry::new(settlement, prev);
        let mut line = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| format!("{}: {e}", config.path))?;
        file.write_all(&line)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("{}: {e}", config.path))?;
        Ok(receipt(&entry))
    }

    fn verify(config: &Config, settlement: &Settlement, receipt: &Receipt) -> Result<bool, String> {
        let entries = read_chain(&config.path)?;
        Ok(entries.iter().any(|e| {
            e.epoch == settlement.epoch && e.hash == receipt.reference && e.matches(settlement)
        }))
    }
}

tributary_sdk::export_ledger_adapter!(LocalJsonl);

#[cfg(test)]
mod tests {
    use super::*;

    fn settlement(epoch: u64, total: u128) -> Settlement {
        Settlement {
            epoch,
            payout_root: format!("0x{epoch:064x}"),
            total,
            payouts: vec![("0xabc".into(), total)],
        }
    }

    #[test]
    fn settles_idempotently_and_detects_edits() {
        let dir = std::env::temp_dir().join(format!("local-jsonl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let config = Config {
            path: dir.join("ledger.jsonl").display().to_string(),
        };
        let _ = std::fs::remove_file(&config.path);
        let one = LocalJsonl::settle(&config, &settlement(1, 100)).expect("settle 1");
        let again = LocalJsonl::settle(&config, &settlement(1, 100)).expect("settle 1 again");
        assert_eq!(one.reference, again.reference);
        assert!(LocalJsonl::settle(&config, &settlement(1, 99)).is_err());
        let two = LocalJsonl::settle(&config, &settlement(2, u128::MAX)).expect("settle 2");
        assert!(LocalJsonl::verify(&config, &settlement(2, u128::MAX), &two).expect("verify"));
        assert_eq!(read_chain(&config.path).expect("chain").len(), 2);

        let text = std::fs::read_to_string(&config.path).expect("read");
        std::fs::write(&config.path, text.replacen("\"100\"", "\"900\"", 1)).expect("edit");
        let err = read_chain(&config.path).expect_err("edited");
        assert!(err.contains("line 1: the line was changed"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
