//! Text generation: the prompt in one pass, then one token at a time over the key-value cache,
//! greedy at temperature zero, otherwise sampled from the top-p nucleus by a seeded generator
//! so that a request can be replayed.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::llama::{KvCache, Llama};

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub max_tokens: usize,
    /// Zero picks the most likely token.
    pub temperature: f64,
    pub top_p: f64,
    /// Only the `top_k` most likely tokens are drawn from; zero keeps them all.
    #[serde(default)]
    pub top_k: usize,
    pub seed: u64,
    /// Token ids that end the output (not included in it).
    pub stop: Vec<u32>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// Why generation ended, as OpenAI's `finish_reason` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    Stop,
    Length,
}

/// Picks the next token from `logits` (the vocabulary's scores for one position).
pub fn pick(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 {
                    (i, l)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) as f64) / s.temperature).exp()))
        .collect();
    let nucleus = nucleus(&mut probs, s.top_k, s.top_p);
    let mass: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut at = rng.gen::<f64>() * mass;
    for p in nucleus {
        at -= p.1;
        if at <= 0.0 {
            return p.0;
        }
    }
    nucleus.last().map_or_else(argmax, |p| p.0)
}

/// The tokens sampling draws from: the `top_k` most likely (all if zero), then the fewest of
/// those, most likely first, whose probability reaches `top_p`. Ties keep token order, so the
/// set and its order are a function of the scores alone.
///
/// Sorting the whole vocabulary for every token took a quarter of a sampled batch's time;
/// with neither limit nothing is sorted, and otherwise only the head is: the 256 most likely
/// are picked out in linear time and sorted, and the rest only when they do not reach `top_p`.
fn nucleus(probs: &mut [(u32, f64)], top_k: usize, top_p: f64) -> &[(u32, f64)] {
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = if top_k == 0 {
        probs.len()
    } else {
        top_k.min(probs.len())
    };
    if k == probs.len() && top_p >= 1.0 {
        return probs;
    }
    let total: f64 = if k == probs.len() {
        probs.iter().map(|p| p.1).sum()
    } else {
        probs.select_nth_unstable_by(k - 1, order);
        probs[..k].iter().map(|p| p.1).sum()
    };
    let head = k.min(256);
    if head < k {
        probs[..k].select_nth_unstable_by(head - 1, order);
    }
    probs[..head].sort_unstable_by(order);
    let cut = |sorted: &[(u32, f64)]| {
        let mut kept = 0.0;
        sorted.iter().position(|p| {
            kept += p.1 / total;
            kept >= top_p
        })
    };
    match cut(&probs[..head]) {
        Some(i) => &probs[..i + 1],
        None if head == k => &probs[..k],
        None => {
            probs[..k].sort_unstable_by(order);
            let i = cut(&probs[..k]).map_or(k, |i| i + 1);
            &probs[..i]
        }
    }
}

fn last_logits(logits: &Tensor) -> candle_core::Result<Vec<f32>> {
    let t = logits.dim(1)?;
    logits
        .narrow(1, t - 1, 1)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()
}

/// Generates after `prompt`, calling `on_token` with each new token; `on_token` returning false
/// stops early (a client gone). Returns the new tokens and why it stopped.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    s: &Sampling,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> candle_core::Result<(Vec<u32>, Finish)> {
    if prompt.is_empty() {
        return Err(candle_core::Error::msg("the prompt has no tokens"));
    }
    let room = model
        .config
        .max_position_embeddings
        .saturating_sub(prompt.len());
    let budget = s.max_tokens.min(room);
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut cache = KvCache::default();
    let device = model.device();
    let ids = Tensor::from_slice(prompt, (1, prompt.len()), device)?;
    let mut logits = last_logits(&model.forward_cached(&ids, &mut cache)?)?;
    let mut out = Vec::new();
    while out.len() < budget {
        let next = pick(&logits, s, &mut rng);
        if s.stop.contains(&next) {
            return Ok((out, Finish::Stop));
        }
        out.push(next);
        if !on_token(next) {
            return Ok((out, Finish::Stop));
        }
        if out.len() == budget {
            break;
        }
        let ids = Tensor::from_slice(&[next], (1, 1), device)?;
        logits = last_logits(&model.forward_cached(&ids, &mut cache)?)?;
    }
    Ok((out, Finish::Length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picking_is_greedy_cold_and_seeded_warm() {
        let logits = [0.1f32, 2.0, 0.5, 1.9];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(pick(&logits, &Sampling::default(), &mut rng), 1);
        let warm = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            ..Sampling::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| pick(&logits, &warm, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let drawn = draw(3);
        assert!(drawn.contains(&1) && drawn.contains(&3));
        // The nucleus of 0.5 holds only the top token.
        let narrow = Sampling { top_p: 0.4, ..warm };
        assert!((0..20).all(|_| pick(&logits, &narrow, &mut rng) == 1));
    }

    #[test]
    fn the_nucleus_is_the_sorted_head_whatever_the_limits() {
        // Scores with many ties and a long tail, so that top-p needs more than the first 256.
        let mut state = 7u64;
        let probs: Vec<(u32, f64)> = (0..5000u32)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (i, ((state >> 33) % 97) as f64 + 1.0)
            })
            .collect();
        let reference = |k: usize, p: f64| {
            let mut sorted = probs.clone();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
            if k > 0 {
                sorted.truncate(k);
            }
            let total: f64 = sorted.iter().map(|p| p.1).sum();
            let mut kept = 0.0;
            let cut = sorted
                .iter()
                .position(|q| {
                    kept += q.1 / total;
                    kept >= p
                })
                .map_or(sorted.len(), |i| i + 1);
            sorted.truncate(cut);
            sorted
        };
        for (k, p) in [
            (0, 0.5),
            (0, 0.01),
            (0, 0.99),
            (10, 1.0),
            (10, 0.3),
            (300, 0.9),
            (4999, 0.95),
        ] {
            let mut work = probs.clone();
            assert_eq!(
                nucleus(&mut work, k, p),
                reference(k, p).as_slice(),
                "top_k {k}, top_p {p}"
            );
        }
        let mut work = probs.clone();
        assert_eq!(nucleus(&mut work, 0, 1.0).len(), probs.len());
    }
}
