//! How many threads the model kernels use. candle runs matrix products on rayon's pool (as
//! many threads as `RAYON_NUM_THREADS`), and some elementwise ops on a barrier pool of its own
//! (`CANDLE_NUM_THREADS`) whose threads spin while they wait. On two cores the spinning thread
//! took a core from the matrix products: training ran at 2,440 tokens a second with both pools
//! at two threads, 2,990 with the barrier pool off. So the barrier pool is off unless the
//! operator sets `CANDLE_NUM_THREADS`, and `--threads` sizes rayon's pool, which our fused
//! kernels share.

/// Sets the pools' sizes for this process: `threads` for rayon (all cores when `None`), and
/// one thread (no helpers) for candle's barrier pool unless `CANDLE_NUM_THREADS` is set.
/// Call before any model code runs: both pools read the environment once.
pub fn configure(threads: Option<usize>) {
    // No other thread exists yet to read the environment while it changes.
    if let Some(n) = threads.filter(|&n| n > 0) {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
