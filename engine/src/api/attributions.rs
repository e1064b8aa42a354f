//! Attribution routes: build a span index over a version, attribute a text against an index
//! (filing an attribution record), fetch and verify records, close epochs and prove inclusion.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::datanets::{load, readable};
use super::error::{ApiError, Problem};
use super::extract::JsonBody;
use super::jobs::{accepted, Accepted};
use super::{blocking, AppState};
use crate::attribution::index::{BuildProgress, IndexMeta};
use crate::attribution::query::{QueryRequest, QueryResult};
use crate::attribution::service::{
    AttributeRequest, AttributionProof, StoredAttribution, TokenizerChoice, Verification,
};
use crate::attribution::AttributionError;
use crate::auth::Principal;
use crate::jobs::JobStatus;

impl From<AttributionError> for ApiError {
    fn from(e: AttributionError) -> Self {
        let detail = e.to_string();
        match e {
            AttributionError::IndexNotFound(_) | AttributionError::AttributionNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", detail)
            }
            AttributionError::Invalid { field, .. } => ApiError::bad_request(field, detail),
            AttributionError::Tokenizer(_) => ApiError::bad_request("tokenizer", detail),
            AttributionError::Corpus(_) => {
                ApiError::new(StatusCode::CONFLICT, "unusable-version", detail)
            }
            AttributionError::Index { .. } | AttributionError::Io(_) => ApiError::internal(detail),
        }
    }
}

/// The body of an index build.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildIndexRequest {
    /// `bytes` (the default) or `bpe:VOCAB` to train a byte-level BPE on the version.
    #[serde(default)]
    pub tokenizer: Option<String>,
}

/// Filters of the index list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct IndexQuery {
    pub datanet: Option<String>,
    pub version: Option<u32>,
}

fn service(app: &AppState) -> std::sync::Arc<crate::attribution::service::Attributions> {
    app.attributions.clone()
}

#[utoipa::path(post, operation_id = "buildIndex", path = "/v1/datanets/{id}/versions/{version}/indexes",
    tag = "attribution", request_body = BuildIndexRequest,
    params(("id" = String, Path), ("version" = u32, Path)),
    responses((status = 202, body = JobStatus, description = "the build runs as a job: follow `Location` (`/v1/jobs/{id}`); its result is the index's metadata"),
        (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn build(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, version)): Path<(String, u32)>,
    JsonBody(body): JsonBody<BuildIndexRequest>,
) -> Result<Accepted, ApiError> {
    let datanet = load(&app, &id).await?;
    principal.can_curate(&datanet)?;
    let choice: TokenizerChoice = body
        .tokenizer
        .as_deref()
        .unwrap_or("bytes")
        .parse()
        .map_err(ApiError::from)?;
    // Refuse a version that does not exist now, rather than in a job that fails later.
    {
        let (datanets, id) = (app.datanets.clone(), id.clone());
        blocking(move || datanets.version(&id, version).map_err(ApiError::from)).await?;
    }
    let (datanets, attributions) = (app.datanets.clone(), service(&app));
    let job = app.jobs.spawn("index-build", move |progress| {
        let meta = attributions
            .build_version(&datanets, &id, version, &choice, &|p| match p {
                BuildProgress::Tokenizing { records, total } => {
                    progress.update("tokenizing", records, total)
                }
                BuildProgress::Sorting { tokens } => progress.update("sorting", 0, Some(tokens)),
                BuildProgress::Writing { done, total } => {
                    progress.update("writing", done, Some(total))
                }
            })
            .map_err(|e| e.to_string())?;
        serde_json::to_value(meta).map_err(|e| e.to_string())
    });
    Ok(accepted(job))
}

#[utoipa::path(get, operation_id = "listIndexes", path = "/v1/indexes", tag = "attribution",
    params(IndexQuery),
    responses((status = 200, body = [IndexMeta]), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    principal: Principal,
    Query(q): Query<IndexQuery>,
) -> Result<Json<Vec<IndexMeta>>, ApiError> {
    principal.require_authenticated()?;
    let attributions = service(&app);
    Ok(Json(
        blocking(move || {
            attributions
                .list(q.datanet.as_deref(), q.version)
                .map_err(ApiError::from)
        })
        .await?,
    ))
}

/// The index, if the caller may read what it was built from.
async fn readable_index(
    app: &AppState,
    principal: &Principal,
    hash: &str,
) -> Result<std::sync::Arc<crate::attribution::Index>, ApiError> {
    let attributions = service(app);
    let index = match attributions.cached(hash) {
        Some(index) => index,
        None => {
            let h = hash.to_string();
            blocking(move || attributions.index(&h).map_err(ApiError::from)).await?
        }
    };
    match &index.meta.datanet {
        Some(d) => {
            readable(app, principal, d).await?;
        }
        None => principal.require_authenticated()?,
    }
    Ok(index)
}

#[utoipa::path(get, operation_id = "getIndex", path = "/v1/indexes/{hash}", tag = "attribution",
    params(("hash" = String, Path)),
    responses((status = 200, body = IndexMeta), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    principal: Principal,
    Path(hash): Path<String>,
) -> Result<Json<IndexMeta>, ApiError> {
    Ok(Json(
        readable_index(&app, &principal, &hash).await?.meta.clone(),
    ))
}

#[utoipa::path(post, operation_id = "queryIndex", path = "/v1/indexes/{hash}/query", tag = "attribution",
    request_body = QueryRequest, params(("hash" = String, Path)),
    responses((status = 200, body = QueryResult), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn query(
    State(app): State<AppState>,
    principal: Principal,
    Path(hash): Path<String>,
    JsonBody(request): JsonBody<QueryRequest>,
) -> Result<Json<QueryResult>, ApiError> {
    let index = readable_index(&app, &principal, &hash).await?;
    let result = blocking(move || {
        let ids = match (&request.text, &request.ids) {
            (Some(text), None) => index.tokenizer()?.encode(text)?,
            (None, Some(ids)) => ids.clone(),
            _ => {
                return Err(ApiError::bad_request(
                    "text",
                    "give text or ids (one of them)",
                ));
            }
        };
        Ok(index.query(
            &ids,
            request.limit.unwrap_or(10),
            request.next.unwrap_or(true),
        ))
    })
    .await?;
    Ok(Json(result))
}

#[utoipa::path(post, operation_id = "attribute", path = "/v1/indexes/{hash}/attribute", tag = "attribution",
    request_body = AttributeRequest, params(("hash" = String, Path)),
    responses((status = 201, body = StoredAttribution), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn attribute(
    State(app): State<AppState>,
    principal: Principal,
    Path(hash): Path<String>,
    JsonBody(request): JsonBody<AttributeRequest>,
) -> Result<(StatusCode, Json<StoredAttribution>), ApiError> {
    readable_index(&app, &principal, &hash).await?;
    let attributions = service(&app);
    let stored = blocking(move || {
        attributions
            .attribute(&hash, &request)
            .map_err(ApiError::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

#[utoipa::path(get, operation_id = "getAttribution", path = "/v1/attributions/{id}", tag = "attribution",
    params(("id" = String, Path)),
    responses((status = 200, body = StoredAttribution), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_attribution(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<StoredAttribution>, ApiError> {
    principal.require_authenticated()?;
    let attributions = service(&app);
    Ok(Json(
        blocking(move || attributions.get(&id).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(post, operation_id = "verifyAttribution", path = "/v1/attributions/{id}/verify", tag = "attribution",
    params(("id" = String, Path)),
    responses((status = 200, body = Verification), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn verify(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Verification>, ApiError> {
    principal.require_authenticated()?;
    let attributions = service(&app);
    Ok(Json(
        blocking(move || attributions.verify(&id).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(get, operation_id = "attributionProof", path = "/v1/attributions/{id}/proof", tag = "attribution",
    params(("id" = String, Path)),
    responses((status = 200, body = AttributionProof), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn proof(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<AttributionProof>, ApiError> {
    principal.require_authenticated()?;
    let attributions = service(&app);
    Ok(Json(
        blocking(move || attributions.proof(&id).map_err(ApiError::from)).await?,
    ))
}
