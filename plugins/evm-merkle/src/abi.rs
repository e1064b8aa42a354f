//! The distributor contract's calls and event, ABI-encoded by hand: three static functions
//! and one event do not need an ABI library inside the component.

use sha3::{Digest, Keccak256};

pub fn keccak(bytes: &[u8]) -> [u8; 32] {
    Keccak256::digest(bytes).into()
}

fn selector(signature: &str) -> [u8; 4] {
    let h = keccak(signature.as_bytes());
    [h[0], h[1], h[2], h[3]]
}

/// A uint as one 32-byte ABI word.
pub fn word(value: u128) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[16..].copy_from_slice(&value.to_be_bytes());
    w
}

/// `publish(uint64 epoch, bytes32 root, uint256 total)`.
pub fn publish(epoch: u64, root: &[u8; 32], total: u128) -> Vec<u8> {
    let mut data = selector("publish(uint64,bytes32,uint256)").to_vec();
    data.extend_from_slice(&word(epoch.into()));
    data.extend_from_slice(root);
    data.extend_from_slice(&word(total));
    data
}

/// `roots(uint64 epoch)`, the public mapping's getter.
pub fn roots(epoch: u64) -> Vec<u8> {
    let mut data = selector("roots(uint64)").to_vec();
    data.extend_from_slice(&word(epoch.into()));
    data
}

/// `published(uint64 epoch)`, the public mapping's getter.
pub fn published(epoch: u64) -> Vec<u8> {
    let mut data = selector("published(uint64)").to_vec();
    data.extend_from_slice(&word(epoch.into()));
    data
}

/// topic0 of `RootPublished(uint64 indexed epoch, bytes32 root, uint256 total)`.
pub fn root_published_topic() -> [u8; 32] {
    keccak(b"RootPublished(uint64,bytes32,uint256)")
}

/// topic0 of `Claimed(uint64 indexed epoch, address indexed account, uint256 amount)`.
pub fn claimed_topic() -> [u8; 32] {
    keccak(b"Claimed(uint64,address,uint256)")
}

/// The account of an indexed address topic.
pub fn topic_address(topic: &[u8]) -> Result<[u8; 20], String> {
    if topic.len() != 32 || topic[..12].iter().any(|b| *b != 0) {
        return Err(format!("{} is not an address topic", hex::encode(topic)));
    }
    topic[12..].try_into().map_err(|_| "address".into())
}

/// A uint256 word that must fit in u128.
pub fn decode_amount(data: &[u8]) -> Result<u128, String> {
    if data.len() != 32 || data[..16].iter().any(|b| *b != 0) {
        return Err(format!(
            "{} is not an amount under 2^128",
            hex::encode(data)
        ));
    }
    Ok(u128::from_be_bytes(
        data[16..].try_into().map_err(|_| "amount")?,
    ))
}

/// The non-indexed part of a `RootPublished` log: (root, total).
pub fn decode_root_published(data: &[u8]) -> Result<([u8; 32], u128), String> {
    if data.len() != 64 {
        return Err(format!(
            "a RootPublished log holds 64 bytes of data, not {}",
            data.len()
        ));
    }
    let root: [u8; 32] = data[..32].try_into().map_err(|_| "root")?;
    if data[32..48].iter().any(|b| *b != 0) {
        return Err("a published total is over 2^128".into());
    }
    let total = u128::from_be_bytes(data[48..].try_into().map_err(|_| "total")?);
    Ok((root, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_topics_are_solidity_s() {
        // Values as `cast sig` / `cast keccak` print them for these signatures.
        assert_eq!(
            hex::encode(selector("transfer(address,uint256)")),
            "a9059cbb"
        );
        assert_eq!(
            hex::encode(keccak(b"Transfer(address,address,uint256)")),
            "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
        );
        let data = publish(7, &[9; 32], 1000);
        assert_eq!(data.len(), 4 + 96);
        assert_eq!(data[4 + 31], 7);
        let mut log = [9u8; 32].to_vec();
        log.extend_from_slice(&word(1000));
        assert_eq!(decode_root_published(&log), Ok(([9; 32], 1000)));
    }
}
