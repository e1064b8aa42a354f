//! Plugin benchmark: 1,000,000 records of about 200 bytes through `pii-redact` and
//! `text-quality` as WASM components and as the same Rust compiled natively, in one run;
//! the fixed cost of a call for batches of 1, 64 and 1,024 rows; the boundary cost per
//! record; and instantiation from a pre-linked component.
//!
//!     cargo bench -p tributary --bench plugins [-- RECORDS]
//!
//! Prints a Markdown table. Not a test: nothing here asserts a speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, StringArray};
use tributary::plugin::state::StateChanges;
use tributary::plugin::validator::WasmValidator;
use tributary::plugin::{PluginKind, Plugins};
use tributary::{Datanet, Datanets};
use tributary_plugin_artifacts as artifacts;

const WORDS: &[&str] = &[
    "river", "delta", "silt", "spring", "survey", "north", "coast", "tide", "harbour", "map",
    "station", "reading", "sample", "flow", "basin", "winter", "current", "depth", "grain", "bank",
];

/// Texts of about 200 bytes; one in twenty carries an email or a phone number.
fn texts(n: usize) -> Vec<String> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let mut t = String::with_capacity(220);
            while t.len() < 190 {
                t.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
                t.push(' ');
            }
            match i % 40 {
                0 => t.push_str("write to ada.l@example.org"),
                20 => t.push_str("call +44 20 7946 0958"),
                _ => t.push_str("end of note."),
            }
            t
        })
        .collect()
}

fn chunks(datanet: &Datanet, texts: &[String], rows: usize) -> Vec<RecordBatch> {
    texts
        .chunks(rows)
        .map(|c| {
            RecordBatch::try_new(
                datanet.spec.schema.arrow_schema(),
                vec![Arc::new(StringArray::from_iter_values(c.iter()))],
            )
            .expect("batch")
        })
        .collect()
}

fn install(plugins: &Plugins, p: &artifacts::Plugin) {
    let manifest =
        std::fs::read_to_string(std::path::Path::new(p.dir).join("plugin.toml")).expect("manifest");
    let wasm = std::fs::read(p.component).expect("component");
    plugins.install(&manifest, &wasm).expect("install");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // As the `tributary` binary does: see `tributary::tuning`.
    tributary::tuning::relaunch_tuned();
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let datanets = Datanets::open(dir.path()).expect("open");
    let plugins = Arc::new(Plugins::open(dir.path(), datanets.store().clone()).expect("plugins"));
    for p in [
        &artifacts::PII_REDACT,
        &artifacts::TEXT_QUALITY,
        &artifacts::HOSTILE,
    ] {
        install(&plugins, p);
    }
    let datanets = datanets.with_plugins(plugins.clone());
    let spec = serde_json::json!({"id": "bench", "name": "bench", "license": "CC0-1.0",
        "schema": {"text_field": "text", "fields": [{"name": "text", "type": "string", "required": true}]}});
    let datanet = datanets
        .create(serde_json::from_value(spec).expect("spec"), "bench")
        .expect("create");
    let texts = texts(n);
    // `PLUGIN_BENCH=calls` measures only the boundary, and `PLUGIN_BENCH=instantiate` only
    // instantiation, for profiling.
    let mode = std::env::var("PLUGIN_BENCH").unwrap_or_default();
    if mode == "instantiate" {
        let id = std::env::var("PLUGIN_ID").unwrap_or_else(|_| "hostile".into());
        let plugin = plugins.get(&id).expect("plugin");
        let t = Instant::now();
        for _ in 0..n {
            plugin.instantiate_once().expect("instantiate");
        }
        println!(
            "{:.1} µs an instance",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        return;
    }
    let only_calls = mode == "calls";
    let batches = chunks(&datanet, &texts, 1024);
    let bytes: usize = texts.iter().map(String::len).sum();
    println!(
        "{n} records, {:.0} bytes each on average, batches of 1,024 rows\n",
        bytes as f64 / n as f64
    );
    println!("| what | component | native | ratio (component / native speed) |");
    println!("|---|---|---|---|");

    let validator =
        |id: &str| WasmValidator::new(plugins.get_kind(id, PluginKind::Validator).expect("plugin"));
    let mut state = StateChanges::default();

    if !only_calls {
        // pii-redact: find and redact in each record.
        let pii = validator("pii-redact");
        let run_wasm = |v: &WasmValidator, state: &mut StateChanges| {
            let t = Instant::now();
            for b in &batches {
                std::hint::black_box(v.call(&datanet, "{}", b, state).expect("call"));
            }
            t.elapsed()
        };
        let wasm_pii = median((0..3).map(|_| run_wasm(&pii, &mut state)).collect());
        let native_pii = median(
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    for text in &texts {
                        let found = pii_redact::find(text);
                        if !found.is_empty() {
                            std::hint::black_box(pii_redact::redact(text, &found));
                        }
                    }
                    t.elapsed()
                })
                .collect(),
        );
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "| pii-redact | {:.0} records/s | {:.0} records/s | {:.2} |",
            rate(wasm_pii),
            rate(native_pii),
            native_pii.as_secs_f64() / wasm_pii.as_secs_f64()
        );

        let tq = validator("text-quality");
        let wasm_tq = median((0..3).map(|_| run_wasm(&tq, &mut state)).collect());
        let config = text_quality::Config::default();
        let native_tq = median(
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    for text in &texts {
                        std::hint::black_box(text_quality::judge(&config, text));
                    }
                    t.elapsed()
                })
                .collect(),
        );
        println!(
            "| text-quality | {:.0} records/s | {:.0} records/s | {:.2} |",
            rate(wasm_tq),
            rate(native_tq),
            native_tq.as_secs_f64() / wasm_tq.as_secs_f64()
        );
    }

    // A validator that only accepts: what remains is the boundary.
    let noop = validator("hostile");
    let config = r#"{"attack": "none"}"#;
    let mut per_call = Vec::new();
    let sizes: Vec<usize> = match std::env::var("PLUGIN_ROWS") {
        Ok(v) => v.split(',').filter_map(|r| r.parse().ok()).collect(),
        Err(_) => vec![1, 64, 1024],
    };
    for &rows in &sizes {
        let batch = &chunks(&datanet, &texts[..rows], rows)[0];
        let calls = (200_000 / rows).max(200);
        for _ in 0..calls / 10 {
            noop.call(&datanet, config, batch, &mut state)
                .expect("warm");
        }
        let samples: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..calls {
                    std::hint::black_box(
                        noop.call(&datanet, config, batch, &mut state)
                            .expect("call"),
                    );
                }
                t.elapsed() / calls as u32
            })
            .collect();
        per_call.push((rows, median(samples)));
    }
    println!();
    println!("| batch rows | one call (accept-all validator) | per record |");
    println!("|---|---|---|");
    for (rows, d) in &per_call {
        println!(
            "| {rows} | {:.2} µs | {:.1} ns |",
            d.as_secs_f64() * 1e6,
            d.as_secs_f64() * 1e9 / *rows as f64
        );
    }
    let (t1, t1024) = (per_call[0].1, per_call[per_call.len() - 1].1);
    {
        // The host's own part of a call: packing Arrow columns for the boundary.
        let batch = &chunks(&datanet, &texts[..1024], 1024)[0];
        let t = Instant::now();
        for _ in 0..2000 {
            std::hint::black_box(tributary::plugin::validator::to_wit(&datanet, batch));
        }
        println!(
            "packing 1,024 rows for the boundary (host side): {:.1} µs",
            t.elapsed().as_secs_f64() * 1e6 / 2000.0
        );
        let empty: Vec<String> = vec![String::new(); 1024];
        let batch = &chunks(&datanet, &empty, 1024)[0];
        let t = Instant::now();
        for _ in 0..2000 {
            std::hint::black_box(
                noop.call(&datanet, config, batch, &mut state)
                    .expect("call"),
            );
        }
        println!(
            "a call with 1,024 empty strings: {:.1} µs",
            t.elapsed().as_secs_f64() * 1e6 / 2000.0
        );
    }
    println!(
        "\nfixed cost of a call: {:.2} µs (batch of 1); boundary cost per record: {:.1} ns ((t1024 - t1) / 1023)",
        t1.as_secs_f64() * 1e6,
        (t1024.as_secs_f64() - t1.as_secs_f64()) * 1e9 / 1023.0
    );

    // A plugin's imports are linked at instantiation, so the figure depends on them: the two
    // benchmark plugins import little of WASI, the hostile one all of it.
    for id in ["text-quality", "pii-redact", "hostile"] {
        let plugin = plugins.get(id).expect("plugin");
        for _ in 0..50 {
            plugin.instantiate_once().expect("instantiate");
        }
        let samples: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..1000 {
                    plugin.instantiate_once().expect("instantiate");
                }
                t.elapsed() / 1000
            })
            .collect();
        println!(
            "instantiation of {id} from InstancePre on the pooling allocator, and its teardown: {:.1} µs",
            median(samples).as_secs_f64() * 1e6
        );
    }
}
