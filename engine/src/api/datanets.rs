//! Datanet routes: thin handlers that check the caller, call the library and reply.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::JsonBody;
use super::{blocking, AppState};
use crate::auth::Principal;
use crate::datanet::contribute::Contribution;
use crate::datanet::ingest::{Input, InputFormat};
use crate::datanet::{
    Batch, BatchStatus, Datanet, DatanetSpec, DatanetUpdate, InclusionProof, RecordInfo, Version,
    WithdrawalReceipt, WithdrawalRequest,
};
use crate::identity::{Address, Signature};

pub const HEADER_CONTRIBUTOR: &str = "x-tributary-contributor";
pub const HEADER_SIGNATURE: &str = "x-tributary-signature";

pub(crate) async fn load(app: &AppState, id: &str) -> Result<Datanet, ApiError> {
    let datanets = app.datanets.clone();
    let id = id.to_string();
    blocking(move || datanets.get(&id).map_err(ApiError::from)).await
}

pub(crate) async fn readable(
    app: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Datanet, ApiError> {
    let datanet = load(app, id).await?;
    principal.can_read(&datanet)?;
    Ok(datanet)
}

#[utoipa::path(post, operation_id = "createDatanet", path = "/v1/datanets", tag = "datanets", request_body = DatanetSpec,
    responses((status = 201, body = Datanet), (status = 400, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    principal: Principal,
    JsonBody(spec): JsonBody<DatanetSpec>,
) -> Result<(StatusCode, Json<Datanet>), ApiError> {
    principal.can_create_datanet()?;
    let curator = principal.subject().unwrap_or("admin").to_string();
    let datanets = app.datanets.clone();
    let created = blocking(move || datanets.create(spec, &curator).map_err(ApiError::from)).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, operation_id = "listDatanets", path = "/v1/datanets", tag = "datanets",
    responses((status = 200, body = [Datanet])))]
pub async fn list(
    State(app): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<Datanet>>, ApiError> {
    let datanets = app.datanets.clone();
    let all = blocking(move || datanets.list().map_err(ApiError::from)).await?;
    Ok(Json(
        all.into_iter()
            .filter(|d| principal.can_read(d).is_ok())
            .collect(),
    ))
}

#[utoipa::path(get, operation_id = "getDatanet", path = "/v1/datanets/{id}", tag = "datanets",
    params(("id" = String, Path, description = "Datanet id")),
    responses((status = 200, body = Datanet), (status = 404, body = Problem)))]
pub async fn get(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Datanet>, ApiError> {
    Ok(Json(readable(&app, &principal, &id).await?))
}

#[utoipa::path(patch, operation_id = "updateDatanet", path = "/v1/datanets/{id}", tag = "datanets", request_body = DatanetUpdate,
    params(("id" = String, Path, description = "Datanet id")),
    responses((status = 200, body = Datanet), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(update): JsonBody<DatanetUpdate>,
) -> Result<Json<Datanet>, ApiError> {
    let datanet = load(&app, &id).await?;
    principal.can_curate(&datanet)?;
    let datanets = app.datanets.clone();
    Ok(Json(
        blocking(move || datanets.update(&id, update).map_err(ApiError::from)).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ContributeQuery {
    /// jsonl, csv, parquet or arrow; defaults to what `Content-Type` names.
    pub format: Option<String>,
}

fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    headers
        .get(name)
        .ok_or_else(|| ApiError::bad_request(name, format!("the {name} header is required")))?
        .to_str()
        .map_err(|_| ApiError::bad_request(name, format!("the {name} header is not text")))
}

/// Upload a signed batch. The body is the file; the contributor's address and EIP-191
/// signature over the Merkle root of the batch's record ids come in headers.
#[utoipa::path(post, operation_id = "contribute", path = "/v1/datanets/{id}/contributions", tag = "contributions",
    params(("id" = String, Path, description = "Datanet id"), ContributeQuery,
        ("X-Tributary-Contributor" = String, Header, description = "The contributor's address"),
        ("X-Tributary-Signature" = String, Header, description = "EIP-191 signature of the batch's Merkle root")),
    request_body(content = Vec<u8>, description = "The batch: JSONL, CSV, Parquet or Arrow IPC",
        content_type = "application/octet-stream"),
    responses((status = 201, body = Batch), (status = 403, body = Problem), (status = 413, body = Problem),
        (status = 422, body = Problem, description = "Bad rows, each named by row and field")),
    security(("bearer" = [])))]
pub async fn contribute(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(query): Query<ContributeQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Batch>), ApiError> {
    let contributor: Address = header_value(&headers, HEADER_CONTRIBUTOR)?
        .parse()
        .map_err(|e: crate::identity::IdentityError| {
            ApiError::bad_request("X-Tributary-Contributor", e.to_string())
        })?;
    let signature: Signature = header_value(&headers, HEADER_SIGNATURE)?.parse().map_err(
        |e: crate::identity::IdentityError| {
            ApiError::bad_request("X-Tributary-Signature", e.to_string())
        },
    )?;
    let format = match &query.format {
        Some(f) => InputFormat::parse(f).ok_or_else(|| {
            ApiError::bad_request(
                "format",
                format!("{f:?} is not one of jsonl, csv, parquet, arrow"),
            )
        })?,
        None => headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(InputFormat::from_media_type)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "format",
                    "say the format with ?format= or a Content-Type such as application/x-ndjson",
                )
            })?,
    };
    let datanet = load(&app, &id).await?;
    principal.can_contribute(&datanet, &contributor)?;

    let reader = limited_body(body, app.limits.max_upload_bytes);
    // Parquet and Arrow files keep their footer at the end, so they are spooled to disk first;
    // line formats are parsed as they arrive.
    let (input, spooled) = if format.needs_seek() {
        let file = spool(reader, &app.datanets.dirs().tmp).await?;
        let reopened = file
            .reopen()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        (Input::File(reopened), Some(file))
    } else {
        (Input::Stream(Box::new(SyncIoBridge::new(reader))), None)
    };
    let contribution = Contribution {
        format,
        contributor,
        signature,
    };
    let datanets = app.datanets.clone();
    let metrics = app.metrics.clone();
    let result = blocking(move || {
        let outcome = datanets
            .contribute(&id, contribution, input)
            .map_err(ApiError::from);
        drop(spooled);
        outcome
    })
    .await;
    match &result {
        Ok(batch) => metrics.contribution_accepted(batch.accepted, batch.duplicates),
        Err(_) => metrics.contribution_refused(),
    }
    Ok((StatusCode::CREATED, Json(result?)))
}

/// The request body as a reader that fails once more than `limit` bytes have arrived.
fn limited_body(body: Body, limit: u64) -> impl AsyncRead + Send + Unpin + 'static {
    let mut received = 0u64;
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk| {
            received += chunk.len() as u64;
            futures::future::ready(if received > limit {
                Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    format!("the upload is larger than this server's limit of {limit} bytes"),
                ))
            } else {
                Ok(chunk)
            })
        });
    StreamReader::new(stream)
}

/// Copies an upload into a temporary file in `dir`, removed when the file is dropped.
async fn spool(
    mut reader: impl AsyncRead + Unpin,
    dir: &std::path::Path,
) -> Result<tempfile::NamedTempFile, ApiError> {
    let tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut file = tokio::fs::File::from_std(
        tmp.reopen()
            .map_err(|e| ApiError::internal(e.to_string()))?,
    );
    if let Err(e) = tokio::io::copy(&mut reader, &mut file).await {
        let status = if e.kind() == std::io::ErrorKind::FileTooLarge {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        return Err(ApiError::new(status, "unreadable-upload", e.to_string()).with_field("body"));
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(tmp)
}

/// Largest page of batches one request returns.
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
pub struct BatchQuery {
    /// Only batches in this status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<BatchStatus>,
    /// Only batches numbered above this one (for paging: the last id of the previous page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many batches (default and maximum 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[utoipa::path(get, operation_id = "listBatches", path = "/v1/datanets/{id}/contributions", tag = "contributions",
    params(("id" = String, Path, description = "Datanet id"), BatchQuery),
    responses((status = 200, body = [Batch])))]
pub async fn list_batches(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(query): Query<BatchQuery>,
) -> Result<Json<Vec<Batch>>, ApiError> {
    readable(&app, &principal, &id).await?;
    let datanets = app.datanets.clone();
    let limit = match query.limit {
        Some(0) => return Err(ApiError::bad_request("limit", "limit must be at least 1")),
        Some(n) if n > MAX_PAGE => {
            return Err(ApiError::bad_request(
                "limit",
                format!("limit is at most {MAX_PAGE}"),
            ))
        }
        Some(n) => n,
        None => MAX_PAGE,
    };
    let after = query.after.unwrap_or(0);
    Ok(Json(
        blocking(move || {
            datanets
                .batch_page(&id, query.status, after, limit)
                .map_err(ApiError::from)
        })
        .await?,
    ))
}

#[utoipa::path(get, operation_id = "getBatch", path = "/v1/datanets/{id}/contributions/{batch}", tag = "contributions",
    params(("id" = String, Path, description = "Datanet id"), ("batch" = u64, Path, description = "Batch number")),
    responses((status = 200, body = Batch), (status = 404, body = Problem)))]
pub async fn get_batch(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, batch)): Path<(String, u64)>,
) -> Result<Json<Batch>, ApiError> {
    readable(&app, &principal, &id).await?;
    let datanets = app.datanets.clone();
    Ok(Json(
        blocking(move || datanets.batch(&id, batch).map_err(ApiError::from)).await?,
    ))
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Reject,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    pub decision: Decision,
    #[serde(default)]
    pub reason: Option<String>,
}

#[utoipa::path(post, operation_id = "reviewBatch", path = "/v1/datanets/{id}/contributions/{batch}/review", tag = "contributions",
    request_body = ReviewRequest,
    params(("id" = String, Path, description = "Datanet id"), ("batch" = u64, Path, description = "Batch number")),
    responses((status = 200, body = Batch), (status = 403, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn review(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, batch)): Path<(String, u64)>,
    JsonBody(request): JsonBody<ReviewRequest>,
) -> Result<Json<Batch>, ApiError> {
    let datanet = load(&app, &id).await?;
    principal.can_curate(&datanet)?;
    let datanets = app.datanets.clone();
    let approve = request.decision == Decision::Approve;
    Ok(Json(
        blocking(move || {
            datanets
                .review(&id, batch, approve, request.reason)
                .map_err(ApiError::from)
        })
        .await?,
    ))
}

#[utoipa::path(get, operation_id = "getRecord", path = "/v1/datanets/{id}/records/{record}", tag = "records",
    params(("id" = String, Path, description = "Datanet id"), ("record" = String, Path, description = "Record id (hex)")),
    responses((status = 200, body = RecordInfo), (status = 404, body = Problem)))]
pub async fn get_record(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, record)): Path<(String, String)>,
) -> Result<Json<RecordInfo>, ApiError> {
    readable(&app, &principal, &id).await?;
    let datanets = app.datanets.clone();
    Ok(Json(
        blocking(move || datanets.record(&id, &record).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(post, operation_id = "withdrawRecords", path = "/v1/datanets/{id}/withdrawals", tag = "records",
    request_body = WithdrawalRequest,
    params(("id" = String, Path, description = "Datanet id")),
    responses((status = 200, body = WithdrawalReceipt), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn withdraw(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<WithdrawalRequest>,
) -> Result<Json<WithdrawalReceipt>, ApiError> {
    let datanet = load(&app, &id).await?;
    principal.can_withdraw(&datanet, &request.contributor)?;
    let datanets = app.datanets.clone();
    Ok(Json(
        blocking(move || datanets.withdraw(&id, request).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(post, operation_id = "publishVersion", path = "/v1/datanets/{id}/versions", tag = "versions",
    params(("id" = String, Path, description = "Datanet id")),
    responses((status = 201, body = Version), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn publish(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Version>), ApiError> {
    let datanet = load(&app, &id).await?;
    principal.can_curate(&datanet)?;
    let datanets = app.datanets.clone();
    let version = blocking(move || datanets.publish(&id).map_err(ApiError::from)).await?;
    Ok((StatusCode::CREATED, Json(version)))
}

#[utoipa::path(get, operation_id = "listVersions", path = "/v1/datanets/{id}/versions", tag = "versions",
    params(("id" = String, Path, description = "Datanet id")),
    responses((status = 200, body = [Version])))]
pub async fn list_versions(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Vec<Version>>, ApiError> {
    readable(&app, &principal, &id).await?;
    let datanets = app.datanets.clone();
    Ok(Json(
        blocking(move || datanets.versions(&id).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(get, operation_id = "getVersion", path = "/v1/datanets/{id}/versions/{v}", tag = "versions",
    params(("id" = String, Path, description = "Datanet id"), ("v" = u32, Path, description = "Version number")),
    responses((status = 200, body = Version), (status = 404, body = Problem)))]
pub async fn get_version(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, v)): Path<(String, u32)>,
) -> Result<Json<Version>, ApiError> {
    readable(&app, &principal, &id).await?;
    let datanets = app.datanets.clone();
    Ok(Json(
        blocking(move || datanets.version(&id, v).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(get, operation_id = "getInclusionProof", path = "/v1/datanets/{id}/versions/{v}/proofs/{record}", tag = "versions",
    params(("id" = String, Path, description = "Datanet id"), ("v" = u32, Path, description = "Version number"),
        ("record" = String, Path, description = "Record id (hex)")),
    responses((status = 200, body = InclusionProof), (status = 404, body = Problem)))]
pub async fn proof(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, v, record)): Path<(String, u32, String)>,
) -> Result<Json<InclusionProof>, ApiError> {
    readable(&app, &principal, &id).await?;
    let datanets = app.datanets.clone();
    Ok(Json(
        blocking(move || datanets.proof(&id, v, &record).map_err(ApiError::from)).await?,
    ))
}

/// The version as one Parquet file, with the system columns.
#[utoipa::path(get, operation_id = "exportVersion", path = "/v1/datanets/{id}/versions/{v}/export", tag = "versions",
    params(("id" = String, Path, description = "Datanet id"), ("v" = u32, Path, description = "Version number")),
    responses((status = 200, content_type = "application/vnd.apache.parquet", body = Vec<u8>),
        (status = 404, body = Problem)))]
pub async fn export(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, v)): Path<(String, u32)>,
) -> Result<Response, ApiError> {
    readable(&app, &principal, &id).await?;
    let datanets: Arc<_> = app.datanets.clone();
    let name = format!("{id}-v{v}.parquet");
    let path = blocking(move || datanets.export(&id, v).map_err(ApiError::from)).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let length = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .len();
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.apache.parquet".to_string(),
            ),
            (header::CONTENT_LENGTH, length.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(ReaderStream::with_capacity(file, 1 << 16)),
    )
        .into_response())
}
