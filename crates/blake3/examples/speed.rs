//! Hashes a million 250-byte messages in the lanes and one at a time with the `blake3` crate,
//! and prints both rates: `cargo run --release -p tributary-blake3 --example speed`.

use std::time::Instant;

fn main() {
    let messages: Vec<Vec<u8>> = (0..1_000_000u32)
        .map(|i| (0..200 + i % 100).map(|j| (i ^ j) as u8).collect())
        .collect();
    let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let mut out = vec![[0u8; 32]; slices.len()];
    for _ in 0..3 {
        let start = Instant::now();
        tributary_blake3::hash_many(&slices, &mut out);
        let lanes = start.elapsed();
        let start = Instant::now();
        for (m, h) in slices.iter().zip(out.iter_mut()) {
            *h = *blake3::hash(m).as_bytes();
        }
        let single = start.elapsed();
        println!(
            "lanes {:.0} ns a message, one at a time {:.0} ns ({:.2}x)",
            lanes.as_nanos() as f64 / 1e6,
            single.as_nanos() as f64 / 1e6,
            single.as_secs_f64() / lanes.as_secs_f64()
        );
    }
}
