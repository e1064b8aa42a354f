//! Accounts and signatures: EVM-style addresses, EIP-191 personal messages, secp256k1 keys.
//!
//! A contributor signs the Merkle root of a batch's record ids with `personal_sign`
//! (EIP-191, version `0x45`), the same thing a wallet or `eth_account.Account.sign_message`
//! produces, and the engine recovers the address from the signature. Only low-`s` signatures
//! are accepted so that each message has one valid signature per key.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use k256::ecdsa::{RecoveryId, Signature as EcdsaSignature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::merkle::{keccak256, Hash};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("address must be 0x followed by 40 hex digits, got {0:?}")]
    BadAddress(String),
    #[error("address {0} fails its EIP-55 checksum (mixed case that does not match)")]
    BadChecksum(String),
    #[error("signature must be 0x followed by 130 hex digits (65 bytes r, s, v)")]
    BadSignatureEncoding,
    #[error("signature has recovery byte {0}; expected 0, 1, 27 or 28")]
    BadRecoveryByte(u8),
    #[error("signature is not canonical (high s value)")]
    HighS,
    #[error("no public key can be recovered from this signature")]
    Unrecoverable,
    #[error("private key must be 32 bytes of hex: {0}")]
    BadKey(String),
    #[error("cannot read key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
}

/// A 20-byte account address, shown in EIP-55 checksummed form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 20]);

impl Address {
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        let point = key.to_encoded_point(false);
        let hash = keccak256(&point.as_bytes()[1..]);
        let mut out = [0u8; 20];
        out.copy_from_slice(&hash[12..]);
        Address(out)
    }

    /// The EIP-55 checksummed string.
    pub fn to_checksum(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = keccak256(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl FromStr for Address {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s
            .strip_prefix("0x")
            .filter(|h| h.len() == 40)
            .ok_or_else(|| IdentityError::BadAddress(s.to_string()))?;
        let mut out = [0u8; 20];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| IdentityError::BadAddress(s.to_string()))?;
        let address = Address(out);
        let all_lower = hex_part == hex_part.to_ascii_lowercase();
        let all_upper = hex_part == hex_part.to_ascii_uppercase();
        if !all_lower && !all_upper && address.to_checksum() != s {
            return Err(IdentityError::BadChecksum(s.to_string()));
        }
        Ok(address)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.to_checksum())
    }
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_checksum())
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Address {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^0x[0-9a-fA-F]{40}$"))
            .description(Some("An account address, EIP-55 checksummed"))
            .examples([serde_json::json!(
                "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            )])
            .into()
    }
}

impl utoipa::ToSchema for Address {}

/// The EIP-191 digest of a personal message: keccak256("\x19Ethereum Signed Message:\n" ||
/// len || message).
pub fn personal_message_digest(message: &[u8]) -> Hash {
    let mut buf = Vec::with_capacity(message.len() + 32);
    buf.extend_from_slice(b"\x19Ethereum Signed Message:\n");
    buf.extend_from_slice(message.len().to_string().as_bytes());
    buf.extend_from_slice(message);
    keccak256(&buf)
}

/// A 65-byte `r || s || v` signature as wallets produce it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 65]);

impl Signature {
    pub fn to_hex(&self) -> String {
        format!("0x{}", hex::encode(self.0))
    }
}

impl FromStr for Signature {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("0x").unwrap_or(s);
        let mut out = [0u8; 65];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| IdentityError::BadSignatureEncoding)?;
        Ok(Signature(out))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

/// Recovers the address that signed `message` as an EIP-191 personal message.
pub fn recover_personal(message: &[u8], signature: &Signature) -> Result<Address, IdentityError> {
    let digest = personal_message_digest(message);
    let v = signature.0[64];
    let parity = match v {
        0 | 27 => 0,
        1 | 28 => 1,
        other => return Err(IdentityError::BadRecoveryByte(other)),
    };
    let sig = EcdsaSignature::from_slice(&signature.0[..64])
        .map_err(|_| IdentityError::BadSignatureEncoding)?;
    if sig.normalize_s().is_some() {
        return Err(IdentityError::HighS);
    }
    let recid = RecoveryId::from_byte(parity).ok_or(IdentityError::Unrecoverable)?;
    let key = VerifyingKey::recover_from_prehash(&digest, &sig, recid)
        .map_err(|_| IdentityError::Unrecoverable)?;
    Ok(Address::from_verifying_key(&key))
}

/// A contributor's secret key. It lives only in the contributor's key file and the CLI.
pub struct Key {
    signing: SigningKey,
}

impl Key {
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::random(&mut rand::rngs::OsRng),
        }
    }

    pub fn from_hex(s: &str) -> Result<Self, IdentityError> {
        let trimmed = s.trim();
        let hex_part = trimmed.strip_prefix("0x").unwrap_or(trimmed);
        let bytes = hex::decode(hex_part).map_err(|e| IdentityError::BadKey(e.to_string()))?;
        let signing =
            SigningKey::from_slice(&bytes).map_err(|e| IdentityError::BadKey(e.to_string()))?;
        Ok(Self { signing })
    }

    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_hex(&text)
    }

    /// The key as `0x`-prefixed hex, the form `eth_account.Account.from_key` takes.
    pub fn to_hex(&self) -> String {
        format!("0x{}", hex::encode(self.signing.to_bytes()))
    }

    pub fn address(&self) -> Address {
        Address::from_verifying_key(self.signing.verifying_key())
    }

    /// Signs `message` as an EIP-191 personal message.
    pub fn sign_personal(&self, message: &[u8]) -> Signature {
        self.sign_digest(&personal_message_digest(message))
    }

    /// Signs a 32-byte digest as it is (`r || s || v`, v 27 or 28).
    pub fn sign_digest(&self, digest: &Hash) -> Signature {
        // Signing a 32-byte prehash with a valid key cannot fail.
        let (sig, recid) = self
            .signing
            .sign_prehash_recoverable(digest)
            .expect("signing a 32-byte digest");
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = 27 + recid.to_byte();
        Signature(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_recover_round_trip() {
        let key = Key::generate();
        let message = keccak256(b"batch root");
        let sig = key.sign_personal(&message);
        assert_eq!(
            recover_personal(&message, &sig).expect("recovers"),
            key.address()
        );
        let other = keccak256(b"other root");
        assert_ne!(recover_personal(&other, &sig).ok(), Some(key.address()));
    }

    #[test]
    fn known_key_has_known_address() {
        // The first default account of Hardhat and Anvil, a widely published pair.
        let key =
            Key::from_hex("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
                .expect("valid key");
        assert_eq!(
            key.address().to_string(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
    }

    #[test]
    fn checksum_is_enforced_for_mixed_case() {
        assert!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            .parse::<Address>()
            .is_ok());
        assert!("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
            .parse::<Address>()
            .is_ok());
        assert!(matches!(
            "0xF39fd6e51aad88F6F4ce6aB8827279cffFb92266".parse::<Address>(),
            Err(IdentityError::BadChecksum(_))
        ));
        assert!("0x1234".parse::<Address>().is_err());
    }
}
