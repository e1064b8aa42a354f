//! Plugin routes: install (admin), list, show and remove. An install uploads the manifest
//! and the component as two parts of a multipart form; nothing is kept unless the
//! component loads under its manifest and the operator's grants.

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::error::{ApiError, Problem};
use super::{blocking, AppState};
use crate::auth::Principal;
use crate::plugin::registry::PluginInfo;
use crate::plugin::{PluginError, Plugins};

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        let detail = e.to_string();
        match e {
            PluginError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not-found", detail),
            PluginError::Manifest { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid-plugin", detail)
                    .with_field("manifest")
            }
            PluginError::Load { .. } | PluginError::UnsupportedApi { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid-plugin", detail)
                    .with_field("component")
            }
            PluginError::WrongKind { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid-plugin", detail)
            }
            PluginError::Io(_) => ApiError::internal(detail),
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "plugin-failed", detail),
        }
    }
}

/// How much of a refused upload is read before answering.
const DRAIN_MAX: usize = 64 << 20;

fn registry(app: &AppState) -> Result<std::sync::Arc<Plugins>, ApiError> {
    app.plugins.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "this server runs no plugins",
        )
    })
}

/// The form of `POST /v1/plugins`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PluginUpload {
    /// `plugin.toml`, as text.
    manifest: String,
    /// The component, `.wasm`.
    #[schema(format = Binary)]
    component: Vec<u8>,
}

#[utoipa::path(post, operation_id = "installPlugin", path = "/v1/plugins", tag = "plugins",
    request_body(content = PluginUpload, content_type = "multipart/form-data"),
    responses((status = 201, body = PluginInfo), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn install(
    State(app): State<AppState>,
    principal: Principal,
    mut form: Multipart,
) -> Result<(StatusCode, Json<PluginInfo>), ApiError> {
    if let Err(denied) = principal.require_admin() {
        // Read (a bounded part of) what the client is still sending before answering, so
        // that it sees the refusal rather than a connection reset mid-upload.
        let mut drained = 0usize;
        while let Ok(Some(mut field)) = form.next_field().await {
            while let Ok(Some(chunk)) = field.chunk().await {
                drained += chunk.len();
                if drained > DRAIN_MAX {
                    break;
                }
            }
        }
        return Err(denied.into());
    }
    let plugins = registry(&app)?;
    let (mut manifest, mut component) = (None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request("body", e.to_string()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request(&name, e.to_string()))?;
        match name.as_str() {
            "manifest" => {
                manifest =
                    Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                        ApiError::bad_request("manifest", "plugin.toml must be UTF-8")
                    })?)
            }
            "component" => component = Some(bytes),
            other => {
                return Err(ApiError::bad_request(
                    other,
                    "unknown part; send manifest and component",
                ))
            }
        }
    }
    let manifest = manifest
        .ok_or_else(|| ApiError::bad_request("manifest", "the manifest part is missing"))?;
    let component = component
        .ok_or_else(|| ApiError::bad_request("component", "the component part is missing"))?;
    let info = blocking(move || {
        plugins
            .install(&manifest, &component)
            .map_err(ApiError::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, operation_id = "listPlugins", path = "/v1/plugins", tag = "plugins",
    responses((status = 200, body = [PluginInfo]), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<PluginInfo>>, ApiError> {
    principal.require_authenticated()?;
    Ok(Json(registry(&app)?.list()))
}

#[utoipa::path(get, operation_id = "getPlugin", path = "/v1/plugins/{id}", tag = "plugins",
    params(("id" = String, Path)),
    responses((status = 200, body = PluginInfo), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<PluginInfo>, ApiError> {
    principal.require_authenticated()?;
    Ok(Json(registry(&app)?.info(&id)?))
}

#[utoipa::path(delete, operation_id = "removePlugin", path = "/v1/plugins/{id}", tag = "plugins",
    params(("id" = String, Path)),
    responses((status = 200, body = PluginInfo), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn remove(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<PluginInfo>, ApiError> {
    principal.require_admin()?;
    let plugins = registry(&app)?;
    let datanets = app.datanets.clone();
    let removed = blocking(move || {
        let users: Vec<String> = datanets
            .list()
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|d| d.spec.validators.iter().any(|v| v.plugin == id))
            .map(|d| d.spec.id)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "plugin-in-use",
                format!(
                    "plugin {id} validates Datanets {}; detach it first",
                    users.join(", ")
                ),
            ));
        }
        plugins.remove(&id).map_err(ApiError::from)
    })
    .await?;
    Ok(Json(removed))
}
