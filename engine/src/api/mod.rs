//! The REST API: axum routes over the library, problem+json errors, OpenAPI at
//! `/openapi.json`. Handlers stay thin: check the caller, call [`crate::datanet::service`],
//! reply.

pub mod attributions;
pub mod completions;
pub mod datanets;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod plugins;
pub mod rewards;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use utoipa::OpenApi;

use crate::auth::{self, Role, TokenRequest};
use crate::datanet::service::{DatanetError, Datanets};
use crate::store::CF_META;
use error::ApiError;

/// Limits on what one request may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A contribution upload, streamed.
    pub max_upload_bytes: u64,
    /// Any JSON body.
    pub max_json_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 4 << 30,
            max_json_bytes: 2 << 20,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub datanets: Arc<Datanets>,
    pub limits: Limits,
    pub metrics: Arc<metrics::Metrics>,
    /// The plugin registry; `None` runs without plugins.
    pub plugins: Option<Arc<crate::plugin::Plugins>>,
    /// Span indexes and attribution records.
    pub attributions: Arc<crate::attribution::service::Attributions>,
    /// Background work (index builds, training), watched through `/v1/jobs/{id}`.
    pub jobs: Arc<crate::jobs::Jobs>,
    /// Trained models and their cards.
    pub models: Arc<crate::model::registry::Registry>,
    /// Bases and adapters in memory, and the completions made with them.
    pub serving: Arc<crate::serve::service::Serving>,
    /// Fees, balances, flags and epochs.
    pub rewards: Arc<crate::rewards::Rewards>,
    /// The data directory (closed epochs' payout trees live under it).
    pub data_dir: std::path::PathBuf,
}

/// Runs blocking library work off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

pub fn router(state: AppState) -> Router {
    let upload = Router::new()
        .route(
            "/v1/datanets/{id}/contributions",
            post(datanets::contribute).get(datanets::list_batches),
        )
        .layer(DefaultBodyLimit::disable())
        // Components are buffered whole (they are compiled whole), up to the upload limit.
        .route(
            "/v1/plugins",
            post(plugins::install)
                .get(plugins::list)
                .layer(DefaultBodyLimit::max(
                    state.limits.max_upload_bytes.min(usize::MAX as u64) as usize,
                )),
        );
    Router::new()
        .route("/v1/datanets", post(datanets::create).get(datanets::list))
        .route(
            "/v1/datanets/{id}",
            get(datanets::get).patch(datanets::update),
        )
        .route(
            "/v1/datanets/{id}/contributions/{batch}",
            get(datanets::get_batch),
        )
        .route(
            "/v1/datanets/{id}/contributions/{batch}/review",
            post(datanets::review),
        )
        .route(
            "/v1/datanets/{id}/records/{record}",
            get(datanets::get_record),
        )
        .route("/v1/datanets/{id}/withdrawals", post(datanets::withdraw))
        .route(
            "/v1/datanets/{id}/versions",
            post(datanets::publish).get(datanets::list_versions),
        )
        .route("/v1/datanets/{id}/versions/{v}", get(datanets::get_version))
        .route(
            "/v1/datanets/{id}/versions/{v}/export",
            get(datanets::export),
        )
        .route(
            "/v1/datanets/{id}/versions/{v}/proofs/{record}",
            get(datanets::proof),
        )
        .route(
            "/v1/datanets/{id}/versions/{v}/indexes",
            post(attributions::build),
        )
        .route("/v1/indexes", get(attributions::list))
        .route("/v1/indexes/{hash}", get(attributions::get))
        .route("/v1/indexes/{hash}/query", post(attributions::query))
        .route(
            "/v1/indexes/{hash}/attribute",
            post(attributions::attribute),
        )
        .route("/v1/attributions/{id}", get(attributions::get_attribution))
        .route("/v1/attributions/{id}/verify", post(attributions::verify))
        .route("/v1/attributions/{id}/proof", get(attributions::proof))
        .route("/v1/epochs/close", post(rewards::close_epoch))
        .route("/v1/epochs", get(rewards::list_epochs))
        .route("/v1/epochs/{n}", get(rewards::get_epoch))
        .route("/v1/epochs/{n}/settle", post(rewards::settle_epoch))
        .route("/v1/epochs/{n}/claims/sync", post(rewards::sync_claims))
        .route("/v1/epochs/{n}/claims/{address}", get(rewards::claim))
        .route("/v1/ledger", axum::routing::put(rewards::set_ledger))
        .route("/v1/accounts/{address}/rewards", get(rewards::account))
        .route(
            "/v1/datanets/{id}/records/{record}/flags",
            post(rewards::flag),
        )
        .route(
            "/v1/models/{id}/terms",
            get(rewards::get_terms).put(rewards::set_terms),
        )
        .route("/v1/completions/{id}/fee", get(rewards::fee))
        .route("/v1/fees", get(rewards::fees))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(models::cancel))
        .route(
            "/v1/models",
            post(models::train).get(completions::list_models),
        )
        .route("/v1/completions", post(completions::completion))
        .route("/v1/chat/completions", post(completions::chat))
        .route(
            "/v1/completions/{id}/attribution",
            get(completions::attribution),
        )
        .route(
            "/v1/adapters",
            post(completions::load_adapter).get(completions::list_adapters),
        )
        .route(
            "/v1/adapters/{name}",
            axum::routing::delete(completions::unload_adapter),
        )
        .route("/v1/models/{id}", get(models::get))
        .route("/v1/tokens", post(tokens::create))
        .route(
            "/v1/plugins/{id}",
            get(plugins::get).delete(plugins::remove),
        )
        .layer(DefaultBodyLimit::max(state.limits.max_json_bytes))
        .merge(upload)
        .route(
            "/openapi.json",
            get(|| async { Json(openapi::ApiDoc::openapi()) }),
        )
        .route(
            "/metrics",
            get(|State(app): State<AppState>| async move { app.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not-found",
                "no such route",
            )
        })
        .with_state(state)
}

/// Where the first admin token is written, readable by the operator alone.
pub fn admin_token_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// At first start, makes the admin token and writes it to `{data-dir}/admin-token`.
pub fn ensure_admin_token(datanets: &Datanets) -> Result<Option<PathBuf>, DatanetError> {
    const ISSUED: &[u8] = b"admin-token-issued";
    let store = datanets.store();
    if store.get(CF_META, ISSUED)?.is_some() {
        return Ok(None);
    }
    let issued = auth::issue(
        store,
        TokenRequest {
            subject: "admin".into(),
            role: Role::Admin,
            datanets: vec![],
            address: None,
        },
    )?;
    let path = admin_token_path(&datanets.dirs().root);
    write_private(&path, &issued.token)?;
    let mut batch = store.batch();
    batch.put(CF_META, ISSUED, issued.grant.id.as_bytes());
    batch.commit()?;
    Ok(Some(path))
}

/// Writes a secret to a file only its owner can read.
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Binds, announces the address on stdout (tests and scripts read this line) and serves until
/// Ctrl-C or SIGTERM.
pub async fn serve(state: AppState, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    tracing::info!(%local, "serving");
    rewards::spawn_settlements(state.rewards.clone());
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
