//! A validator that attacks its host in the way `attack` names, for the adversarial tests.
//! With `attack = "none"` (or a record that does not say `attack`) it accepts everything,
//! so the same instance pool also serves good calls between bad ones; `echo` reports what it
//! read of every field.

use serde::Deserialize;
use tributary_sdk::validator::{check_each, Batch, NewValue, Record, Validator, Verdict};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub attack: String,
    /// For `http`: where to send a GET.
    pub url: String,
    /// For `sign`: the digest to sign, 64 hex digits.
    pub digest: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            attack: "none".into(),
            url: String::new(),
            digest: String::new(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

/// Uses the signer and http capabilities and reports what it got as its error, so that the
/// tests can see it (these two are probes, not attacks).
fn probe(config: &Config) -> Result<Vec<Verdict>, String> {
    match config.attack.as_str() {
        "sign" => {
            let digest: [u8; 32] = unhex(&config.digest)
                .and_then(|d| d.try_into().ok())
                .ok_or("digest: 64 hex digits")?;
            let address = tributary_sdk::signer::address()?;
            let signature = tributary_sdk::signer::sign_digest(&digest)?;
            Err(format!("signer {address} signature 0x{}", hex(&signature)))
        }
        _ => {
            let response = tributary_sdk::http::send(&tributary_sdk::http::Request {
                method: "GET".into(),
                url: config.url.clone(),
                headers: Vec::new(),
                body: Vec::new(),
            })?;
            Err(format!(
                "http {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ))
        }
    }
}

/// Says what it read of each record, every field, so that tests can compare what crosses
/// the boundary by each interface: odd rows are rejected with the values as the reason,
/// even ones accepted with a quality from their row and their text rewritten to the values.
fn echo(batch: &Batch) -> Vec<Verdict> {
    batch
        .records()
        .map(|record| {
            let values: Vec<String> = (0..batch.fields().len())
                .map(|i| format!("{:?}", record.get_index(i)))
                .collect();
            let said = values.join(" | ");
            if record.row() % 2 == 1 {
                Verdict::reject(said)
            } else {
                let quality = 1.0 / (record.row() + 1) as f64;
                let text = record.text_field_name();
                Verdict::accept(quality).rewrite(text, NewValue::String(said))
            }
        })
        .collect()
}

pub struct Hostile;

fn attack(name: &str) -> Result<Vec<Verdict>, String> {
    match name {
        "loop" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        // 4 MiB: well past the host's output cap (256 KiB of reasons) yet small enough to
        // build inside the instance's memory cap, so it is the cap on output that must stop it.
        "output" => Ok(vec![Verdict::reject("x".repeat(4 << 20))]),
        "panic" => panic!("the hostile plugin panics on purpose"),
        "file" => match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => Err(format!(
                "read a file the host should hide: {} bytes",
                text.len()
            )),
            Err(e) => Err(format!("file: {e}")),
        },
        "socket" => match std::net::TcpStream::connect("127.0.0.1:1") {
            Ok(_) => Err("opened a socket the host should refuse".into()),
            Err(e) => Err(format!("socket: {e}")),
        },
        "env" => {
            let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            Err(format!("env: {} variables {vars:?}", vars.len()))
        }
        "kv-flood" => {
            let big = vec![7u8; 1 << 20];
            for i in 0u32.. {
                tributary_sdk::kv::set(&i.to_le_bytes(), &big)?;
            }
            Err("unreachable".into())
        }
        _ => Err(format!("unknown attack {name}")),
    }
}

impl Validator for Hostile {
    type Config = Config;

    fn check(_: &Config, _: &Record) -> Verdict {
        Verdict::accept(1.0)
    }

    fn validate(config: &Config, batch: &Batch) -> Result<Vec<Verdict>, String> {
        if config.attack == "none" {
            return Ok(check_each::<Self>(config, batch));
        }
        if config.attack == "sign" || config.attack == "http" {
            return probe(config);
        }
        if config.attack == "echo" {
            return Ok(echo(batch));
        }
        attack(&config.attack)
    }
}

tributary_sdk::export_validator!(Hostile);
