//! Request extractors: the caller's principal, and JSON bodies whose errors name the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::auth::{self, Principal};

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(Principal::Anonymous);
        };
        let text = value.to_str().map_err(|_| {
            ApiError::bad_request("Authorization", "the Authorization header is not text")
        })?;
        let secret = text.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::bad_request("Authorization", "use `Authorization: Bearer <token>`")
        })?;
        let store = state.datanets.store().clone();
        let secret = secret.trim().to_string();
        let grant = tokio::task::spawn_blocking(move || auth::authenticate(&store, &secret))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        match grant {
            Some(g) => Ok(Principal::Token(g)),
            None => Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the bearer token is not known",
            )
            .with_field("Authorization")),
        }
    }
}

/// A JSON body; a body that does not fit its type is refused with the JSON path at fault.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(e.status(), "unreadable-body", e.body_text()).with_field("body")
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(&mut de) {
            Ok(value) => Ok(JsonBody(value)),
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                Err(ApiError::bad_request(
                    &field,
                    format!("{field}: {}", e.inner()),
                ))
            }
        }
    }
}
