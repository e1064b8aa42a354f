//! Rewards, for `bench/rewards/run.sh`. Two modes, each printing one JSON object:
//!
//!   cargo bench -p tributary --bench rewards -- accounting COMPLETIONS THREADS
//!       completions charged per second through the reward policy and the atomic commit
//!       (RocksDB, synced), with the `proportional` plugin as a WASM component and the same
//!       crate compiled natively, interleaved rounds;
//!   cargo bench -p tributary --bench rewards -- close ACCOUNTS LEAVES_FILE
//!       closing an epoch in which ACCOUNTS accounts earned (scan, payout tree, tree file,
//!       commit), then every account's proof; the accounts and amounts are written to
//!       LEAVES_FILE (`address,amount` lines) for the JavaScript library to build the same tree.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use tributary::attribution::index::{self, BuildInput, Document};
use tributary::attribution::service::{AttributeRequest, Attributions};
use tributary::attribution::Tokenizer;
use tributary::identity::Address;
use tributary::merkle::{self, MerkleTree};
use tributary::plugin::reward::Distribution;
use tributary::plugin::Plugins;
use tributary::rewards::book;
use tributary::rewards::service::{Charge, NativePolicy};
use tributary::rewards::{ModelTerms, Price, Rewards, Split};
use tributary::store::CF_REWARDS;
use tributary::Datanets;
use tributary_plugin_artifacts as artifacts;
use tributary_sdk::reward::{AttributionEntry, Penalty, Pool, Request, RewardPolicy};

/// The `proportional` plugin's code, compiled into the host.
struct NativeProportional;

impl NativePolicy for NativeProportional {
    fn distribute(&self, d: &Distribution, config: &str) -> Result<Vec<(String, u128)>, String> {
        let config: proportional::Config =
            serde_json::from_str(config).map_err(|e| e.to_string())?;
        let entries: Vec<AttributionEntry> = d
            .entries
            .iter()
            .map(|e| AttributionEntry {
                record_id: e.record_id.clone(),
                datanet: e.datanet.clone(),
                contributor: e.contributor.clone(),
                score: e.score,
                quality: e.quality,
            })
            .collect();
        let penalties: Vec<Penalty> = d
            .penalties
            .iter()
            .map(|p| Penalty {
                contributor: p.contributor.clone(),
                weight: p.weight,
                reason: p.reason.clone(),
            })
            .collect();
        let request = Request {
            pool: Pool {
                amount: d.pool,
                fallback: d.fallback.clone(),
            },
            attribution_id: &d.attribution_id,
            entries: &entries,
            datanets: &[],
            penalties: &penalties,
        };
        proportional::Proportional::distribute(&config, &request)
    }
}

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn address(i: u64) -> Address {
    let mut a = [0u8; 20];
    a[..8].copy_from_slice(&i.to_be_bytes());
    a[8..16].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
    Address(a)
}

fn accounting(completions: usize, threads: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let datanets = Datanets::open(dir.path()).expect("datanets");
    let store = datanets.store().clone();
    let plugins = Arc::new(Plugins::open(dir.path(), store.clone()).expect("plugins"));
    let manifest = std::fs::read_to_string(format!("{}/plugin.toml", artifacts::PROPORTIONAL.dir))
        .expect("manifest");
    let wasm = std::fs::read(artifacts::PROPORTIONAL.component).expect("component");
    plugins.install(&manifest, &wasm).expect("install");
    let attributions = Arc::new(Attributions::new(dir.path(), store.clone()));

    // 2,000 records from 200 contributors; each answer quotes two or three of them.
    let mut state = 7u64;
    let words = [
        "salt", "steam", "fold", "whisk", "sear", "rest", "brine", "toast", "chill", "roast",
        "knead", "proof", "glaze", "zest", "poach",
    ];
    let texts: Vec<String> = (0..2_000)
        .map(|i| {
            let n = 12 + lcg(&mut state) % 12;
            let body: Vec<&str> = (0..n)
                .map(|_| words[(lcg(&mut state) % words.len() as u64) as usize])
                .collect();
            format!("tip {i}: {}", body.join(" "))
        })
        .collect();
    let docs = texts.iter().enumerate().map(|(i, t)| {
        Ok(Document {
            text: t.clone(),
            record_id: *blake3::hash(t.as_bytes()).as_bytes(),
            contributor: address(i as u64 % 200),
        })
    });
    let tokenizer = Tokenizer::Bytes;
    let meta = index::build(
        BuildInput {
            documents: docs,
            total: Some(texts.len() as u64),
            tokenizer: &tokenizer,
            datanet: None,
            version: None,
        },
        attributions.indexes_dir(),
        &|_| {},
    )
    .expect("index");
    let records: Vec<String> = (0..256)
        .map(|k| {
            let quote: String = (0..3)
                .map(|_| texts[(lcg(&mut state) % texts.len() as u64) as usize].clone())
                .collect::<Vec<_>>()
                .join(" ");
            let request = AttributeRequest {
                request_id: Some(format!("bench-{k}")),
                text: Some(quote),
                ..AttributeRequest::default()
            };
            attributions
                .attribute(&meta.hash, &request)
                .expect("attribute")
                .attribution
                .id
        })
        .collect();

    let rewards = Arc::new(
        Rewards::new(
            store.clone(),
            attributions.clone(),
            Arc::new(datanets),
            Some(plugins),
        )
        .with_native("proportional-native", Arc::new(NativeProportional)),
    );
    let terms = |policy: &str| ModelTerms {
        price: Price {
            input_per_1k: 1_000_000_000_000,
            output_per_1k: 3_000_000_000_000,
        },
        split: Split::default(),
        platform: address(1_000_001),
        owner: address(1_000_002),
        fallback: None,
        policy: policy.into(),
        policy_config: serde_json::json!({}),
    };
    rewards
        .set_terms("wasm", terms("proportional"))
        .expect("terms");
    rewards
        .set_terms("native", terms("proportional-native"))
        .expect("terms");

    let run = |model: &str, round: usize| -> f64 {
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (rewards, records) = (&rewards, &records);
                s.spawn(move || {
                    for i in (t..completions).step_by(threads) {
                        let fee = rewards
                            .charge(&Charge {
                                completion: format!("{model}-{round}-{i}"),
                                model: model.into(),
                                input_tokens: 20 + (i as u64 % 50),
                                output_tokens: 64 + (i as u64 % 200),
                                attributions: vec![records[i % records.len()].clone()],
                            })
                            .expect("charge")
                            .expect("a fee");
                        assert_eq!(fee.status, book::FeeStatus::Paid, "{:?}", fee.reason);
                    }
                });
            }
        });
        completions as f64 / started.elapsed().as_secs_f64()
    };
    // Warm both paths (the component's first instance, RocksDB's first writes).
    run("wasm", 100);
    run("native", 100);
    let (mut wasm, mut native) = (Vec::new(), Vec::new());
    for round in 0..3 {
        wasm.push(run("wasm", round));
        native.push(run("native", round));
    }
    // The policy call alone, without the commit: a pool over one answer's entries.
    let stored = attributions.get(&records[0]).expect("record").attribution;
    let request = Distribution {
        pool: 123_456_789_012_345,
        fallback: address(1_000_002).to_checksum(),
        attribution_id: stored.id.clone(),
        entries: stored
            .records
            .iter()
            .map(|r| tributary::plugin::reward::Entry {
                record_id: r.record_id.clone(),
                datanet: String::new(),
                contributor: r.contributor.clone(),
                score: r.score as f64 / stored.score_unit as f64,
                quality: 1.0,
            })
            .collect(),
        penalties: Vec::new(),
    };
    let plugin = rewards
        .plugins()
        .expect("plugins")
        .get_kind("proportional", tributary::plugin::PluginKind::RewardPolicy)
        .expect("plugin");
    let calls = 20_000;
    let time_calls = |f: &dyn Fn()| {
        let started = Instant::now();
        for _ in 0..calls {
            f();
        }
        started.elapsed().as_secs_f64() * 1e6 / calls as f64
    };
    let (mut wasm_call, mut native_call) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        wasm_call.push(time_calls(&|| {
            let mut state = tributary::plugin::state::StateChanges::default();
            tributary::plugin::reward::distribute(&plugin, &request, &[], "{}", &mut state)
                .expect("distribute");
        }));
        native_call.push(time_calls(&|| {
            let p = NativeProportional
                .distribute(&request, "{}")
                .expect("distribute");
            tributary::plugin::reward::check_payouts(&request, &p).expect("checked");
        }));
    }
    let audit = rewards.audit().expect("audit");
    assert_eq!(
        audit.balances, audit.paid,
        "conservation over the whole book"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, n) = (median(&mut wasm), median(&mut native));
    let (wc, nc) = (median(&mut wasm_call), median(&mut native_call));
    println!(
        "{}",
        serde_json::json!({
            "mode": "accounting", "completions": completions, "threads": threads,
            "wasm_per_s": w, "native_per_s": n, "ratio": w / n,
            "wasm_runs": wasm, "native_runs": native,
            "entries": request.entries.len(), "wasm_call_us": wc, "native_call_us": nc,
            "call_ratio": nc / wc,
            "fees": audit.completions, "paid": audit.paid.to_string(), "balances": audit.balances.to_string(),
        })
    );
}

fn close(accounts: u64, leaves_file: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let datanets = Datanets::open(dir.path()).expect("datanets");
    let store = datanets.store().clone();
    let attributions = Arc::new(Attributions::new(dir.path(), store.clone()));
    let rewards = Rewards::new(store.clone(), attributions, Arc::new(datanets), None);
    let mut out = std::io::BufWriter::new(std::fs::File::create(leaves_file).expect("leaves"));
    let mut state = 11u64;
    let mut expected = Vec::with_capacity(accounts as usize);
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(100_000) {
        let mut batch = store.batch();
        for &i in chunk {
            let a = address(i);
            let amount = u128::from(lcg(&mut state)) * 1_000_000_007 + 1;
            batch.put(
                CF_REWARDS,
                book::earn_key(0, &a.to_checksum()),
                amount.to_string(),
            );
            writeln!(out, "{},{amount}", a.to_checksum()).expect("write");
            expected.push((a, amount));
        }
        batch.commit().expect("commit");
    }
    out.flush().expect("flush");
    drop(out);

    let started = Instant::now();
    let closed = tributary::ledger::epochs::close(&rewards, dir.path()).expect("close");
    let close_s = started.elapsed().as_secs_f64();
    // Every proof, as a distributor's front end would hand them out: from the tree in memory.
    let started = Instant::now();
    let tree = MerkleTree::from_leaves(
        expected
            .iter()
            .map(|(a, u)| merkle::leaf_address_uint256(&a.0, *u))
            .collect(),
    );
    let tree_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut proof_nodes = 0usize;
    for (a, u) in &expected {
        let leaf = merkle::leaf_address_uint256(&a.0, *u);
        proof_nodes += tree.proof(&leaf).expect("proof").len();
    }
    let proofs_s = started.elapsed().as_secs_f64();
    assert_eq!(
        format!("0x{}", hex::encode(tree.root())),
        closed.payout_root
    );
    // One proof through the API's path (the stored tree file), checked.
    let probe = &expected[expected.len() / 2];
    let claim = tributary::ledger::epochs::claim(&rewards, dir.path(), 0, &probe.0.to_checksum())
        .expect("claim");
    assert_eq!(claim.amount, probe.1);
    println!(
        "{}",
        serde_json::json!({
            "mode": "close", "accounts": accounts, "root": closed.payout_root,
            "close_s": close_s, "tree_s": tree_s, "proofs_s": proofs_s,
            "close_and_proofs_s": close_s + proofs_s, "proof_nodes": proof_nodes,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["accounting", n, t] => {
            accounting(n.parse().expect("COMPLETIONS"), t.parse().expect("THREADS"))
        }
        ["close", n, file] => close(n.parse().expect("ACCOUNTS"), file),
        _ => {
            eprintln!("usage: rewards accounting COMPLETIONS THREADS | rewards close ACCOUNTS LEAVES_FILE");
            std::process::exit(2);
        }
    }
}
