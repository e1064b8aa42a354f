//! Ethereum JSON-RPC over the host's allow-listed `http` capability.

use serde_json::{json, Value};
use tributary_sdk::http;

pub struct Rpc<'a> {
    url: &'a str,
}

/// `0x`-prefixed hex of `bytes`.
pub fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// A JSON-RPC quantity (`0x1a`).
pub fn quantity(n: u128) -> String {
    format!("0x{n:x}")
}

fn parse_quantity(v: &Value, what: &str) -> Result<u128, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("the node's {what} is not a quantity: {v}"))?;
    u128::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| format!("the node's {what} {text:?} is not a quantity: {e}"))
}

pub fn parse_bytes(v: &Value, what: &str) -> Result<Vec<u8>, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("the node's {what} is not hex: {v}"))?;
    hex::decode(text.trim_start_matches("0x"))
        .map_err(|e| format!("the node's {what} {text:?} is not hex: {e}"))
}

impl<'a> Rpc<'a> {
    pub fn new(url: &'a str) -> Self {
        Self { url }
    }

    /// The `result` of one call, or the node's error message.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let raw = http::post_json(self.url, &body.to_string())?;
        let mut answer: Value = serde_json::from_slice(&raw)
            .map_err(|e| format!("{method}: the node's answer is not JSON: {e}"))?;
        if let Some(error) = answer.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| error.to_string());
            return Err(format!("{method}: {message}"));
        }
        Ok(answer
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    pub fn quantity(&self, method: &str, params: Value) -> Result<u128, String> {
        parse_quantity(&self.call(method, params)?, method)
    }

    pub fn chain_id(&self) -> Result<u64, String> {
        let id = self.quantity("eth_chainId", json!([]))?;
        u64::try_from(id).map_err(|_| format!("chain id {id} is over 2^64"))
    }

    pub fn nonce(&self, address: &str, block: &str) -> Result<u64, String> {
        let n = self.quantity("eth_getTransactionCount", json!([address, block]))?;
        u64::try_from(n).map_err(|_| format!("nonce {n} is over 2^64"))
    }

    /// The result of a read-only call to `to`.
    pub fn eth_call(&self, to: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        let v = self.call(
            "eth_call",
            json!([{"to": to, "data": hex0x(data)}, "latest"]),
        )?;
        parse_bytes(&v, "eth_call result")
    }

    /// The receipt of a transaction, `None` while it is not mined.
    pub fn receipt(&self, hash: &str) -> Result<Option<Value>, String> {
        let v = self.call("eth_getTransactionReceipt", json!([hash]))?;
        Ok((!v.is_null()).then_some(v))
    }
}

/// A receipt's status: true when the transaction succeeded.
pub fn succeeded(receipt: &Value) -> bool {
    receipt.get("status").and_then(Value::as_str) == Some("0x1")
}

pub fn block_number(v: &Value) -> Result<u64, String> {
    let n = parse_quantity(&v["blockNumber"], "block number")?;
    u64::try_from(n).map_err(|_| format!("block number {n} is over 2^64"))
}
