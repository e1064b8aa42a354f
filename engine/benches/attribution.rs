//! Query latency of a span index as library calls, for `bench/attribution/run.py`: counts of
//! the n-grams in a file (one comma-separated id list a line), and traces of the outputs in
//! another (the same format). Prints one JSON object.
//!
//!   cargo bench -p tributary --bench attribution -- INDEX_DIR QUERIES OUTPUTS [MIN_LEN MAX_COUNT]

use std::time::{Duration, Instant};

use tributary::attribution::trace::TraceParams;
use tributary::attribution::Index;

fn read_ids(path: &str) -> Vec<Vec<u32>> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| l.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [dir, queries, outputs, rest @ ..] = args.as_slice() else {
        eprintln!("usage: attribution INDEX_DIR QUERIES OUTPUTS [MIN_LEN MAX_COUNT]");
        std::process::exit(2);
    };
    let min_len = rest.first().and_then(|v| v.parse().ok()).unwrap_or(8);
    let max_count = rest.get(1).and_then(|v| v.parse().ok()).unwrap_or(100);
    let opened = Instant::now();
    let index = Index::open(std::path::Path::new(dir)).expect("open");
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
    let queries = read_ids(queries);
    // One pass to fault the pages in, as a served index would have them.
    let mut total = 0u64;
    for q in &queries {
        total += index.count(q);
    }
    let mut times: Vec<Duration> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            std::hint::black_box(index.count(q));
            t.elapsed()
        })
        .collect();
    times.sort();
    let params = TraceParams {
        min_len,
        max_count,
        ..TraceParams::default()
    };
    let traces: Vec<serde_json::Value> = read_ids(outputs)
        .iter()
        .map(|o| {
            index.trace(o, &params).expect("warm");
            let runs: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(index.trace(o, &params).expect("trace"));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let mut sorted = runs.clone();
            sorted.sort_by(f64::total_cmp);
            let spans = index.trace(o, &params).expect("trace").spans.len();
            serde_json::json!({"tokens": o.len(), "ms": sorted[2], "spans": spans})
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "open_ms": open_ms,
            "queries": queries.len(),
            "total_count": total,
            "count_p50_us": percentile(&times, 0.5),
            "count_p99_us": percentile(&times, 0.99),
            "traces": traces,
        })
    );
}
