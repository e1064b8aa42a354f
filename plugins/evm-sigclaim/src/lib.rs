//! Settles an epoch as signed claims: for every account, the operator's key signs
//! `keccak256(abi.encodePacked(account, amount, batch, contract, chainid))` under the EIP-191
//! prefix (`"\x19Ethereum Signed Message:\n32"`), `batch` being the epoch's payout root. That
//! is the message OpenLedger's `SigDispersal.claim(signature, batch, amount, onBehalfOf)`
//! recovers its signer from. The key stays in the host (`signer` capability); signatures are
//! deterministic (RFC 6979), so settling again gives the same receipt, and verifying signs
//! again and compares.

use serde::{Deserialize, Serialize};
use sha3::{Digest, Keccak256};
use tributary_sdk::ledger::{LedgerAdapter, Receipt, Settlement};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The dispersal contract's address.
    pub contract: String,
    pub chain_id: u64,
}

/// One account's signed claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedClaim {
    pub account: String,
    /// Base units, decimal.
    pub amount: String,
    /// 65 bytes (r, s, v with v 27 or 28), 0x hex.
    pub signature: String,
}

/// What the receipt's `details` hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Details {
    pub contract: String,
    pub chain_id: u64,
    pub batch: String,
    pub signer: String,
    pub claims: Vec<SignedClaim>,
}

fn bytes<const N: usize>(hex_text: &str, what: &str) -> Result<[u8; N], String> {
    let raw = hex::decode(hex_text.trim_start_matches("0x"))
        .map_err(|e| format!("{what} {hex_text:?} is not hex: {e}"))?;
    raw.try_into()
        .map_err(|_| format!("{what} {hex_text:?} is not {N} bytes"))
}

/// The digest the key signs for one claim: the packed message's keccak256, then EIP-191's
/// prefix over it, hashed again.
pub fn claim_digest(
    account: &[u8; 20],
    amount: u128,
    batch: &[u8; 32],
    contract: &[u8; 20],
    chain_id: u64,
) -> [u8; 32] {
    let mut packed = Vec::with_capacity(20 + 32 + 32 + 20 + 32);
    packed.extend_from_slice(account);
    packed.extend_from_slice(&[0u8; 16]);
    packed.extend_from_slice(&amount.to_be_bytes());
    packed.extend_from_slice(batch);
    packed.extend_from_slice(contract);
    packed.extend_from_slice(&[0u8; 24]);
    packed.extend_from_slice(&chain_id.to_be_bytes());
    let message = Keccak256::digest(&packed);
    let mut prefixed = b"\x19Ethereum Signed Message:\n32".to_vec();
    prefixed.extend_from_slice(&message);
    Keccak256::digest(&prefixed).into()
}

fn sign_all(config: &Config, settlement: &Settlement) -> Result<Details, String> {
    let contract: [u8; 20] = bytes(&config.contract, "contract")?;
    let batch: [u8; 32] = bytes(&settlement.payout_root, "payout root")?;
    let signer = tributary_sdk::signer::address()?;
    let mut claims = Vec::with_capacity(settlement.payouts.len());
    for (account, amount) in &settlement.payouts {
        let address: [u8; 20] = bytes(account, "account")?;
        let digest = claim_digest(&address, *amount, &batch, &contract, config.chain_id);
        let signature = tributary_sdk::signer::sign_digest(&digest)?;
        claims.push(SignedClaim {
            account: account.clone(),
            amount: amount.to_string(),
            signature: format!("0x{}", hex::encode(signature)),
        });
    }
    Ok(Details {
        contract: config.contract.clone(),
        chain_id: config.chain_id,
        batch: settlement.payout_root.clone(),
        signer,
        claims,
    })
}

pub struct EvmSigClaim;

impl LedgerAdapter for EvmSigClaim {
    type Config = Config;

    fn settle(config: &Config, settlement: &Settlement) -> Result<Receipt, String> {
        let details = sign_all(config, settlement)?;
        Ok(Receipt {
            ledger: format!("evm-sigclaim:{}", config.chain_id),
            reference: settlement.payout_root.clone(),
            details: serde_json::to_string(&details).map_err(|e| e.to_string())?,
        })
    }

    fn verify(config: &Config, settlement: &Settlement, receipt: &Receipt) -> Result<bool, String> {
        let kept: Details = serde_json::from_str(&receipt.details)
            .map_err(|e| format!("the receipt's details are not this adapter's: {e}"))?;
        Ok(receipt.reference == settlement.payout_root && kept == sign_all(config, settlement)?)
    }
}

tributary_sdk::export_ledger_adapter!(EvmSigClaim);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_packs_the_fields_as_solidity_does() {
        // abi.encodePacked(address, uint256, bytes32, address, uint256) is 136 bytes; a change
        // in any field changes the digest.
        let d = claim_digest(&[1; 20], 5, &[2; 32], &[3; 20], 31337);
        assert_ne!(d, claim_digest(&[1; 20], 6, &[2; 32], &[3; 20], 31337));
        assert_ne!(d, claim_digest(&[1; 20], 5, &[2; 32], &[3; 20], 1));
        assert_ne!(d, claim_digest(&[1; 20], 5, &[2; 32], &[4; 20], 31337));
    }
}
