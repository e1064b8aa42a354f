//! `GET /v1/jobs/{id}`: a background job's status as JSON, or, when the client accepts
//! `text/event-stream`, as server-sent events (`progress` while it runs, then one `done`).

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream};

use super::error::{ApiError, Problem};
use super::AppState;
use crate::auth::Principal;
use crate::jobs::JobStatus;

/// A job just started or queued: 202 with its status and `Location: /v1/jobs/{id}`.
pub type Accepted = (
    StatusCode,
    [(header::HeaderName, String); 1],
    Json<JobStatus>,
);

pub fn accepted(job: JobStatus) -> Accepted {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
        Json(job),
    )
}

fn events(
    rx: tokio::sync::watch::Receiver<JobStatus>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // The current status first, then one event per change until the job finishes.
    stream::unfold((rx, true, false), |(mut rx, first, finished)| async move {
        if finished {
            return None;
        }
        if !first {
            // A sender gone means the job's thread ended; its last status is still readable.
            let _ = rx.changed().await;
        }
        let status = rx.borrow_and_update().clone();
        let done = status.finished();
        let event = Event::default()
            .event(if done { "done" } else { "progress" })
            .json_data(&status)
            .unwrap_or_else(|_| Event::default().event("error"));
        Some((Ok(event), (rx, false, done)))
    })
}

#[utoipa::path(get, operation_id = "getJob", path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = JobStatus, description = "the status; with `Accept: text/event-stream`, events `progress` and `done` carrying it"),
        (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require_authenticated()?;
    // A training job shows its model card: only to an admin, whoever queued it, or a reader
    // of the Datanet it trains on.
    if let Some(Some(saved)) = app.jobs.request(&id) {
        if let Ok(job) = serde_json::from_value::<super::models::TrainJob>(saved) {
            if !principal.is_admin() && job.by.as_deref() != principal.subject() {
                super::datanets::readable(&app, &principal, &job.request.datanet).await?;
            }
        }
    }
    let rx = app
        .jobs
        .watch(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("no job {id}")))?;
    let wants_events = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_events {
        return Ok(Sse::new(events(rx))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let status = rx.borrow().clone();
    Ok(Json(status).into_response())
}
