//! Long work the server does in the background (index builds, training): each job has an id, a
//! state, a stage, a count of work done and free-form detail (a training job's loss, tokens per
//! second and ETA), watched by whoever asks. The API serves a job's status as JSON, or as
//! server-sent events until it finishes.
//!
//! Jobs either start at once on a thread of their own, or wait in a queue that one worker runs
//! in order (training: one run at a time uses every core). A job can be cancelled: a queued one
//! never starts, a running one is asked to stop at its next check. With a store, every change
//! of state is written to RocksDB (progress at most every few seconds), so that after a restart
//! finished jobs can still be read, a job that was running is marked failed with the reason, and
//! a queued one is handed back to be queued again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{Store, CF_JOBS};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobStatus {
    pub id: String,
    /// What the job does, for example `index-build` or `train`.
    pub kind: String,
    pub state: JobState,
    /// The current step, for example `tokenizing`.
    pub stage: String,
    /// Work done in this stage, of `total` when it is known.
    pub done: u64,
    pub total: Option<u64>,
    /// What the work reports beyond counts (training: loss, tokens per second, ETA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// What a job that succeeded made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why a job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix milliseconds.
    #[serde(default)]
    pub created_at: i64,
}

impl JobStatus {
    pub fn finished(&self) -> bool {
        matches!(
            self.state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job as stored: its status and, for a job that can be queued again, its request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredJob {
    pub status: JobStatus,
    #[serde(default)]
    pub request: Option<serde_json::Value>,
}

/// Progress is written to the store at most this often; state changes always are.
const PERSIST_EVERY: Duration = Duration::from_secs(5);

/// One job's shared parts: the status everyone watches, the cancel flag, and where to save.
struct Handle {
    tx: watch::Sender<JobStatus>,
    cancel: AtomicBool,
    store: Option<Arc<Store>>,
    request: Option<serde_json::Value>,
    last_saved: Mutex<Instant>,
    /// Whether the work checks [`Progress::cancelled`]: queued work does.
    cancellable: bool,
}

impl Handle {
    fn change(&self, always_save: bool, f: impl FnOnce(&mut JobStatus)) {
        self.change_if(always_save, |s| {
            f(s);
            true
        });
    }

    /// Applies `f` atomically with respect to every other change; `f` returns whether it
    /// changed anything. Returns the same.
    fn change_if(&self, always_save: bool, f: impl FnOnce(&mut JobStatus) -> bool) -> bool {
        if !self.tx.send_if_modified(f) {
            return false;
        }
        self.save(always_save);
        true
    }

    fn save(&self, always_save: bool) {
        let Some(store) = &self.store else { return };
        let mut last = self.last_saved.lock().unwrap_or_else(|p| p.into_inner());
        if !always_save && last.elapsed() < PERSIST_EVERY {
            return;
        }
        *last = Instant::now();
        let stored = StoredJob {
            status: self.tx.borrow().clone(),
            request: self.request.clone(),
        };
        let mut batch = store.batch();
        // A job whose status cannot be saved still runs; the API shows its live status.
        if batch.put_json(CF_JOBS, &stored.status.id, &stored).is_ok() {
            if let Err(e) = batch.commit() {
                tracing::warn!(job = %stored.status.id, "saving the job's status: {e}");
            }
        }
    }

    /// Ends the job with the work's outcome, unless it already ended (cancelled while queued).
    fn finish(&self, outcome: Result<serde_json::Value, String>) {
        let cancelled = self.cancel.load(Ordering::SeqCst);
        self.change(true, |s| {
            if s.finished() {
                return;
            }
            match outcome {
                Ok(result) => {
                    s.state = JobState::Succeeded;
                    s.stage = "done".into();
                    s.result = Some(result);
                }
                Err(error) if cancelled => {
                    s.state = JobState::Cancelled;
                    s.error = Some(error);
                }
                Err(error) => {
                    s.state = JobState::Failed;
                    s.error = Some(error);
                }
            }
        });
    }

    fn run(&self, work: Work) {
        // Queued to running in one step, so that a cancel in between cannot be undone.
        let started = !self.cancel.load(Ordering::SeqCst)
            && self.change_if(true, |s| {
                if s.finished() {
                    return false;
                }
                s.state = JobState::Running;
                s.stage = "starting".into();
                true
            });
        if !started {
            return;
        }
        let progress = Progress { handle: self };
        // A panic in the work fails the job, not the server.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&progress)))
            .unwrap_or_else(|_| Err("the job panicked".into()));
        self.finish(outcome);
    }
}

/// What a running job reports through.
pub struct Progress<'a> {
    handle: &'a Handle,
}

impl Progress<'_> {
    /// Says the job is at `stage`, with `done` of `total` done.
    pub fn update(&self, stage: &str, done: u64, total: Option<u64>) {
        let new_stage = self.handle.tx.borrow().stage != stage;
        self.handle.change(new_stage, |s| {
            if s.stage != stage {
                s.stage = stage.to_string();
            }
            s.done = done;
            s.total = total;
        });
    }

    /// Like [`Progress::update`], with detail for the API to show.
    pub fn report(&self, stage: &str, done: u64, total: Option<u64>, detail: serde_json::Value) {
        self.handle.change(false, |s| {
            if s.stage != stage {
                s.stage = stage.to_string();
            }
            s.done = done;
            s.total = total;
            s.detail = Some(detail);
        });
    }

    /// Whether someone asked the job to stop; work checks this between its steps.
    pub fn cancelled(&self) -> bool {
        self.handle.cancel.load(Ordering::SeqCst)
    }
}

type Work = Box<dyn FnOnce(&Progress) -> Result<serde_json::Value, String> + Send>;

/// Where queued work goes: the worker that runs it in order.
type Queue = mpsc::Sender<(Arc<Handle>, Work)>;

/// How many finished jobs are remembered in memory.
const KEEP_FINISHED: usize = 1000;

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("no job {0}")]
    NotFound(String),
    #[error("job {0} has already finished")]
    Finished(String),
    #[error("job {0} cannot stop midway: it is not a queued kind of job")]
    NotCancellable(String),
}

/// The server's jobs.
pub struct Jobs {
    table: Mutex<JobTable>,
    store: Option<Arc<Store>>,
    queue: Mutex<Option<Queue>>,
}

#[derive(Default)]
struct JobTable {
    by_id: HashMap<String, Arc<Handle>>,
    /// Ids in the order they were made, to forget the oldest finished ones.
    order: VecDeque<String>,
}

impl Default for Jobs {
    fn default() -> Self {
        Self {
            table: Mutex::default(),
            store: None,
            queue: Mutex::new(None),
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Jobs {
    /// Jobs saved in `store`. Reads the jobs of the last run: those that were running are now
    /// failed, and those still queued are returned, oldest first, to be queued again with
    /// [`Jobs::enqueue_as`].
    pub fn open(store: Arc<Store>) -> Result<(Self, Vec<StoredJob>), crate::store::StoreError> {
        let jobs = Self {
            store: Some(store.clone()),
            ..Self::default()
        };
        let mut stored: Vec<StoredJob> = store.scan_prefix_json(CF_JOBS, b"")?;
        stored.sort_by_key(|j| j.status.created_at);
        let mut queued = Vec::new();
        for job in stored {
            match job.status.state {
                JobState::Queued if job.request.is_some() => {
                    queued.push(job);
                    continue;
                }
                JobState::Queued | JobState::Running => {
                    let mut status = job.status.clone();
                    status.state = JobState::Failed;
                    status.error = Some(format!(
                        "the server stopped while the job was {} (at {} {}{})",
                        if job.status.state == JobState::Running {
                            "running"
                        } else {
                            "queued"
                        },
                        job.status.stage,
                        job.status.done,
                        job.status.total.map_or(String::new(), |t| format!("/{t}")),
                    ));
                    let handle = jobs.insert(status, job.request, false);
                    handle.change(true, |_| {});
                }
                _ => {
                    jobs.insert(job.status, job.request, false);
                }
            }
        }
        Ok((jobs, queued))
    }

    fn insert(
        &self,
        status: JobStatus,
        request: Option<serde_json::Value>,
        cancellable: bool,
    ) -> Arc<Handle> {
        let id = status.id.clone();
        let (tx, _) = watch::channel(status);
        let handle = Arc::new(Handle {
            tx,
            cancel: AtomicBool::new(false),
            store: self.store.clone(),
            request,
            last_saved: Mutex::new(Instant::now()),
            cancellable,
        });
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.by_id.insert(id.clone(), handle.clone());
        table.order.push_back(id);
        while table.order.len() > KEEP_FINISHED {
            let oldest = table.order[0].clone();
            if !table
                .by_id
                .get(&oldest)
                .is_some_and(|h| h.tx.borrow().finished())
            {
                break;
            }
            table.order.pop_front();
            table.by_id.remove(&oldest);
        }
        handle
    }

    fn new_status(id: String, kind: &str, state: JobState) -> JobStatus {
        JobStatus {
            id,
            kind: kind.to_string(),
            state,
            stage: if state == JobState::Queued {
                "queued".into()
            } else {
                "starting".into()
            },
            done: 0,
            total: None,
            detail: None,
            result: None,
            error: None,
            created_at: now(),
        }
    }

    pub fn new_id() -> String {
        format!("job-{}", hex::encode(rand::random::<[u8; 8]>()))
    }

    /// Starts `work` on a thread of its own and returns the job's first status.
    pub fn spawn(
        &self,
        kind: &str,
        work: impl FnOnce(&Progress) -> Result<serde_json::Value, String> + Send + 'static,
    ) -> JobStatus {
        let handle = self.insert(
            Self::new_status(Self::new_id(), kind, JobState::Running),
            None,
            false,
        );
        handle.change(true, |_| {});
        let status = handle.tx.borrow().clone();
        let runner = handle.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{kind}-{}", status.id))
            .spawn(move || runner.run(Box::new(work)));
        if let Err(e) = spawned {
            handle.finish(Err(format!("could not start: {e}")));
        }
        status
    }

    /// Queues `work` behind the jobs already queued; one worker runs them in order. `request`
    /// is saved with the job so that, after a restart, it can be queued again.
    pub fn enqueue(
        &self,
        kind: &str,
        request: serde_json::Value,
        work: impl FnOnce(&Progress) -> Result<serde_json::Value, String> + Send + 'static,
    ) -> JobStatus {
        self.enqueue_as(Self::new_id(), kind, request, work)
    }

    /// [`Jobs::enqueue`] under a given id: a job queued before a restart keeps its id.
    pub fn enqueue_as(
        &self,
        id: String,
        kind: &str,
        request: serde_json::Value,
        work: impl FnOnce(&Progress) -> Result<serde_json::Value, String> + Send + 'static,
    ) -> JobStatus {
        self.enqueue_at(Self::new_status(id, kind, JobState::Queued), request, work)
    }

    /// Queues again a job a restart handed back, keeping its id and place in the order.
    pub fn requeue(
        &self,
        stored: &StoredJob,
        work: impl FnOnce(&Progress) -> Result<serde_json::Value, String> + Send + 'static,
    ) -> JobStatus {
        let mut status = Self::new_status(
            stored.status.id.clone(),
            &stored.status.kind,
            JobState::Queued,
        );
        status.created_at = stored.status.created_at;
        let request = stored.request.clone().unwrap_or(serde_json::Value::Null);
        self.enqueue_at(status, request, work)
    }

    fn enqueue_at(
        &self,
        status: JobStatus,
        request: serde_json::Value,
        work: impl FnOnce(&Progress) -> Result<serde_json::Value, String> + Send + 'static,
    ) -> JobStatus {
        let handle = self.insert(status, Some(request), true);
        handle.change(true, |_| {});
        let status = handle.tx.borrow().clone();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let sender = queue.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<(Arc<Handle>, Work)>();
            let started = std::thread::Builder::new()
                .name("job-queue".into())
                .spawn(move || {
                    for (handle, work) in rx {
                        handle.run(work);
                    }
                });
            if let Err(e) = started {
                tracing::error!("starting the job queue: {e}");
            }
            tx
        });
        if sender.send((handle.clone(), Box::new(work))).is_err() {
            handle.finish(Err("the job queue is not running".into()));
        }
        status
    }

    /// Cancels a job: a queued one at once, a running one at its next check.
    pub fn cancel(&self, id: &str) -> Result<JobStatus, CancelError> {
        let handle = self
            .handle(id)
            .ok_or_else(|| CancelError::NotFound(id.to_string()))?;
        if handle.tx.borrow().finished() {
            return Err(CancelError::Finished(id.to_string()));
        }
        if !handle.cancellable {
            return Err(CancelError::NotCancellable(id.to_string()));
        }
        handle.cancel.store(true, Ordering::SeqCst);
        handle.change_if(true, |s| {
            if s.state != JobState::Queued {
                return false;
            }
            s.state = JobState::Cancelled;
            s.stage = "cancelled".into();
            s.error = Some("cancelled before it started".into());
            true
        });
        let status = handle.tx.borrow().clone();
        Ok(status)
    }

    fn handle(&self, id: &str) -> Option<Arc<Handle>> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.by_id.get(id).cloned()
    }

    /// The request a job was queued with (`Some(None)` for a job without one).
    pub fn request(&self, id: &str) -> Option<Option<serde_json::Value>> {
        self.handle(id).map(|h| h.request.clone())
    }

    pub fn status(&self, id: &str) -> Option<JobStatus> {
        self.handle(id).map(|h| h.tx.borrow().clone())
    }

    /// A receiver that sees every later change of the job.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<JobStatus>> {
        self.handle(id).map(|h| h.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(jobs: &Jobs, id: &str) -> JobStatus {
        for _ in 0..500 {
            let s = jobs.status(id).expect("job");
            if s.finished() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("job {id} did not finish");
    }

    #[test]
    fn jobs_report_progress_results_errors_and_panics() {
        let jobs = Jobs::default();
        let ok = jobs.spawn("test", |p| {
            p.update("counting", 3, Some(10));
            Ok(serde_json::json!({"answer": 42}))
        });
        assert_eq!(ok.state, JobState::Running);
        let done = wait(&jobs, &ok.id);
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.result, Some(serde_json::json!({"answer": 42})));
        assert_eq!((done.done, done.total), (3, Some(10)));
        let failed = wait(&jobs, &jobs.spawn("test", |_| Err("no corpus".into())).id);
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.error.as_deref(), Some("no corpus"));
        let panicked = wait(&jobs, &jobs.spawn("test", |_| panic!("boom")).id);
        assert_eq!(panicked.state, JobState::Failed);
        assert!(jobs.status("job-unknown").is_none());
    }

    #[test]
    fn queued_jobs_run_in_order_and_cancel_before_or_while_running() {
        let jobs = Jobs::default();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let first = jobs.enqueue("test", serde_json::json!({}), move |p| {
            // Runs until cancelled, checking between steps as training does.
            let _ = gate_rx.recv();
            while !p.cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err("stopped".into())
        });
        let second = jobs.enqueue("test", serde_json::json!({}), |_| Ok(serde_json::json!(2)));
        assert_eq!(second.state, JobState::Queued);
        let cancelled = jobs.cancel(&second.id).expect("cancel queued");
        assert_eq!(cancelled.state, JobState::Cancelled);
        let third = jobs.enqueue("test", serde_json::json!({}), |_| Ok(serde_json::json!(3)));
        gate_tx.send(()).expect("open the gate");
        jobs.cancel(&first.id).expect("cancel running");
        assert_eq!(wait(&jobs, &first.id).state, JobState::Cancelled);
        let third = wait(&jobs, &third.id);
        assert_eq!(third.result, Some(serde_json::json!(3)));
        assert_eq!(
            wait(&jobs, &second.id).state,
            JobState::Cancelled,
            "never ran"
        );
        assert_eq!(
            jobs.cancel(&third.id),
            Err(CancelError::Finished(third.id.clone()))
        );
        assert!(matches!(
            jobs.cancel("job-x"),
            Err(CancelError::NotFound(_))
        ));
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let build = jobs.spawn("index-build", move |_| {
            let _ = hold_rx.recv();
            Ok(serde_json::json!(null))
        });
        assert_eq!(
            jobs.cancel(&build.id),
            Err(CancelError::NotCancellable(build.id.clone()))
        );
        drop(hold_tx);
    }

    #[test]
    fn a_restart_fails_running_jobs_and_hands_back_queued_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("db")).expect("store"));
        let (jobs, queued) = Jobs::open(store.clone()).expect("open");
        assert!(queued.is_empty());
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let running = jobs.enqueue("train", serde_json::json!({"n": 1}), move |p| {
            p.update("training", 7, Some(100));
            let _ = hold_rx.recv();
            Ok(serde_json::json!(null))
        });
        let waiting = jobs.enqueue("train", serde_json::json!({"n": 2}), |_| {
            Ok(serde_json::json!(null))
        });
        let done = jobs.spawn("index-build", |_| Ok(serde_json::json!("built")));
        wait(&jobs, &done.id);
        while jobs.status(&running.id).map(|s| s.done) != Some(7) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // What a crash leaves: the store as it is now; the running job never finishes.
        let (again, queued) = Jobs::open(store).expect("reopen");
        drop(hold_tx);
        let failed = again.status(&running.id).expect("kept");
        assert_eq!(failed.state, JobState::Failed);
        let reason = failed.error.expect("reason");
        assert!(
            reason.contains("running") && reason.contains("training 7/100"),
            "{reason}"
        );
        assert_eq!(
            again.status(&done.id).expect("kept").result,
            Some(serde_json::json!("built"))
        );
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].status.id, waiting.id);
        assert_eq!(queued[0].request, Some(serde_json::json!({"n": 2})));
        let resumed = again.enqueue_as(
            queued[0].status.id.clone(),
            "train",
            serde_json::json!({"n": 2}),
            |_| Ok(serde_json::json!("resumed")),
        );
        assert_eq!(
            wait(&again, &resumed.id).result,
            Some(serde_json::json!("resumed"))
        );
    }
}
