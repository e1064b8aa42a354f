//! Errors as `application/problem+json` (RFC 9457), mapped from library errors in one place.
//! The matches have no wildcard arm, so a new error variant does not compile until it has a
//! status and a type here.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Denied;
use crate::datanet::ingest::{IngestError, RowError};
use crate::datanet::service::DatanetError;
use crate::identity::IdentityError;
use crate::store::StoreError;

/// A problem report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A stable identifier of the kind of problem, for example `urn:tributary:problem:invalid-rows`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault (a JSON path, header or query parameter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For rejected batches: every bad row counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_errors: Option<u64>,
    /// For rejected batches: the first row problems, each naming row and field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<RowError>>,
    /// On the OpenAI-compatible routes: the same problem as OpenAI's clients read it
    /// (`message`, `type`, `param`, `code`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

#[derive(Debug)]
pub struct ApiError(pub Box<Problem>);

impl ApiError {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        ApiError(Box::new(Problem {
            kind: format!("urn:tributary:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            total_errors: None,
            errors: None,
            error: None,
        }))
    }

    /// Adds the `error` object OpenAI's clients look for.
    pub fn openai(mut self) -> Self {
        let p = &self.0;
        let kind = if p.status >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let code = p.kind.rsplit(':').next().unwrap_or("error").to_string();
        self.0.error = Some(serde_json::json!({
            "message": p.detail,
            "type": kind,
            "param": p.field,
            "code": code,
        }));
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    pub fn bad_request(field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", detail).with_field(field)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(detail = %self.0.detail, "request failed");
        }
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        match &e {
            Denied::Unauthenticated => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
                    .with_field("Authorization")
            }
            Denied::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            Denied::Hidden(_) => Self::new(StatusCode::NOT_FOUND, "not-found", e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(e.to_string())
    }
}

impl From<DatanetError> for ApiError {
    fn from(e: DatanetError) -> Self {
        let detail = e.to_string();
        match e {
            DatanetError::NotFound(_)
            | DatanetError::BatchNotFound { .. }
            | DatanetError::VersionNotFound { .. }
            | DatanetError::RecordNotFound { .. }
            | DatanetError::RecordNotInVersion { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not-found", detail)
            }
            DatanetError::AlreadyExists(_) => {
                Self::new(StatusCode::CONFLICT, "already-exists", detail).with_field("id")
            }
            DatanetError::InvalidField { field, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-field", detail).with_field(field)
            }
            DatanetError::InvalidRows(report) => {
                let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-rows", detail);
                err.0.field = report.errors.first().and_then(|r| r.field.clone());
                err.0.total_errors = Some(report.total);
                err.0.errors = Some(report.errors);
                err
            }
            DatanetError::EmptyBatch => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "empty-batch", detail)
                    .with_field("body")
            }
            DatanetError::Upload(inner) => match inner {
                IngestError::Io(ref io) if io.kind() == std::io::ErrorKind::FileTooLarge => {
                    Self::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-large",
                        inner.to_string(),
                    )
                    .with_field("body")
                }
                IngestError::Io(_) => {
                    Self::new(StatusCode::BAD_REQUEST, "unreadable-upload", detail)
                        .with_field("body")
                }
                IngestError::Malformed(_) => {
                    Self::new(StatusCode::UNPROCESSABLE_ENTITY, "malformed-upload", detail)
                        .with_field("body")
                }
            },
            DatanetError::Signature(inner) => {
                let field = match inner {
                    IdentityError::BadAddress(_) | IdentityError::BadChecksum(_) => {
                        "X-Tributary-Contributor"
                    }
                    IdentityError::BadSignatureEncoding
                    | IdentityError::BadRecoveryByte(_)
                    | IdentityError::HighS
                    | IdentityError::Unrecoverable
                    | IdentityError::BadKey(_)
                    | IdentityError::KeyFile { .. } => "signature",
                };
                Self::new(StatusCode::BAD_REQUEST, "bad-signature", detail).with_field(field)
            }
            DatanetError::SignerMismatch { .. } => {
                Self::new(StatusCode::FORBIDDEN, "signature-mismatch", detail)
                    .with_field("signature")
            }
            DatanetError::AlreadyReviewed { .. } => {
                Self::new(StatusCode::CONFLICT, "already-reviewed", detail)
            }
            DatanetError::NotOwner { .. } => {
                Self::new(StatusCode::FORBIDDEN, "not-owner", detail).with_field("record_ids")
            }
            DatanetError::Validator(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "validator-failed", detail)
            }
            DatanetError::Segment(_) | DatanetError::Store(_) | DatanetError::Io(_) => {
                Self::internal(detail)
            }
            DatanetError::IndexUnfinished { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "index-unfinished", detail)
            }
        }
    }
}
