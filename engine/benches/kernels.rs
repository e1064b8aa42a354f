//! Throughput of the serving products (`Matrix::product`) at SmolLM2-135M's shapes, for row
//! counts from one decoding sequence to a prefill chunk: GFLOP/s per precision and row count,
//! one JSON object a line. Run on the pool the serving engine uses (all threads).
//!
//!   cargo bench -p tributary --bench kernels [-- ROWS,ROWS,...]

use std::time::Instant;

use tributary::serve::matrix::{Matrix, Precision};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

fn main() {
    let rows: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .map(|a| a.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 16, 64, 256]);
    // q/k/v fused (960 × 576), gate/up fused (3072 × 576), down (576 × 1536).
    let shapes = [(960, 576), (3072, 576), (576, 1536)];
    for precision in [Precision::Q8, Precision::F32] {
        let mats: Vec<Matrix> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(o, c))| Matrix::new(o, c, values(o * c, i as u32 + 1), precision))
            .collect();
        for &n in &rows {
            let xs: Vec<Vec<f32>> = shapes.iter().map(|&(_, c)| values(n * c, 99)).collect();
            let flops: f64 = shapes.iter().map(|&(o, c)| 2.0 * (o * c * n) as f64).sum();
            let mut best = f64::MAX;
            // At least ~0.3 s of work per point, best round of five.
            let reps = ((3e9 / flops) as usize).clamp(1, 2000);
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..reps {
                    for (m, x) in mats.iter().zip(&xs) {
                        std::hint::black_box(m.product(x, n, &[]));
                    }
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            println!(
                "{{\"precision\":\"{precision:?}\",\"rows\":{n},\"ms_per_layer\":{:.3},\"gflops\":{:.1}}}",
                best * 1e3,
                flops / best / 1e9
            );
        }
    }
}
