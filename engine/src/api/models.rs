//! The Model Factory over REST: `POST /v1/models` queues a training run (202 and a job to
//! watch at `/v1/jobs/{id}`), `GET /v1/models/{id}` reads a model card (`GET /v1/models`,
//! which lists what can be served, is in `completions`), and
//! `POST /v1/jobs/{id}/cancel` stops a queued or running one.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::datanets::{load, readable};
use super::error::{ApiError, Problem};
use super::extract::JsonBody;
use super::jobs::{accepted, Accepted};
use super::{blocking, AppState};
use crate::attribution::service::Attributions;
use crate::auth::Principal;
use crate::datanet::service::Datanets;
use crate::jobs::{CancelError, JobStatus, Jobs, StoredJob};
use crate::model::registry::{ModelCard, ModelError, Registry, TrainRequest};

pub const TRAIN_JOB: &str = "train";

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Invalid { field, message } => {
                ApiError::bad_request(&field, format!("{field}: {message}"))
            }
            ModelError::NotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("no model {id}"))
            }
            ModelError::Store(e) => e.into(),
            ModelError::Failed(m) => ApiError::internal(m),
        }
    }
}

/// A training job as saved: the request, and who made it (who may cancel it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainJob {
    pub request: TrainRequest,
    pub by: Option<String>,
}

/// Queues a training run under `id`.
pub fn enqueue(
    jobs: &Jobs,
    id: String,
    job: TrainJob,
    registry: Arc<Registry>,
    datanets: Arc<Datanets>,
    attributions: Arc<Attributions>,
) -> JobStatus {
    let saved = serde_json::to_value(&job).unwrap_or_default();
    let job_id = id.clone();
    jobs.enqueue_as(id, TRAIN_JOB, saved, move |progress| {
        let card = registry
            .train(&job.request, &datanets, &attributions, &job_id, progress)
            .map_err(|e| e.to_string())?;
        serde_json::to_value(card).map_err(|e| e.to_string())
    })
}

/// Queues again the training jobs a restart found queued; others are failed with the reason.
pub fn resume(
    jobs: &Jobs,
    queued: Vec<StoredJob>,
    registry: &Arc<Registry>,
    datanets: &Arc<Datanets>,
    attributions: &Arc<Attributions>,
) {
    for stored in queued {
        let id = stored.status.id.clone();
        let job = if stored.status.kind == TRAIN_JOB {
            stored
                .request
                .clone()
                .ok_or_else(|| "it was saved without its request".to_string())
                .and_then(|r| {
                    serde_json::from_value::<TrainJob>(r)
                        .map_err(|e| format!("its saved request no longer reads: {e}"))
                })
        } else {
            Err(format!("a {} job cannot resume", stored.status.kind))
        };
        match job {
            Ok(job) => {
                tracing::info!(job = %id, "queueing again a training job from before the restart");
                let (registry, datanets, attributions) =
                    (registry.clone(), datanets.clone(), attributions.clone());
                jobs.requeue(&stored, move |progress| {
                    let card = registry
                        .train(&job.request, &datanets, &attributions, &id, progress)
                        .map_err(|e| e.to_string())?;
                    serde_json::to_value(card).map_err(|e| e.to_string())
                });
            }
            Err(reason) => {
                let reason = format!("after a restart: {reason}");
                jobs.requeue(&stored, move |_| Err(reason));
            }
        }
    }
}

#[utoipa::path(post, operation_id = "trainModel", path = "/v1/models", tag = "models",
    request_body = TrainRequest,
    responses(
        (status = 202, body = JobStatus, description = "queued; watch it at the Location, `/v1/jobs/{id}`, as JSON or server-sent events"),
        (status = 400, body = Problem, description = "a field is wrong; `field` names it"),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn train(
    State(app): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<TrainRequest>,
) -> Result<Accepted, ApiError> {
    let datanet = load(&app, &request.datanet).await?;
    principal.can_curate(&datanet)?;
    // Refuse a bad request now, rather than in a job that fails later.
    let (registry, datanets, attributions) = (
        app.models.clone(),
        app.datanets.clone(),
        app.attributions.clone(),
    );
    let checked = request.clone();
    let reader = principal.clone();
    blocking(move || {
        let can_read = |id: &str| datanets.get(id).is_ok_and(|d| reader.can_read(&d).is_ok());
        registry
            .check(&checked, &datanets, &attributions, &can_read)
            .map_err(ApiError::from)
    })
    .await?;
    let job = TrainJob {
        request,
        by: principal.subject().map(String::from),
    };
    let status = enqueue(
        &app.jobs,
        Jobs::new_id(),
        job,
        app.models.clone(),
        app.datanets.clone(),
        app.attributions.clone(),
    );
    Ok(accepted(status))
}

#[utoipa::path(get, operation_id = "getModel", path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path)),
    responses((status = 200, body = ModelCard), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    principal.require_authenticated()?;
    let registry = app.models.clone();
    let card = blocking(move || registry.get(&id).map_err(ApiError::from)).await?;
    readable(&app, &principal, &card.datanet).await?;
    Ok(Json(card))
}

#[utoipa::path(post, operation_id = "cancelJob", path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 202, body = JobStatus, description = "cancelled if it was queued; a running job stops at its next step"),
        (status = 403, body = Problem, description = "only an admin or whoever started it cancels a job"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "it has finished, or its kind cannot stop midway")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobStatus>), ApiError> {
    principal.require_authenticated()?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("no job {id}"));
    let by = app.jobs.request(&id).ok_or_else(not_found)?;
    let owner = by
        .and_then(|r| serde_json::from_value::<TrainJob>(r).ok())
        .and_then(|j| j.by);
    if !principal.is_admin() && (owner.is_none() || owner.as_deref() != principal.subject()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin or whoever started the job can cancel it",
        ));
    }
    match app.jobs.cancel(&id) {
        Ok(status) => Ok((StatusCode::ACCEPTED, Json(status))),
        Err(CancelError::NotFound(_)) => Err(not_found()),
        Err(e) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            e.to_string(),
        )),
    }
}
