//! Near-duplicate detection with MinHash and locality-sensitive hashing.
//!
//! Each text becomes the set of its word shingles (runs of `shingle` lowercased words); a
//! signature of 64 minimum hashes estimates the Jaccard similarity of two sets. The signature
//! is cut into 16 bands of 4; two texts sharing any band are candidates, and a candidate whose
//! estimated similarity reaches `threshold` is a near-duplicate. Bands live in the plugin's
//! key-value state, so records of earlier batches are found too; the engine commits that state
//! with the batch, so a refused batch leaves nothing behind.

use serde::Deserialize;
use tributary_sdk::kv;
use tributary_sdk::validator::{Batch, Record, Validator, Verdict};

pub const HASHES: usize = 64;
pub const BANDS: usize = 16;
const ROWS: usize = HASHES / BANDS;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub threshold: f64,
    pub shingle: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            threshold: 0.8,
            shingle: 3,
        }
    }
}

pub type Signature = [u64; HASHES];

fn mix(mut x: u64) -> u64 {
    // SplitMix64's finaliser: cheap and well spread.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The MinHash signature of `text`'s word shingles; `None` for a text with no words.
pub fn signature(text: &str, shingle: usize) -> Option<Signature> {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return None;
    }
    let k = shingle.clamp(1, words.len());
    let mut sig = [u64::MAX; HASHES];
    for window in words.windows(k) {
        let base = window
            .iter()
            .fold(0xcbf2_9ce4_8422_2325, |h, w| fnv(w.as_bytes(), h) ^ 0x20);
        for (i, slot) in sig.iter_mut().enumerate() {
            let h = mix(base ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            if h < *slot {
                *slot = h;
            }
        }
    }
    Some(sig)
}

pub fn similarity(a: &Signature, b: &Signature) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / HASHES as f64
}

fn band_key(datanet: &str, band: usize, sig: &Signature) -> Vec<u8> {
    let h = sig[band * ROWS..(band + 1) * ROWS]
        .iter()
        .fold(band as u64, |h, v| mix(h ^ v));
    let mut key = Vec::with_capacity(datanet.len() + 10);
    key.extend_from_slice(datanet.as_bytes());
    key.push(0);
    key.push(band as u8);
    key.extend_from_slice(&h.to_le_bytes());
    key
}

fn encode(sig: &Signature) -> Vec<u8> {
    sig.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Option<Signature> {
    if bytes.len() != HASHES * 8 {
        return None;
    }
    let mut sig = [0u64; HASHES];
    for (slot, chunk) in sig.iter_mut().zip(bytes.chunks_exact(8)) {
        *slot = u64::from_le_bytes(chunk.try_into().ok()?);
    }
    Some(sig)
}

pub struct NearDup;

impl NearDup {
    fn judge(config: &Config, datanet: &str, record: &Record) -> Result<Verdict, String> {
        let Some(sig) = signature(record.text(), config.shingle) else {
            return Ok(Verdict::accept(1.0));
        };
        let keys: Vec<Vec<u8>> = (0..BANDS).map(|b| band_key(datanet, b, &sig)).collect();
        let mut best = 0.0f64;
        for key in &keys {
            if let Some(other) = kv::get(key).as_deref().and_then(decode) {
                best = best.max(similarity(&sig, &other));
            }
        }
        if best >= config.threshold {
            return Ok(Verdict::reject(format!(
                "near-duplicate of an earlier record (estimated similarity {best:.2}, threshold {:.2})",
                config.threshold
            )));
        }
        let encoded = encode(&sig);
        for key in &keys {
            if kv::get(key).is_none() {
                kv::set(key, &encoded)?;
            }
        }
        // A near miss is still worth less than a record unlike any other.
        Ok(Verdict::accept((1.0 - best).clamp(0.0, 1.0)))
    }
}

impl Validator for NearDup {
    type Config = Config;

    fn check(_: &Config, _: &Record) -> Verdict {
        Verdict::reject("near-dup judges whole batches")
    }

    fn validate(config: &Config, batch: &Batch) -> Result<Vec<Verdict>, String> {
        batch
            .records()
            .map(|r| Self::judge(config, batch.datanet_id(), &r))
            .collect()
    }
}

tributary_sdk::export_validator!(NearDup);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_texts_have_similar_signatures() {
        let a = signature(
            "the quick brown fox jumps over the lazy dog near the river bank today",
            3,
        )
        .expect("words");
        let b = signature(
            "the quick brown fox jumps over the lazy dog near the river bank tonight",
            3,
        )
        .expect("words");
        let c = signature(
            "an entirely different sentence about cooking pasta with fresh basil",
            3,
        )
        .expect("words");
        assert!(similarity(&a, &b) > 0.6, "{}", similarity(&a, &b));
        assert!(similarity(&a, &c) < 0.2, "{}", similarity(&a, &c));
        assert_eq!(similarity(&a, &a), 1.0);
        assert_eq!(decode(&encode(&a)), Some(a));
        assert!(signature("  ... ", 3).is_none());
    }
}
