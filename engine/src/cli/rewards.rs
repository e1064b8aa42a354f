//! `tributary rewards`, `tributary epochs` and `tributary ledger`: model terms, accounts,
//! fees and flags; closing epochs and fetching claims; choosing and checking the ledger.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::Value;

use super::commands::print_json;
use super::Client;
use crate::rewards::flags::FlagKind;

#[derive(Debug, Subcommand)]
pub enum RewardsCommand {
    /// Show a model's terms, or set them from a JSON file with --set (admin).
    Terms {
        model: String,
        #[arg(long)]
        set: Option<PathBuf>,
    },
    /// An account's balance, pending rewards and the completions that paid it.
    Account {
        address: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// What a completion cost and whom it paid.
    Fee { completion: String },
    /// Flag a record of a Datanet (its curators): the contributor carries the penalty.
    Flag {
        datanet: String,
        record: String,
        #[arg(long, value_enum)]
        kind: FlagKind,
        #[arg(long)]
        reason: String,
        /// The share of their rewards the contributor keeps (0 to 1; by kind when absent).
        #[arg(long)]
        weight: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EpochsCommand {
    /// Close the open epoch and settle it on the configured ledger (admin).
    Close,
    /// The closed epochs.
    List,
    /// One closed epoch, with its settlement.
    Show { epoch: u64 },
    /// Settle a closed epoch again now (admin).
    Settle { epoch: u64 },
    /// An account's claim on a closed epoch: the amount and its Merkle proof.
    Claim { epoch: u64, address: String },
    /// Ask a settled epoch's ledger what has been claimed, and book it (admin; the server
    /// also asks every 30 s).
    SyncClaims { epoch: u64 },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Settle closed epochs on this ledger-adapter plugin (admin).
    Use {
        adapter: String,
        /// The adapter's settings, as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Check every settled epoch's receipt against its ledger, on this machine: opens the data
    /// directory itself, so the server must be stopped. Exits non-zero if any check fails.
    Verify {
        #[arg(long, env = "TRIBUTARY_DATA_DIR", default_value = "tributary-data")]
        data_dir: PathBuf,
    },
}

pub fn rewards(client: &Client, cmd: RewardsCommand) -> Result<()> {
    match cmd {
        RewardsCommand::Terms { model, set: None } => {
            print_json(&client.get::<Value>(&format!("/v1/models/{model}/terms"))?)
        }
        RewardsCommand::Terms {
            model,
            set: Some(file),
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let terms: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            print_json(&client.put::<_, Value>(&format!("/v1/models/{model}/terms"), &terms)?)
        }
        RewardsCommand::Account { address, limit } => print_json(
            &client.get::<Value>(&format!("/v1/accounts/{address}/rewards?limit={limit}"))?,
        ),
        RewardsCommand::Fee { completion } => {
            print_json(&client.get::<Value>(&format!("/v1/completions/{completion}/fee"))?)
        }
        RewardsCommand::Flag {
            datanet,
            record,
            kind,
            reason,
            weight,
        } => {
            let body = serde_json::json!({"kind": kind, "reason": reason, "weight": weight});
            print_json(&client.post::<_, Value>(
                &format!("/v1/datanets/{datanet}/records/{record}/flags"),
                &body,
            )?)
        }
    }
}

pub fn epochs(client: &Client, cmd: EpochsCommand) -> Result<()> {
    let v: Value = match cmd {
        EpochsCommand::Close => client.post_empty("/v1/epochs/close")?,
        EpochsCommand::List => client.get("/v1/epochs")?,
        EpochsCommand::Show { epoch } => client.get(&format!("/v1/epochs/{epoch}"))?,
        EpochsCommand::Settle { epoch } => {
            client.post_empty(&format!("/v1/epochs/{epoch}/settle"))?
        }
        EpochsCommand::Claim { epoch, address } => {
            client.get(&format!("/v1/epochs/{epoch}/claims/{address}"))?
        }
        EpochsCommand::SyncClaims { epoch } => {
            client.post_empty(&format!("/v1/epochs/{epoch}/claims/sync"))?
        }
    };
    print_json(&v)
}

pub fn ledger(client: &Client, cmd: LedgerCommand) -> Result<()> {
    match cmd {
        LedgerCommand::Use { adapter, config } => {
            let config: Value = serde_json::from_str(&config).context("--config is not JSON")?;
            let body = serde_json::json!({"adapter": adapter, "config": config});
            print_json(&client.put::<_, Value>("/v1/ledger", &body)?)
        }
        LedgerCommand::Verify { data_dir } => verify(&data_dir),
    }
}

fn verify(data_dir: &std::path::Path) -> Result<()> {
    let datanets = crate::Datanets::open(data_dir).with_context(|| {
        format!(
            "opening {} (is a server running on it? stop it first)",
            data_dir.display()
        )
    })?;
    let store = datanets.store().clone();
    let plugins = Arc::new(
        crate::plugin::Plugins::open(data_dir, store.clone())
            .context("starting the plugin runtime")?,
    );
    let attributions = Arc::new(crate::attribution::service::Attributions::new(
        data_dir,
        store.clone(),
    ));
    let rewards =
        crate::rewards::Rewards::new(store, attributions, Arc::new(datanets), Some(plugins));
    let verdicts = crate::ledger::settle::verify_all(&rewards)?;
    if verdicts.is_empty() {
        println!("no settled epochs");
        return Ok(());
    }
    let mut failed = 0;
    for (epoch, verdict) in &verdicts {
        match verdict {
            Ok(true) => println!("epoch {epoch}: the ledger proves it"),
            Ok(false) => {
                failed += 1;
                println!("epoch {epoch}: the ledger does not match the settlement");
            }
            Err(e) => {
                failed += 1;
                println!("epoch {epoch}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} settled epochs failed verification",
            verdicts.len()
        );
    }
    Ok(())
}
