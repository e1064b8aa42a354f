//! Legacy transactions signed for one chain (EIP-155), RLP-encoded with `alloy-rlp`. Legacy
//! is the one form every EVM node accepts; the signature comes from the host's signer.

use alloy_rlp::{Encodable, Header};

/// A value transfer with call data to one contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyTx {
    pub nonce: u64,
    pub gas_price: u128,
    pub gas: u64,
    pub to: [u8; 20],
    pub value: u128,
    pub data: Vec<u8>,
}

/// A big-endian integer without its leading zeros: how RLP writes an integer given as bytes.
fn trimmed(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

impl LegacyTx {
    /// The RLP list of the six fields followed by `tail`: (chain id, 0, 0) to sign, (v, r, s)
    /// once signed.
    fn rlp(&self, tail: [&dyn Encodable; 3]) -> Vec<u8> {
        let (data, to) = (self.data.as_slice(), self.to.as_slice());
        let fields: [&dyn Encodable; 6] = [
            &self.nonce,
            &self.gas_price,
            &self.gas,
            &to,
            &self.value,
            &data,
        ];
        let payload_length = fields.iter().chain(&tail).map(|i| i.length()).sum();
        let mut out = Vec::with_capacity(payload_length + 9);
        Header {
            list: true,
            payload_length,
        }
        .encode(&mut out);
        for item in fields.iter().chain(&tail) {
            item.encode(&mut out);
        }
        out
    }

    /// What the key signs: keccak256 of the RLP of the six fields and (chain id, 0, 0).
    pub fn signing_hash(&self, chain_id: u64) -> [u8; 32] {
        crate::abi::keccak(&self.rlp([&chain_id, &0u8, &0u8]))
    }

    /// The raw signed transaction, given the 65-byte signature (r, s, v with v 27 or 28)
    /// over [`Self::signing_hash`].
    pub fn signed(&self, chain_id: u64, signature: &[u8]) -> Result<Vec<u8>, String> {
        let (65, Some(v)) = (signature.len(), signature.last()) else {
            return Err(format!(
                "the signer returned {} bytes, not the 65 of r, s and v",
                signature.len()
            ));
        };
        if !(27..=28).contains(v) {
            return Err(format!("the signer returned v = {v}, not 27 or 28"));
        }
        let v = u64::from(v - 27) + chain_id * 2 + 35;
        let (r, s) = (trimmed(&signature[..32]), trimmed(&signature[32..64]));
        Ok(self.rlp([&v, &r, &s]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip155_s_own_example_hashes_as_published() {
        // EIP-155's worked example: nonce 9, 20 gwei, 21000 gas, 1 ether to 0x3535…35, chain 1.
        let tx = LegacyTx {
            nonce: 9,
            gas_price: 20_000_000_000,
            gas: 21_000,
            to: [0x35; 20],
            value: 1_000_000_000_000_000_000,
            data: vec![],
        };
        assert_eq!(
            hex::encode(tx.signing_hash(1)),
            "daf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53"
        );
        let r = hex::decode("28ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276")
            .expect("hex");
        let s = hex::decode("67cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83")
            .expect("hex");
        let mut sig = [r, s].concat();
        sig.push(27); // v = 37 on chain 1
        assert_eq!(
            hex::encode(tx.signed(1, &sig).expect("a 65-byte signature")),
            "f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83"
        );
    }
}
