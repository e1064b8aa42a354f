//! Settles an epoch on an EVM chain: one transaction calls the distributor contract's
//! `publish(epoch, payout root, total)` with the total as its value (the contract,
//! `contracts/TributaryDistributor.sol`, then pays every account that claims with its proof).
//! The transaction is built here, signed by the host's `signer` (the key never enters the
//! plugin) and sent through the `http` capability, which reaches only the hosts the operator
//! allows.
//!
//! Settling is idempotent without keeping any state: the contract accepts an epoch once, and
//! every attempt first looks for the epoch's `RootPublished` log, so a retry after a lost
//! answer finds the publication and returns the same receipt. While an earlier transaction of
//! the operator is still waiting to be mined the attempt fails instead of sending another;
//! the engine tries again later.
//!
//! Claims are the contract's `Claimed` logs for the epoch; the engine asks for them (0.1.1's
//! `claims` interface) and shows each account's `claimed`.

mod abi;
mod rpc;
mod tx;

use rpc::{hex0x, quantity, Rpc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tributary_sdk::ledger::{LedgerAdapter, Receipt, Settlement};
use tx::LegacyTx;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The node's JSON-RPC URL; its host must be on the plugin's `http_allow`.
    pub rpc_url: String,
    /// The distributor contract's address.
    pub contract: String,
    pub chain_id: u64,
    /// Gas for `publish`; the node's estimate (plus a quarter) when absent.
    #[serde(default)]
    pub gas_limit: Option<u64>,
    /// The block the contract was deployed in, where the search for publications starts.
    #[serde(default)]
    pub from_block: u64,
}

/// What the receipt's `details` hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Details {
    pub contract: String,
    pub chain_id: u64,
    pub epoch: u64,
    pub root: String,
    /// Base units, decimal.
    pub total: String,
    pub block_number: u64,
    pub block_hash: String,
}

/// An epoch's publication as the chain holds it.
struct Publication {
    tx_hash: String,
    root: [u8; 32],
    total: u128,
    block_number: u64,
    block_hash: String,
}

fn bytes<const N: usize>(hex_text: &str, what: &str) -> Result<[u8; N], String> {
    let raw = hex::decode(hex_text.trim_start_matches("0x"))
        .map_err(|e| format!("{what} {hex_text:?} is not hex: {e}"))?;
    raw.try_into()
        .map_err(|_| format!("{what} {hex_text:?} is not {N} bytes"))
}

fn string_field<'v>(v: &'v Value, field: &str) -> Result<&'v str, String> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the node's log has no {field}"))
}

/// The contract's logs of `event` (its topic0) for `epoch`, leaving out those of blocks that
/// were reorganised away.
fn epoch_logs(
    rpc: &Rpc,
    config: &Config,
    event: [u8; 32],
    epoch: u64,
) -> Result<Vec<Value>, String> {
    let filter = json!({
        "address": config.contract,
        "fromBlock": quantity(config.from_block.into()),
        "toBlock": "latest",
        "topics": [hex0x(&event), hex0x(&abi::word(epoch.into()))],
    });
    match rpc.call("eth_getLogs", json!([filter]))? {
        Value::Array(logs) => Ok(logs
            .into_iter()
            .filter(|l| l.get("removed").and_then(Value::as_bool) != Some(true))
            .collect()),
        other => Err(format!("eth_getLogs answered {other}, not a list")),
    }
}

/// The epoch's `RootPublished` log, if the contract has one (it emits one per epoch).
fn find_publication(rpc: &Rpc, config: &Config, epoch: u64) -> Result<Option<Publication>, String> {
    let logs = epoch_logs(rpc, config, abi::root_published_topic(), epoch)?;
    let Some(log) = logs.first() else {
        return Ok(None);
    };
    let (root, total) = abi::decode_root_published(&rpc::parse_bytes(&log["data"], "log data")?)?;
    Ok(Some(Publication {
        tx_hash: string_field(log, "transactionHash")?.to_string(),
        root,
        total,
        block_number: rpc::block_number(log)?,
        block_hash: string_field(log, "blockHash")?.to_string(),
    }))
}

fn receipt_of(
    config: &Config,
    settlement: &Settlement,
    p: &Publication,
) -> Result<Receipt, String> {
    let details = Details {
        contract: config.contract.to_lowercase(),
        chain_id: config.chain_id,
        epoch: settlement.epoch,
        root: hex0x(&p.root),
        total: p.total.to_string(),
        block_number: p.block_number,
        block_hash: p.block_hash.clone(),
    };
    Ok(Receipt {
        ledger: format!("evm-merkle:{}", config.chain_id),
        reference: p.tx_hash.clone(),
        details: serde_json::to_string(&details).map_err(|e| e.to_string())?,
    })
}

/// Whether `p` publishes `settlement`, or what differs.
fn matches(p: &Publication, root: &[u8; 32], settlement: &Settlement) -> Result<(), String> {
    if &p.root != root || p.total != settlement.total {
        return Err(format!(
            "epoch {} is already published on chain with root {} and total {} (transaction {}), \
             not root {} and total {}",
            settlement.epoch,
            hex0x(&p.root),
            p.total,
            p.tx_hash,
            settlement.payout_root,
            settlement.total
        ));
    }
    Ok(())
}

/// Sends the `publish` transaction; answers its hash once mined and successful.
fn publish(
    rpc: &Rpc,
    config: &Config,
    settlement: &Settlement,
    root: &[u8; 32],
) -> Result<String, String> {
    let operator = tributary_sdk::signer::address()?;
    let (mined, pending) = (
        rpc.nonce(&operator, "latest")?,
        rpc.nonce(&operator, "pending")?,
    );
    if pending > mined {
        return Err(format!(
            "the operator {operator} has {} transaction(s) waiting to be mined; \
             epoch {} is published after them",
            pending - mined,
            settlement.epoch
        ));
    }
    let data = abi::publish(settlement.epoch, root, settlement.total);
    // Tried first as a call: a publication the contract would refuse (not the operator,
    // wrong funding) fails here, naming why, instead of spending gas on every retry.
    rpc.call(
        "eth_call",
        json!([{
            "from": operator,
            "to": config.contract,
            "value": quantity(settlement.total),
            "data": hex0x(&data),
        }, "latest"]),
    )
    .map_err(|e| {
        format!(
            "the contract would refuse publishing epoch {}: {e}",
            settlement.epoch
        )
    })?;
    let gas = match config.gas_limit {
        Some(g) => g,
        None => {
            let estimate = rpc.quantity(
                "eth_estimateGas",
                json!([{
                    "from": operator,
                    "to": config.contract,
                    "value": quantity(settlement.total),
                    "data": hex0x(&data),
                }]),
            )?;
            u64::try_from(estimate + estimate / 4).map_err(|_| "the gas estimate is over 2^64")?
        }
    };
    let tx = LegacyTx {
        nonce: mined,
        gas_price: rpc.quantity("eth_gasPrice", json!([]))?,
        gas,
        to: bytes(&config.contract, "contract")?,
        value: settlement.total,
        data,
    };
    let signature = tributary_sdk::signer::sign_digest(&tx.signing_hash(config.chain_id))?;
    let raw = tx.signed(config.chain_id, &signature)?;
    let hash = rpc
        .call("eth_sendRawTransaction", json!([hex0x(&raw)]))?
        .as_str()
        .map(str::to_string)
        .ok_or("eth_sendRawTransaction answered no hash")?;
    // A node that mines on arrival has the receipt now; on a chain with block times the
    // attempt ends here and the engine's retry finds the publication in the logs.
    match rpc.receipt(&hash)? {
        Some(receipt) if rpc::succeeded(&receipt) => Ok(hash),
        Some(_) => Err(format!(
            "transaction {hash} publishing epoch {} reverted",
            settlement.epoch
        )),
        None => Err(format!(
            "transaction {hash} publishing epoch {} is sent and not mined yet; settling again finds it",
            settlement.epoch
        )),
    }
}

fn check_chain(rpc: &Rpc, config: &Config) -> Result<(), String> {
    let id = rpc.chain_id()?;
    if id != config.chain_id {
        return Err(format!(
            "the node at {} serves chain {id}, not the configured chain {}",
            config.rpc_url, config.chain_id
        ));
    }
    Ok(())
}

/// The contract's `Claimed` logs for `epoch`: each account with its amount.
fn claims(rpc: &Rpc, config: &Config, epoch: u64) -> Result<Vec<(String, u128)>, String> {
    let logs = epoch_logs(rpc, config, abi::claimed_topic(), epoch)?;
    let mut out = Vec::with_capacity(logs.len());
    for log in &logs {
        let topic = log
            .get("topics")
            .and_then(|t| t.get(2))
            .ok_or("a Claimed log without its account topic")?;
        let account = abi::topic_address(&rpc::parse_bytes(topic, "account topic")?)?;
        let amount = abi::decode_amount(&rpc::parse_bytes(&log["data"], "log data")?)?;
        out.push((hex0x(&account), amount));
    }
    Ok(out)
}

pub struct EvmMerkle;

impl LedgerAdapter for EvmMerkle {
    type Config = Config;

    fn settle(config: &Config, settlement: &Settlement) -> Result<Receipt, String> {
        let root: [u8; 32] = bytes(&settlement.payout_root, "payout root")?;
        let rpc = Rpc::new(&config.rpc_url);
        check_chain(&rpc, config)?;
        if let Some(p) = find_publication(&rpc, config, settlement.epoch)? {
            matches(&p, &root, settlement)?;
            return receipt_of(config, settlement, &p);
        }
        // The contract's own word, should the log search have missed the publication.
        let published = rpc
            .eth_call(&config.contract, &abi::published(settlement.epoch))
            .map_err(|e| {
                format!(
                    "asking {} whether epoch {} is published: {e} (is it a TributaryDistributor?)",
                    config.contract, settlement.epoch
                )
            })?;
        if published.last() == Some(&1) {
            return Err(format!(
                "the contract has epoch {} published, but no RootPublished log from block {} on \
                 shows it: is from_block after the publication?",
                settlement.epoch, config.from_block
            ));
        }
        let hash = publish(&rpc, config, settlement, &root)?;
        let p = find_publication(&rpc, config, settlement.epoch)?.ok_or_else(|| {
            format!(
                "transaction {hash} published epoch {} but the node shows no RootPublished log \
                 for it yet; settling again looks again",
                settlement.epoch
            )
        })?;
        matches(&p, &root, settlement)?;
        receipt_of(config, settlement, &p)
    }

    fn verify(config: &Config, settlement: &Settlement, receipt: &Receipt) -> Result<bool, String> {
        let kept: Details = serde_json::from_str(&receipt.details)
            .map_err(|e| format!("the receipt's details are not this adapter's: {e}"))?;
        let root: [u8; 32] = bytes(&settlement.payout_root, "payout root")?;
        let rpc = Rpc::new(&config.rpc_url);
        check_chain(&rpc, config)?;
        // The transaction is still in the block the receipt names, and the contract holds
        // the epoch's root now.
        let Some(mined) = rpc.receipt(&receipt.reference)? else {
            return Ok(false);
        };
        let in_block = mined.get("blockHash").and_then(Value::as_str) == Some(&kept.block_hash);
        let on_chain = rpc.eth_call(&config.contract, &abi::roots(settlement.epoch))?;
        let Some(p) = find_publication(&rpc, config, settlement.epoch)? else {
            return Ok(false);
        };
        Ok(rpc::succeeded(&mined)
            && in_block
            && p.tx_hash.eq_ignore_ascii_case(&receipt.reference)
            && matches(&p, &root, settlement).is_ok()
            && on_chain == root
            && kept.root == settlement.payout_root.to_lowercase()
            && kept.total == settlement.total.to_string())
    }

    fn claimed(
        config: &Config,
        settlement: &Settlement,
        _receipt: &Receipt,
    ) -> Result<Option<Vec<(String, u128)>>, String> {
        let rpc = Rpc::new(&config.rpc_url);
        check_chain(&rpc, config)?;
        claims(&rpc, config, settlement.epoch).map(Some)
    }
}

tributary_sdk::export_ledger_adapter!(EvmMerkle);
