//! `POST /v1/tokens`: admins make tokens for curators, contributors and readers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::error::{ApiError, Problem};
use super::extract::JsonBody;
use super::{blocking, AppState};
use crate::auth::{self, IssuedToken, Principal, TokenRequest};

#[utoipa::path(post, operation_id = "createToken", path = "/v1/tokens", tag = "tokens", request_body = TokenRequest,
    responses((status = 201, body = IssuedToken), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<TokenRequest>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    principal.require_admin()?;
    if request.subject.trim().is_empty() {
        return Err(ApiError::bad_request(
            "subject",
            "a token needs a subject (who holds it)",
        ));
    }
    let store = app.datanets.store().clone();
    let issued = blocking(move || auth::issue(&store, request).map_err(ApiError::from)).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}
