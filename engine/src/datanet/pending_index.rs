//! Record indexes finished after their batch is acknowledged.
//!
//! A large batch's commit carries a pending-index marker instead of its index entries. The
//! entries are then sorted, written as SST files and ingested on a thread of their own, so the
//! contributor's acknowledgement waits for the segment and the commit, not for an index that
//! can always be rebuilt from the segment. Whatever reads a Datanet's record index first
//! waits here until that Datanet has no index in flight, so nobody sees a committed batch
//! without its entries. A crash in between leaves the marker, and start-up finishes the
//! index from the segment; an index that failed while the server runs is rebuilt the same
//! way by the next reader that finds it failed.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The indexes in flight, per Datanet.
#[derive(Default)]
pub(crate) struct PendingIndexes {
    state: Mutex<HashMap<String, Pending>>,
    changed: Condvar,
    /// Held while a failed index is rebuilt, so that one reader rebuilds it.
    rebuilding: Mutex<()>,
}

#[derive(Default)]
struct Pending {
    running: usize,
    /// Why an index could not be finished: the marker stays, and until it is rebuilt the
    /// Datanet's index answers with this rather than with missing records.
    failed: Option<IndexFailure>,
}

/// An index that could not be finished after its batch's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFailure {
    pub batch: u64,
    pub message: String,
}

/// One index in flight. It ends with [`PendingIndex::done`] or [`PendingIndex::fail`]; one
/// dropped otherwise (its thread panicked or never started) counts as failed, so readers never
/// go on as if a missing index were complete.
pub(crate) struct PendingIndex {
    owner: Arc<PendingIndexes>,
    datanet: String,
    batch: u64,
    ended: bool,
}

impl PendingIndexes {
    fn state(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the index of `batch` of `datanet` as in flight until the returned handle ends.
    pub(crate) fn begin(self: &Arc<Self>, datanet: &str, batch: u64) -> PendingIndex {
        self.state().entry(datanet.to_string()).or_default().running += 1;
        PendingIndex {
            owner: self.clone(),
            datanet: datanet.to_string(),
            batch,
            ended: false,
        }
    }

    /// Waits until `datanet` has no index in flight; an error if one of them failed.
    pub(crate) fn wait(&self, datanet: &str) -> Result<(), IndexFailure> {
        let mut state = self.state();
        loop {
            match state.get(datanet) {
                None => return Ok(()),
                Some(Pending {
                    failed: Some(failure),
                    ..
                }) => return Err(failure.clone()),
                Some(p) if p.running == 0 => return Ok(()),
                Some(_) => {}
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Rebuilds a failed index of `datanet` with `rebuild` (given the failed batch), one caller
    /// at a time, and clears the failure once it succeeds; then waits as [`Self::wait`] does.
    /// A rebuild that fails leaves the failure, its reason added.
    pub(crate) fn recover<E: std::fmt::Display>(
        &self,
        datanet: &str,
        rebuild: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<(), IndexFailure> {
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller may have rebuilt it while this one waited for the lock.
        let Err(failure) = self.wait(datanet) else {
            return Ok(());
        };
        if let Err(e) = rebuild(failure.batch) {
            return Err(IndexFailure {
                batch: failure.batch,
                message: format!(
                    "{}; rebuilding it from the segment failed too: {e}",
                    failure.message
                ),
            });
        }
        let mut state = self.state();
        if let Some(pending) = state.get_mut(datanet) {
            pending.failed = None;
            if pending.running == 0 {
                state.remove(datanet);
            }
        }
        drop(state);
        self.changed.notify_all();
        self.wait(datanet)
    }

    /// Waits until no Datanet has an index in flight.
    pub(crate) fn wait_all(&self) {
        let mut state = self.state();
        while state.values().any(|p| p.running > 0) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl PendingIndex {
    /// The index is in.
    pub(crate) fn done(mut self) {
        self.ended = true;
    }

    /// The index could not be finished, for `message`.
    pub(crate) fn fail(mut self, message: String) {
        self.record_failure(message);
        self.ended = true;
    }

    fn record_failure(&self, message: String) {
        let mut state = self.owner.state();
        let pending = state.entry(self.datanet.clone()).or_default();
        pending.failed.get_or_insert(IndexFailure {
            batch: self.batch,
            message,
        });
    }
}

impl Drop for PendingIndex {
    fn drop(&mut self) {
        if !self.ended {
            self.record_failure("its thread stopped before finishing it".into());
        }
        let mut state = self.owner.state();
        if let Some(pending) = state.get_mut(&self.datanet) {
            pending.running -= 1;
            if pending.running == 0 && pending.failed.is_none() {
                state.remove(&self.datanet);
            }
        }
        drop(state);
        self.owner.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn readers_wait_for_the_index_in_flight_and_only_for_their_datanet() {
        let pending = Arc::new(PendingIndexes::default());
        let handle = pending.begin("a", 1);
        assert_eq!(pending.wait("b"), Ok(()), "another Datanet does not wait");
        let released = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (pending, released) = (pending.clone(), released.clone());
            std::thread::spawn(move || {
                let outcome = pending.wait("a");
                // The index must have ended before the wait did.
                (outcome, released.load(Ordering::SeqCst))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        released.store(true, Ordering::SeqCst);
        handle.done();
        let (outcome, after_release) = waiter.join().expect("waiter");
        assert_eq!(outcome, Ok(()));
        assert!(after_release, "the wait ended before the index did");
        assert!(pending.state().is_empty());
    }

    #[test]
    fn a_failed_index_is_reported_to_every_later_reader() {
        let pending = Arc::new(PendingIndexes::default());
        pending.begin("a", 7).fail("disk full".into());
        let failure = IndexFailure {
            batch: 7,
            message: "disk full".into(),
        };
        assert_eq!(pending.wait("a"), Err(failure.clone()));
        assert_eq!(pending.wait("a"), Err(failure));
        pending.wait_all();
        // A rebuild that fails leaves the failure; one that succeeds clears it.
        let rebuilt = pending.recover("a", |batch| Err(format!("segment of batch {batch} gone")));
        assert_eq!(
            rebuilt.map_err(|f| f.message),
            Err(
                "disk full; rebuilding it from the segment failed too: segment of batch 7 gone"
                    .into()
            )
        );
        assert!(pending.wait("a").is_err());
        let rebuilt = pending.recover("a", |_| Ok::<_, String>(()));
        assert_eq!(rebuilt, Ok(()));
        assert_eq!(pending.wait("a"), Ok(()));
        assert!(pending.state().is_empty());
    }

    #[test]
    fn an_index_abandoned_without_an_end_counts_as_failed() {
        let pending = Arc::new(PendingIndexes::default());
        let handle = pending.begin("a", 3);
        let _ = std::thread::spawn(move || {
            let _handle = handle;
            panic!("index thread panics");
        })
        .join();
        let failure = pending.wait("a").expect_err("abandoned");
        assert_eq!(failure.batch, 3);
        assert!(failure.message.contains("stopped"), "{}", failure.message);
    }
}
