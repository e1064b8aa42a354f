//! OpenAI-compatible generation: `POST /v1/completions` and `POST /v1/chat/completions`
//! (with `stream: true`, server-sent events in OpenAI's chunk format ending in
//! `data: [DONE]`), each answer with an `attribution` object. `GET /v1/completions/{id}/
//! attribution` returns the attribution later, making it if the request skipped it. Adapters
//! are loaded and unloaded at `/v1/adapters` (admin).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::{ApiError, Problem};
use super::extract::JsonBody;
use super::rewards::attribute_and_charge;
use super::{blocking, AppState};
use crate::auth::Principal;
use crate::model::chat::Message;
use crate::model::generate::{Finish, Sampling};
use crate::rewards::book::FeeRecord;
use crate::serve::cache::{CacheError, CachedAdapter};
use crate::serve::engine::{Event, Job, Summary};
use crate::serve::service::{
    CompletionAttribution, LoadedBase, Resolved, ServableModel, ServeError, Serving,
    StoredCompletion,
};

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::Invalid { field, message } => {
                ApiError::bad_request(&field, format!("{field}: {message}"))
            }
            ServeError::UnknownModel(m) => ApiError::new(
                StatusCode::NOT_FOUND,
                "model-not-found",
                format!("no model {m:?}: GET /v1/models lists what can be served"),
            )
            .with_field("model"),
            ServeError::UnknownCompletion(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no completion {id}"),
            ),
            ServeError::Cache(e) => {
                let field = match e {
                    CacheError::Rank { .. } => "rank",
                    CacheError::TooLarge { .. } | CacheError::Full { .. } => "budget",
                };
                let status = match e {
                    CacheError::Full { .. } => StatusCode::CONFLICT,
                    _ => StatusCode::BAD_REQUEST,
                };
                ApiError::new(status, "adapter-rejected", format!("adapter: {e}")).with_field(field)
            }
            ServeError::Failed(m) => ApiError::internal(m),
        }
    }
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `prompt`: a string, or a list holding one.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The parameters both endpoints share.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct Params {
    /// Tokens to generate at most; completions default to 16, chat to the rest of the context.
    pub max_tokens: Option<usize>,
    /// 0 to 2; 0 picks the most likely token. Default 1.
    pub temperature: Option<f64>,
    /// Above 0, at most 1. Default 1.
    pub top_p: Option<f64>,
    /// Draw only from the `top_k` most likely tokens; 0 (the default) keeps all.
    pub top_k: Option<usize>,
    pub stop: Option<Stop>,
    /// The same seed and request give the same answer, batched with others or not.
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Only 1.
    pub n: Option<usize>,
    /// Accepted and not used.
    pub user: Option<String>,
    /// Only 0.
    pub presence_penalty: Option<f64>,
    /// Only 0.
    pub frequency_penalty: Option<f64>,
    /// Attribute the answer now (default); with `false` the answer comes sooner and the
    /// attribution is made when first asked for at `/v1/completions/{id}/attribution`.
    pub attribution: Option<bool>,
    /// Keep generating past the end-of-text token, to `max_tokens`.
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// `base` or `base:adapter`, as `GET /v1/models` lists them.
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub params: Params,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// OpenAI's newer name for `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    #[serde(flatten)]
    pub params: Params,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// Where the time went, in seconds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub queued_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub attribution_s: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub finish_reason: Option<Finish>,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<()>,
}

/// OpenAI's completion object, plus `attribution` and `timings`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    /// `text_completion`.
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
    pub attribution: CompletionAttribution,
    /// What the answer cost and who it paid, when the model has terms and attribution was
    /// made with the answer (otherwise `GET /v1/completions/{id}/fee` once charged).
    pub fee: Option<FeeRecord>,
    pub timings: Timings,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub finish_reason: Option<Finish>,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<()>,
}

/// OpenAI's chat completion object, plus `attribution` and `timings`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChatResponse {
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub attribution: CompletionAttribution,
    /// What the answer cost and who it paid, when the model has terms and attribution was
    /// made with the answer (otherwise `GET /v1/completions/{id}/fee` once charged).
    pub fee: Option<FeeRecord>,
    pub timings: Timings,
}

/// A checked request, ready for the engine.
struct Plan {
    prompt: Vec<u32>,
    sampling: Sampling,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
    attribute: bool,
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::bad_request(field, format!("{field}: {message}")).openai()
}

const MAX_STOPS: usize = 4;

fn plan(
    params: &Params,
    prompt: Vec<u32>,
    prompt_field: &str,
    default_max: Option<usize>,
    base: &LoadedBase,
) -> Result<Plan, ApiError> {
    let context = base.max_positions;
    if prompt.is_empty() {
        return Err(bad(prompt_field, "is empty"));
    }
    if prompt.len() >= context {
        return Err(bad(
            prompt_field,
            format!(
                "{} tokens; the model's context is {context}, and the answer needs at least one",
                prompt.len()
            ),
        ));
    }
    let room = context - prompt.len();
    let max_tokens = params.max_tokens.or(default_max).unwrap_or(room);
    if max_tokens == 0 {
        return Err(bad("max_tokens", "must be at least 1"));
    }
    if max_tokens > room {
        return Err(bad(
            "max_tokens",
            format!(
                "{} prompt tokens and {max_tokens} to generate exceed the model's context of {context}",
                prompt.len()
            ),
        ));
    }
    let temperature = params.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad("temperature", "must be between 0 and 2"));
    }
    let top_p = params.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad("top_p", "must be above 0 and at most 1"));
    }
    if params.n.is_some_and(|n| n != 1) {
        return Err(bad("n", "only one choice per request is generated"));
    }
    for (field, v) in [
        ("presence_penalty", params.presence_penalty),
        ("frequency_penalty", params.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(bad(field, "penalties are not supported; leave it at 0"));
        }
    }
    let stops = match &params.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stops.len() > MAX_STOPS {
        return Err(bad("stop", format!("at most {MAX_STOPS} sequences")));
    }
    if stops.iter().any(String::is_empty) {
        return Err(bad("stop", "a stop sequence is empty"));
    }
    let seed = params
        .seed
        .unwrap_or_else(|| rand::Rng::gen(&mut rand::thread_rng()));
    Ok(Plan {
        prompt,
        sampling: Sampling {
            max_tokens,
            temperature,
            top_p,
            top_k: params.top_k.unwrap_or(0),
            seed,
            stop: if params.ignore_eos {
                Vec::new()
            } else {
                vec![base.eos]
            },
        },
        stops,
        stream: params.stream,
        include_usage: params
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
        attribute: params.attribution.unwrap_or(true),
    })
}

/// Turns tokens into text as they come: holds back what could be the start of a stop
/// sequence or an incomplete character, and ends at the first stop sequence. Each token
/// decodes only the last few tokens (the ones from `prefix`, less what those up to `read`
/// gave), so an answer costs linear, not quadratic, decoding.
struct TextStream {
    base: Arc<LoadedBase>,
    tokens: Vec<u32>,
    /// The text of `tokens[..read]`.
    decoded: String,
    prefix: usize,
    read: usize,
    /// Bytes of the text already handed out.
    emitted: usize,
    stops: Vec<String>,
    hold: usize,
    /// Set once a stop sequence matched: the text up to it.
    stopped: Option<String>,
}

impl TextStream {
    fn new(base: Arc<LoadedBase>, stops: Vec<String>) -> Self {
        let hold = stops
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        Self {
            base,
            tokens: Vec::new(),
            decoded: String::new(),
            prefix: 0,
            read: 0,
            emitted: 0,
            stops,
            hold,
            stopped: None,
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.base.tokenizer.decode(ids).unwrap_or_default()
    }

    /// Moves what the new tokens add into `decoded`, unless they end inside a character
    /// (and this is not the `last` call).
    fn advance(&mut self, last: bool) {
        let window = self.decode(&self.tokens[self.prefix..]);
        let before = self.decode(&self.tokens[self.prefix..self.read]);
        if window.len() <= before.len() || (!last && window.ends_with('\u{FFFD}')) {
            return;
        }
        match window.strip_prefix(before.as_str()) {
            Some(new) => self.decoded.push_str(new),
            // A decoder that rewrites what came before: decode the whole answer once.
            None => self.decoded = self.decode(&self.tokens),
        }
        self.prefix = self.read;
        self.read = self.tokens.len();
    }

    /// Adds a token; returns the text it releases.
    fn push(&mut self, token: u32) -> String {
        self.tokens.push(token);
        self.advance(false);
        let text = &self.decoded;
        // A stop sequence may straddle what was handed out and what is new.
        let from = self.emitted.saturating_sub(self.hold).min(text.len());
        let from = (0..=from)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
            .min()
        {
            let kept = text[..at].to_string();
            let out = kept.get(self.emitted..).unwrap_or("").to_string();
            self.emitted = kept.len();
            self.stopped = Some(kept);
            return out;
        }
        let mut end = text.len().saturating_sub(self.hold);
        while end > 0 && !text.is_char_boundary(end) {
            end -= 1;
        }
        if end <= self.emitted {
            return String::new();
        }
        let out = text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// The rest of the text, at the end.
    fn finish(&mut self) -> String {
        if self.stopped.is_none() {
            self.advance(true);
        }
        let text = self.full();
        let out = text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = text.len();
        out
    }

    fn full(&self) -> String {
        self.stopped.clone().unwrap_or_else(|| self.decoded.clone())
    }
}

/// What a finished generation produced.
struct Generated {
    text: String,
    tokens: Vec<u32>,
    finish: Finish,
    summary: Summary,
}

fn submit(base: &LoadedBase, resolved: &Resolved, plan: &Plan) -> UnboundedReceiver<Event> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    base.engine.submit(Job {
        prompt: plan.prompt.clone(),
        sampling: plan.sampling.clone(),
        adapter: resolved.adapter.as_ref().map(|a| a.lora.clone()),
        events: tx,
    });
    rx
}

/// Drives one generation to its end, handing each piece of text to `on_text` (which returns
/// false when nobody listens any more). Dropping the receiver frees the engine's slot.
async fn drive(
    mut rx: UnboundedReceiver<Event>,
    mut text: TextStream,
    mut on_text: impl FnMut(String) -> bool,
) -> Result<Option<Generated>, ApiError> {
    let started = Instant::now();
    loop {
        match rx.recv().await {
            Some(Event::Token(t)) => {
                let piece = text.push(t);
                if !piece.is_empty() && !on_text(piece) {
                    return Ok(None);
                }
                if text.stopped.is_some() {
                    drop(rx);
                    let elapsed = started.elapsed().as_secs_f64();
                    return Ok(Some(Generated {
                        text: text.full(),
                        tokens: text.tokens.clone(),
                        finish: Finish::Stop,
                        summary: Summary {
                            finish: Finish::Stop,
                            prompt_tokens: 0,
                            completion_tokens: text.tokens.len(),
                            prefill_s: 0.0,
                            decode_s: elapsed,
                            queued_s: 0.0,
                        },
                    }));
                }
            }
            Some(Event::Done(summary)) => {
                let rest = text.finish();
                if !rest.is_empty() && !on_text(rest) {
                    return Ok(None);
                }
                return Ok(Some(Generated {
                    text: text.full(),
                    tokens: text.tokens.clone(),
                    finish: summary.finish,
                    summary,
                }));
            }
            Some(Event::Failed(e)) => return Err(ApiError::internal(e).openai()),
            None => return Err(ApiError::internal("the decoding engine stopped").openai()),
        }
    }
}

fn can_read_for(app: &AppState, principal: &Principal) -> impl Fn(&str) -> bool + Send + 'static {
    let datanets = app.datanets.clone();
    let principal = principal.clone();
    move |id: &str| {
        datanets
            .get(id)
            .is_ok_and(|d| principal.can_read(&d).is_ok())
    }
}

fn serving(app: &AppState) -> Arc<Serving> {
    app.serving.clone()
}

async fn resolve(app: &AppState, principal: &Principal, model: &str) -> Result<Resolved, ApiError> {
    let serving = serving(app);
    let can_read = can_read_for(app, principal);
    let model = model.to_string();
    blocking(move || {
        serving
            .resolve(&model, &can_read)
            .map_err(|e| ApiError::from(e).openai())
    })
    .await
}

/// Files the completion and, when asked, its attribution and fee. A completion that skips
/// attribution is attributed and charged right after the answer is sent.
async fn finish(
    app: &AppState,
    resolved: &Resolved,
    id: &str,
    created: i64,
    generated: &Generated,
    attribute: bool,
    by: Option<String>,
) -> Result<(CompletionAttribution, Option<FeeRecord>, f64), ApiError> {
    let serving = serving(app);
    let rewards = app.rewards.clone();
    let stored = StoredCompletion {
        id: id.to_string(),
        model: resolved.model.clone(),
        created,
        prompt_tokens: generated.summary.prompt_tokens as u64,
        output: generated.tokens.clone(),
        text: generated.text.clone(),
        sources: serving.sources(resolved),
        by,
    };
    let started = Instant::now();
    let (attribution, fee) = blocking(move || {
        serving.save(&stored)?;
        if attribute {
            Ok(attribute_and_charge(&serving, &rewards, &stored)?)
        } else {
            let deferred = serving.deferred(&stored);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = attribute_and_charge(&serving, &rewards, &stored) {
                    tracing::warn!(completion = %stored.id, "deferred attribution: {e}");
                }
            });
            Ok((deferred, None))
        }
    })
    .await
    .map_err(ApiError::openai)?;
    Ok((attribution, fee, started.elapsed().as_secs_f64()))
}

fn timings(s: &Summary, attribution_s: f64) -> Timings {
    Timings {
        queued_s: s.queued_s,
        prefill_s: s.prefill_s,
        decode_s: s.decode_s,
        attribution_s,
    }
}

fn usage(prompt: usize, completion: usize) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

/// The kind of response being streamed.
#[derive(Clone, Copy)]
enum Kind {
    Completion,
    Chat,
}

/// One chunk of a streamed answer, in OpenAI's format for `kind`.
fn chunk(
    kind: Kind,
    id: &str,
    created: i64,
    model: &str,
    text: Option<&str>,
    finish: Option<Finish>,
    first: bool,
) -> serde_json::Value {
    match kind {
        Kind::Completion => serde_json::json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null}],
        }),
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            serde_json::json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
            })
        }
    }
}

fn sse(value: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// Streams a generation as server-sent events: a task drives it and stops, freeing the slot,
/// when the client goes.
#[allow(clippy::too_many_arguments)]
fn stream_response(
    app: AppState,
    kind: Kind,
    resolved: Resolved,
    plan: Plan,
    by: Option<String>,
) -> Response {
    let id = Serving::new_id();
    let created = Serving::created();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<SseEvent>();
    let base = resolved.base.clone();
    let events = submit(&base, &resolved, &plan);
    let model = resolved.model.clone();
    tokio::spawn(async move {
        let text = TextStream::new(base.clone(), plan.stops.clone());
        let mut first = true;
        let opening = tx.clone();
        if matches!(kind, Kind::Chat) {
            first = false;
            if opening
                .send(sse(&chunk(
                    kind,
                    &id,
                    created,
                    &model,
                    Some(""),
                    None,
                    true,
                )))
                .is_err()
            {
                return;
            }
        }
        let sender = tx.clone();
        let (id2, model2) = (id.clone(), model.clone());
        let generated = drive(events, text, move |piece| {
            let c = chunk(kind, &id2, created, &model2, Some(&piece), None, first);
            first = false;
            sender.send(sse(&c)).is_ok()
        })
        .await;
        let generated = match generated {
            Ok(Some(g)) => g,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(sse(&serde_json::to_value(&e.0).unwrap_or_default()));
                let _ = tx.send(SseEvent::default().data("[DONE]"));
                return;
            }
        };
        let _ = tx.send(sse(&chunk(
            kind,
            &id,
            created,
            &model,
            None,
            Some(generated.finish),
            false,
        )));
        // The extensions come in a last chunk with no choices, as OpenAI sends usage.
        let mut last = serde_json::json!({
            "id": id, "object": match kind { Kind::Completion => "text_completion", Kind::Chat => "chat.completion.chunk" },
            "created": created, "model": model, "choices": [],
        });
        match finish(
            &app,
            &resolved,
            &id,
            created,
            &generated,
            plan.attribute,
            by,
        )
        .await
        {
            Ok((attribution, fee, attribution_s)) => {
                last["attribution"] = serde_json::to_value(&attribution).unwrap_or_default();
                last["fee"] = serde_json::to_value(&fee).unwrap_or_default();
                last["timings"] = serde_json::to_value(timings(&generated.summary, attribution_s))
                    .unwrap_or_default();
            }
            Err(e) => last["error"] = serde_json::to_value(&e.0).unwrap_or_default(),
        }
        if plan.include_usage {
            last["usage"] = serde_json::to_value(usage(plan.prompt.len(), generated.tokens.len()))
                .unwrap_or_default();
        }
        let _ = tx.send(sse(&last));
        let _ = tx.send(SseEvent::default().data("[DONE]"));
    });
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn generate_whole(
    app: &AppState,
    resolved: &Resolved,
    plan: &Plan,
    by: Option<String>,
) -> Result<Whole, ApiError> {
    let id = Serving::new_id();
    let created = Serving::created();
    let base = resolved.base.clone();
    let events = submit(&base, resolved, plan);
    let generated = drive(events, TextStream::new(base, plan.stops.clone()), |_| true)
        .await?
        .ok_or_else(|| ApiError::internal("the generation stopped").openai())?;
    let (attribution, fee, attribution_s) =
        finish(app, resolved, &id, created, &generated, plan.attribute, by).await?;
    let timings = timings(&generated.summary, attribution_s);
    Ok(Whole {
        id,
        created,
        generated,
        attribution,
        fee,
        timings,
    })
}

/// A finished answer, not streamed.
struct Whole {
    id: String,
    created: i64,
    generated: Generated,
    attribution: CompletionAttribution,
    fee: Option<FeeRecord>,
    timings: Timings,
}

fn prompt_text(p: &Prompt) -> Result<String, ApiError> {
    match p {
        Prompt::One(s) => Ok(s.clone()),
        Prompt::Many(v) if v.len() == 1 => Ok(v[0].clone()),
        Prompt::Many(_) => Err(bad("prompt", "give one prompt per request")),
    }
}

#[utoipa::path(post, operation_id = "createCompletion", path = "/v1/completions", tag = "serving",
    request_body = CompletionRequest,
    responses(
        (status = 200, body = CompletionResponse, description = "the answer; with `stream: true`, server-sent events of OpenAI's chunks, then one with `attribution` and `timings`, then `[DONE]`"),
        (status = 400, body = Problem, description = "a parameter is wrong, or the prompt and `max_tokens` exceed the context; `field` names it"),
        (status = 404, body = Problem, description = "no such model")),
    security(("bearer" = [])))]
pub async fn completion(
    State(app): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    principal
        .require_authenticated()
        .map_err(|e| ApiError::from(e).openai())?;
    let text = prompt_text(&request.prompt)?;
    let resolved = resolve(&app, &principal, &request.model).await?;
    let base = resolved.base.clone();
    let ids = blocking(move || {
        base.tokenizer
            .encode(&text)
            .map_err(|e| bad("prompt", e.to_string()))
    })
    .await?;
    let plan = plan(&request.params, ids, "prompt", Some(16), &resolved.base)?;
    let by = principal.subject().map(String::from);
    if plan.stream {
        return Ok(stream_response(app, Kind::Completion, resolved, plan, by));
    }
    let w = generate_whole(&app, &resolved, &plan, by).await?;
    Ok(Json(CompletionResponse {
        id: w.id,
        object: "text_completion".into(),
        created: w.created,
        model: resolved.model.clone(),
        choices: vec![CompletionChoice {
            index: 0,
            text: w.generated.text,
            finish_reason: Some(w.generated.finish),
            logprobs: None,
        }],
        usage: usage(plan.prompt.len(), w.generated.tokens.len()),
        attribution: w.attribution,
        fee: w.fee,
        timings: w.timings,
    })
    .into_response())
}

#[utoipa::path(post, operation_id = "createChatCompletion", path = "/v1/chat/completions", tag = "serving",
    request_body = ChatRequest,
    responses(
        (status = 200, body = ChatResponse, description = "the answer; with `stream: true`, server-sent events of OpenAI's chunks, then one with `attribution` and `timings`, then `[DONE]`"),
        (status = 400, body = Problem, description = "a parameter is wrong, or the messages and `max_tokens` exceed the context; `field` names it"),
        (status = 404, body = Problem, description = "no such model")),
    security(("bearer" = [])))]
pub async fn chat(
    State(app): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    principal
        .require_authenticated()
        .map_err(|e| ApiError::from(e).openai())?;
    if request.messages.is_empty() {
        return Err(bad("messages", "is empty"));
    }
    if let Some((i, m)) = request
        .messages
        .iter()
        .enumerate()
        .find(|(_, m)| !["system", "user", "assistant"].contains(&m.role.as_str()))
    {
        return Err(bad(
            &format!("messages[{i}].role"),
            format!("{:?} is not system, user or assistant", m.role),
        ));
    }
    let resolved = resolve(&app, &principal, &request.model).await?;
    let base = resolved.base.clone();
    let messages: Vec<Message> = request
        .messages
        .iter()
        .map(|m| Message::new(&m.role, &m.content))
        .collect();
    let ids = blocking(move || {
        let text = base
            .template
            .render(&messages, true)
            .map_err(|e| bad("messages", e.to_string()))?;
        base.tokenizer
            .encode(&text)
            .map_err(|e| bad("messages", e.to_string()))
    })
    .await?;
    let mut params = request.params.clone();
    params.max_tokens = params.max_tokens.or(request.max_completion_tokens);
    let plan = plan(&params, ids, "messages", None, &resolved.base)?;
    let by = principal.subject().map(String::from);
    if plan.stream {
        return Ok(stream_response(app, Kind::Chat, resolved, plan, by));
    }
    let w = generate_whole(&app, &resolved, &plan, by).await?;
    Ok(Json(ChatResponse {
        id: w.id,
        object: "chat.completion".into(),
        created: w.created,
        model: resolved.model.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".into(),
                content: w.generated.text,
            },
            finish_reason: Some(w.generated.finish),
            logprobs: None,
        }],
        usage: usage(plan.prompt.len(), w.generated.tokens.len()),
        attribution: w.attribution,
        fee: w.fee,
        timings: w.timings,
    })
    .into_response())
}

#[utoipa::path(get, operation_id = "getCompletionAttribution", path = "/v1/completions/{id}/attribution", tag = "serving",
    params(("id" = String, Path)),
    responses((status = 200, body = CompletionAttribution, description = "the attribution, made now if the request skipped it"),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn attribution(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<CompletionAttribution>, ApiError> {
    principal.require_authenticated()?;
    let serving = serving(&app);
    let rewards = app.rewards.clone();
    let admin = principal.is_admin();
    let subject = principal.subject().map(String::from);
    let a = blocking(move || {
        let c = serving.completion(&id)?;
        // Someone else's completion is not found, rather than forbidden: ids are not hints.
        if !admin && (c.by.is_none() || c.by != subject) {
            return Err(ServeError::UnknownCompletion(id).into());
        }
        // A completion not yet charged (attribution skipped, or charging failed) is now.
        let (a, _) = attribute_and_charge(&serving, &rewards, &c)?;
        Ok(a)
    })
    .await?;
    Ok(Json(a))
}

/// `GET /v1/models`: OpenAI's list object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    pub data: Vec<ServableModel>,
}

#[utoipa::path(get, operation_id = "listModels", path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList, description = "bases and adapters, as OpenAI lists models, each with its lineage and card; only those of Datanets the caller can read"),
        (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_models(
    State(app): State<AppState>,
    principal: Principal,
) -> Result<Json<ModelList>, ApiError> {
    principal.require_authenticated()?;
    let serving = serving(&app);
    let can_read = can_read_for(&app, &principal);
    let data = blocking(move || serving.list(&can_read).map_err(ApiError::from)).await?;
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadAdapter {
    /// The base to serve it over (a name from `GET /v1/models`).
    pub base: String,
    /// A registry adapter's id, or a new name for an adapter read from `path`.
    pub name: String,
    /// An absolute path to a directory in PEFT's layout (`adapter_config.json`,
    /// `adapter_model.safetensors`), on the server's machine.
    pub path: Option<String>,
    /// Pinned adapters are never evicted.
    #[serde(default)]
    pub pin: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdapterList {
    pub budget_bytes: usize,
    pub used_bytes: usize,
    pub max_rank: usize,
    pub adapters: Vec<CachedAdapter>,
}

fn adapter_list(s: &Serving) -> AdapterList {
    AdapterList {
        budget_bytes: s.adapters.budget,
        used_bytes: s.adapters.bytes(),
        max_rank: s.adapters.max_rank,
        adapters: s.adapters.list(),
    }
}

#[utoipa::path(post, operation_id = "loadAdapter", path = "/v1/adapters", tag = "serving",
    request_body = LoadAdapter,
    responses((status = 200, body = CachedAdapter, description = "loaded; serve it as `base:name`"),
        (status = 400, body = Problem, description = "above the rank limit, larger than the budget, or not an adapter for this base; `field` names why"),
        (status = 403, body = Problem, description = "admins only"),
        (status = 409, body = Problem, description = "pinned adapters fill the budget")),
    security(("bearer" = [])))]
pub async fn load_adapter(
    State(app): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<LoadAdapter>,
) -> Result<Json<CachedAdapter>, ApiError> {
    principal.require_admin()?;
    let serving = serving(&app);
    let can_read = can_read_for(&app, &principal);
    let info = blocking(move || {
        serving
            .load_adapter(
                &request.base,
                &request.name,
                request.path.as_deref().map(std::path::Path::new),
                request.pin,
                &can_read,
            )
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(info))
}

#[utoipa::path(get, operation_id = "listAdapters", path = "/v1/adapters", tag = "serving",
    responses((status = 200, body = AdapterList, description = "the adapters in memory, most recently used first")),
    security(("bearer" = [])))]
pub async fn list_adapters(
    State(app): State<AppState>,
    principal: Principal,
) -> Result<Json<AdapterList>, ApiError> {
    principal.require_admin()?;
    Ok(Json(adapter_list(&app.serving)))
}

#[utoipa::path(delete, operation_id = "unloadAdapter", path = "/v1/adapters/{name}", tag = "serving",
    params(("name" = String, Path)),
    responses((status = 200, body = CachedAdapter, description = "unloaded; requests already running keep it to their end"),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn unload_adapter(
    State(app): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<CachedAdapter>, ApiError> {
    principal.require_admin()?;
    app.serving.adapters.remove(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no adapter {name} is loaded"),
        )
    })
}
