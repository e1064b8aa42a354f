//! Hashes a million 64-byte blocks (a Merkle tree's inner nodes) and a million 32-byte ones
//! twice over (its leaves), in the widest lanes this CPU has and one at a time, and prints
//! the rates: `cargo run --release -p tributary-keccak --example keccak_speed`.

use std::time::Instant;

fn block<const N: usize>(i: usize) -> [u8; N] {
    std::array::from_fn(|j| (i.wrapping_mul(2_654_435_761) >> (j % 24)) as u8 ^ j as u8)
}

fn main() {
    let n = 1_000_000;
    let mut out = vec![[0u8; 32]; n];
    for _ in 0..3 {
        let start = Instant::now();
        tributary_keccak::hash_many(&mut out, false, block::<64>);
        let nodes = start.elapsed();
        let start = Instant::now();
        tributary_keccak::hash_many(&mut out, true, block::<32>);
        let leaves = start.elapsed();
        let start = Instant::now();
        for (i, h) in out.iter_mut().enumerate() {
            *h = tributary_keccak::hash(&block::<64>(i));
        }
        let single = start.elapsed();
        let ns = |d: std::time::Duration| d.as_nanos() as f64 / n as f64;
        println!(
            "lanes: {:.0} ns a node, {:.0} ns a leaf (two hashes); one at a time: {:.0} ns a node ({:.2}x)",
            ns(nodes),
            ns(leaves),
            ns(single),
            single.as_secs_f64() / nodes.as_secs_f64()
        );
    }
}
