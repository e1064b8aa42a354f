//! Continuous batching over one decoder: a thread takes generation jobs from a queue and, at
//! every step, runs one forward pass over all of them together: the prompt of each job that
//! just arrived (in chunks) and the last token of each job already decoding. A job joins at
//! the next step and leaves as soon as it ends, so a long answer never holds up a short one,
//! and a job whose client has gone is dropped before the next step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use super::decoder::{Decoder, KvCache, Segment};
use super::lora::Lora;
use crate::model::generate::{pick, Finish, Sampling};

/// How the engine batches.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Jobs decoded together; more wait in the queue.
    pub max_batch: usize,
    /// Prompt tokens of one job per step, so a long prompt delays the others' next token by
    /// one chunk's work at most.
    pub prefill_chunk: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            prefill_chunk: 256,
        }
    }
}

/// What a job asks for.
pub struct Job {
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub adapter: Option<Arc<Lora>>,
    pub events: UnboundedSender<Event>,
}

/// How a finished job went.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From joining the batch to the first token.
    pub prefill_s: f64,
    /// From the first token to the last.
    pub decode_s: f64,
    /// From submission to joining the batch.
    pub queued_s: f64,
}

/// What a job's receiver hears, in order: tokens, then one `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    Token(u32),
    Done(Summary),
    Failed(String),
}

/// How long the queue must stay quiet before an idle engine starts on what it has.
const GATHER_QUIET: Duration = Duration::from_millis(2);
/// The longest an idle engine waits for a burst to arrive.
const GATHER_MAX: Duration = Duration::from_millis(10);

struct Queued {
    job: Job,
    at: Instant,
}

struct Running {
    job: Job,
    cache: KvCache,
    rng: StdRng,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// The token to feed at the next step, once the prompt is in.
    pending: u32,
    produced: usize,
    budget: usize,
    queued_s: f64,
    joined: Instant,
    first_token: Option<Instant>,
}

impl Running {
    fn end(self, finish: Finish) {
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        let _ = self.job.events.send(Event::Done(Summary {
            finish,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.produced,
            prefill_s: (first - self.joined).as_secs_f64(),
            decode_s: (now - first).as_secs_f64(),
            queued_s: self.queued_s,
        }));
    }
}

/// A running engine: submit jobs; it stops when the last handle is dropped.
pub struct Engine {
    submit: Sender<Queued>,
    pub decoder: Arc<Decoder>,
    running: Arc<AtomicUsize>,
    waiting: Arc<AtomicUsize>,
}

impl Engine {
    pub fn start(decoder: Arc<Decoder>, config: EngineConfig) -> std::io::Result<Self> {
        let (submit, queue) = mpsc::channel();
        let running = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            decoder: decoder.clone(),
            config,
            queue,
            running: running.clone(),
            waiting: waiting.clone(),
        };
        // The loop runs on a worker of the engine's own pool, so that the serial parts of a
        // step (norms, attention of one row) and the parallel products share the pool's
        // threads: driven from a thread outside the pool, the pool's idle workers spun for
        // the serial parts and took the core that thread needed.
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("tributary-decode-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        std::thread::Builder::new()
            .name("tributary-decode".into())
            .spawn(move || pool.install(|| worker.run()))?;
        Ok(Self {
            submit,
            decoder,
            running,
            waiting,
        })
    }

    /// Queues a job. Its events say how it goes; a job the engine cannot take gets `Failed`.
    pub fn submit(&self, job: Job) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(q)) = self.submit.send(Queued {
            job,
            at: Instant::now(),
        }) {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            let _ = q
                .job
                .events
                .send(Event::Failed("the decoding thread has stopped".into()));
        }
    }

    /// Jobs decoding now, and jobs waiting for a slot.
    pub fn load(&self) -> (usize, usize) {
        (
            self.running.load(Ordering::Relaxed),
            self.waiting.load(Ordering::Relaxed),
        )
    }
}

struct Worker {
    decoder: Arc<Decoder>,
    config: EngineConfig,
    queue: Receiver<Queued>,
    running: Arc<AtomicUsize>,
    waiting: Arc<AtomicUsize>,
}

impl Worker {
    fn admit(&self, q: Queued, into: &mut Vec<Running>) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let max = self.decoder.config.max_position_embeddings;
        let job = q.job;
        if job.prompt.is_empty() || job.prompt.len() >= max {
            let _ = job.events.send(Event::Failed(format!(
                "the prompt has {} tokens; the model takes 1 to {}",
                job.prompt.len(),
                max - 1
            )));
            return;
        }
        if let Some(e) = job
            .adapter
            .as_deref()
            .and_then(|l| self.decoder.check_adapter(l).err())
        {
            let _ = job.events.send(Event::Failed(e.to_string()));
            return;
        }
        let budget = job.sampling.max_tokens.min(max - job.prompt.len());
        if budget == 0 {
            let _ = job.events.send(Event::Done(Summary {
                finish: Finish::Length,
                prompt_tokens: job.prompt.len(),
                completion_tokens: 0,
                prefill_s: 0.0,
                decode_s: 0.0,
                queued_s: q.at.elapsed().as_secs_f64(),
            }));
            return;
        }
        into.push(Running {
            rng: StdRng::seed_from_u64(job.sampling.seed),
            cache: KvCache::default(),
            fed: 0,
            pending: 0,
            produced: 0,
            budget,
            queued_s: q.at.elapsed().as_secs_f64(),
            joined: Instant::now(),
            first_token: None,
            job,
        });
    }

    fn run(self) {
        let mut batch: Vec<Running> = Vec::new();
        loop {
            if batch.is_empty() {
                match self.queue.recv_timeout(Duration::from_secs(3600)) {
                    Ok(q) => self.admit(q, &mut batch),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                self.gather(&mut batch);
            }
            while batch.len() < self.config.max_batch {
                match self.queue.try_recv() {
                    Ok(q) => self.admit(q, &mut batch),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if batch.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            // A client that has gone frees its slot.
            batch.retain(|r| !r.job.events.is_closed());
            self.running.store(batch.len(), Ordering::Relaxed);
            if batch.is_empty() {
                continue;
            }
            self.step(&mut batch);
        }
    }

    /// After an idle spell, waits a moment for the rest of a burst: requests sent together
    /// arrive over a few milliseconds, and those that miss the first step would wait for its
    /// whole prefill and then decode part-full while the late ones prefill (16 concurrent
    /// requests: the first ran alone for 0.1 to 0.2 s). The wait ends once the queue has
    /// been quiet for [`GATHER_QUIET`], and never lasts more than [`GATHER_MAX`].
    fn gather(&self, batch: &mut Vec<Running>) {
        let deadline = Instant::now() + GATHER_MAX;
        while batch.len() < self.config.max_batch {
            let wait = GATHER_QUIET.min(deadline.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                return;
            }
            match self.queue.recv_timeout(wait) {
                Ok(q) => self.admit(q, batch),
                Err(_) => return,
            }
        }
    }

    fn step(&self, batch: &mut Vec<Running>) {
        let chunk = self.config.prefill_chunk.max(1);
        let mut segments: Vec<Segment> = batch
            .iter_mut()
            .map(|r| {
                let tokens = if r.fed < r.job.prompt.len() {
                    let end = (r.fed + chunk).min(r.job.prompt.len());
                    &r.job.prompt[r.fed..end]
                } else {
                    std::slice::from_ref(&r.pending)
                };
                Segment {
                    tokens,
                    cache: &mut r.cache,
                    adapter: r.job.adapter.as_deref(),
                }
            })
            .collect();
        let result = self.decoder.step(&mut segments);
        let fed: Vec<usize> = segments.iter().map(|s| s.tokens.len()).collect();
        drop(segments);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Every request was checked on entry, so a failing step is the engine's
                // fault, not one request's: each job hears why.
                for r in batch.drain(..) {
                    let _ = r.job.events.send(Event::Failed(e.to_string()));
                }
                return;
            }
        };
        let mut kept = Vec::with_capacity(batch.len());
        for ((mut r, logits), fed) in batch.drain(..).zip(logits).zip(fed) {
            if r.fed < r.job.prompt.len() {
                r.fed += fed;
                if r.fed < r.job.prompt.len() {
                    kept.push(r);
                    continue;
                }
            }
            let token = pick(&logits, &r.job.sampling, &mut r.rng);
            if r.job.sampling.stop.contains(&token) {
                r.end(Finish::Stop);
                continue;
            }
            r.first_token.get_or_insert_with(Instant::now);
            r.produced += 1;
            if r.job.events.send(Event::Token(token)).is_err() {
                continue;
            }
            if r.produced >= r.budget {
                r.end(Finish::Length);
                continue;
            }
            r.pending = token;
            kept.push(r);
        }
        *batch = kept;
    }
}
