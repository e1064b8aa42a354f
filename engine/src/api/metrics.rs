//! Counters served at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    batches_accepted: AtomicU64,
    batches_refused: AtomicU64,
    records_stored: AtomicU64,
    records_duplicate: AtomicU64,
}

impl Metrics {
    pub fn contribution_accepted(&self, stored: u64, duplicates: u64) {
        self.batches_accepted.fetch_add(1, Ordering::Relaxed);
        self.records_stored.fetch_add(stored, Ordering::Relaxed);
        self.records_duplicate
            .fetch_add(duplicates, Ordering::Relaxed);
    }

    pub fn contribution_refused(&self) {
        self.batches_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows = [
            (
                "tributary_batches_accepted_total",
                "Contribution batches accepted",
                &self.batches_accepted,
            ),
            (
                "tributary_batches_refused_total",
                "Contribution batches refused",
                &self.batches_refused,
            ),
            (
                "tributary_records_stored_total",
                "New records stored",
                &self.records_stored,
            ),
            (
                "tributary_records_duplicate_total",
                "Records refused as duplicates",
                &self.records_duplicate,
            ),
        ];
        for (name, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}
