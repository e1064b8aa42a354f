//! Long work the server does in the background (building an index now; training later): each
//! job has an id, a state, a stage and a count of work done, watched by whoever asks. The API
//! serves a job's status as JSON, or as server-sent events until it finishes. Jobs live in
//! memory: a restart forgets them, and the work they did is kept only where it was committed
//! (an index build that a restart cut short is simply run again, to the same content hash).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::watch;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    pub id: String,
    /// What the job does, for example `index-build`.
    pub kind: String,
    pub state: JobState,
    /// The current step, for example `tokenizing`.
    pub stage: String,
    /// Work done in this stage, of `total` when it is known.
    pub done: u64,
    pub total: Option<u64>,
    /// What a job that succeeded made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why a job failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JobStatus {
    pub fn finished(&self) -> bool {
        self.state != JobState::Running
    }
}

/// What a running job reports through.
pub struct Progress {
    tx: watch::Sender<JobStatus>,
}

impl Progress {
    /// Says the job is at `stage`, with `done` of `total` done.
    pub fn update(&self, stage: &str, done: u64, total: Option<u64>) {
        self.tx.send_modify(|s| {
            if s.stage != stage {
                s.stage = stage.to_string();
            }
            s.done = done;
            s.total = total;
        });
    }
}

/// How many finished jobs are remembered.
const KEEP_FINISHED: usize = 1000;

/// The server's jobs.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<JobTable>,
}

#[derive(Default)]
struct JobTable {
    by_id: HashMap<String, watch::Receiver<JobStatus>>,
    /// Ids in the order they started, to forget the oldest finished ones.
    order: VecDeque<String>,
}

impl Jobs {
    /// Starts `work` on a thread of its own and returns the job's first status.
    pub fn spawn(
        &self,
        kind: &str,
        work: impl FnOnce(&Progress) -> Result<serde_json::Value, String> + Send + 'static,
    ) -> JobStatus {
        let id = format!("job-{}", hex::encode(rand::random::<[u8; 8]>()));
        let status = JobStatus {
            id: id.clone(),
            kind: kind.to_string(),
            state: JobState::Running,
            stage: "starting".into(),
            done: 0,
            total: None,
            result: None,
            error: None,
        };
        let (tx, rx) = watch::channel(status.clone());
        {
            let mut table = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            table.by_id.insert(id.clone(), rx);
            table.order.push_back(id.clone());
            while table.order.len() > KEEP_FINISHED {
                let oldest = table.order[0].clone();
                if !table
                    .by_id
                    .get(&oldest)
                    .is_some_and(|r| r.borrow().finished())
                {
                    break;
                }
                table.order.pop_front();
                table.by_id.remove(&oldest);
            }
        }
        let spawned = std::thread::Builder::new()
            .name(format!("{kind}-{id}"))
            .spawn(move || {
                let progress = Progress { tx };
                // A panic in the work fails the job, not the server.
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&progress)))
                        .unwrap_or_else(|_| Err("the job panicked".into()));
                progress.tx.send_modify(|s| match outcome {
                    Ok(result) => {
                        s.state = JobState::Succeeded;
                        s.stage = "done".into();
                        s.result = Some(result);
                    }
                    Err(error) => {
                        s.state = JobState::Failed;
                        s.error = Some(error);
                    }
                });
            });
        if let Err(e) = spawned {
            let mut table = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let (tx, rx) = watch::channel(JobStatus {
                state: JobState::Failed,
                error: Some(format!("could not start: {e}")),
                ..status.clone()
            });
            drop(tx);
            table.by_id.insert(id, rx);
        }
        status
    }

    pub fn status(&self, id: &str) -> Option<JobStatus> {
        self.watch(id).map(|rx| rx.borrow().clone())
    }

    /// A receiver that sees every later change of the job.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<JobStatus>> {
        let table = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        table.by_id.get(id).cloned()
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
            std::thread::sleep(std::time::Duration::from_millis(10));
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
}
