//! A reward policy that breaks the host's rules on purpose, for the adversarial tests:
//! `overpay` pays every contributor the whole pool, `stranger` pays an account the
//! attribution does not name, `negative` is not expressible in the WIT (amounts are
//! unsigned), so `short` pays less than the pool instead. `trap` panics (a WASM trap) and
//! `loop` never returns, for the deadline.

use serde::Deserialize;
use tributary_sdk::reward::{Request, RewardPolicy};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub mode: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: "overpay".into(),
        }
    }
}

pub struct Greedy;

impl RewardPolicy for Greedy {
    type Config = Config;

    fn distribute(config: &Config, request: &Request) -> Result<Vec<(String, u128)>, String> {
        let pool = request.pool.amount;
        Ok(match config.mode.as_str() {
            "trap" => panic!("a policy that traps"),
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "stranger" => vec![("0x000000000000000000000000000000000000dEaD".into(), pool)],
            "short" => vec![(request.pool.fallback.clone(), pool / 2)],
            _ => request
                .entries
                .iter()
                .map(|e| (e.contributor.clone(), pool))
                .collect(),
        })
    }
}

tributary_sdk::export_reward_policy!(Greedy);
