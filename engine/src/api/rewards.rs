//! Rewards and settlement over REST: model terms, fees, accounts, curators' flags, epochs,
//! claims and the ledger.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::datanets::load;
use super::error::{ApiError, Problem};
use super::extract::JsonBody;
use super::{blocking, AppState};
use crate::auth::Principal;
use crate::ledger::{self, Claim, ClosedEpoch, LedgerSettings};
use crate::rewards::book::{FeeRecord, FeeStatus};
use crate::rewards::flags::{Flag, FlagRequest};
use crate::rewards::service::{AccountRewards, Charge, PreparedCharge};
use crate::rewards::{ModelTerms, Rewards, RewardsError};
use crate::serve::service::{CompletionAttribution, ServeError, Serving, StoredCompletion};

impl From<RewardsError> for ApiError {
    fn from(e: RewardsError) -> Self {
        let detail = e.to_string();
        match e {
            RewardsError::Invalid { field, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-field", detail).with_field(field)
            }
            RewardsError::NoTerms(_) | RewardsError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not-found", detail)
            }
            RewardsError::Conservation(_) | RewardsError::Store(_) | RewardsError::Io(_) => {
                Self::internal(detail)
            }
            RewardsError::Ledger(_) => Self::new(StatusCode::BAD_GATEWAY, "ledger-failed", detail),
        }
    }
}

/// What can fail while a completion's attribution and fee are filed together.
enum Filing {
    Serve(ServeError),
    Charge(RewardsError),
}

impl From<ServeError> for Filing {
    fn from(e: ServeError) -> Self {
        Filing::Serve(e)
    }
}

/// Files records with no other writes.
fn nothing(
    _: &[crate::attribution::service::StoredAttribution],
    _: &mut crate::store::Batch<'_>,
) -> Result<(), ServeError> {
    Ok(())
}

/// Makes a completion's attribution records and charges its fee (once: asking again returns
/// the same records and the first fee), committing the records, the fee and every balance
/// change in one batch, so a crash leaves all of them or none. The policy runs before any
/// lock is taken. When charging fails (a storage error; a policy's failure is not one, it
/// sends the fee to escrow) the records are filed without the fee, which the next ask
/// charges, and the answer is not failed for it.
pub(crate) fn attribute_and_charge(
    serving: &Serving,
    rewards: &Rewards,
    completion: &StoredCompletion,
) -> Result<(CompletionAttribution, Option<FeeRecord>), ServeError> {
    let prepared = serving.prepare_attribution(completion)?;
    let records: Vec<_> = prepared.records().cloned().collect();
    let charge = Charge {
        completion: completion.id.clone(),
        model: completion.model.clone(),
        input_tokens: completion.prompt_tokens,
        output_tokens: completion.output.len() as u64,
        attributions: records.iter().map(|r| r.id.clone()).collect(),
    };
    let uncharged = |e: RewardsError| {
        tracing::error!(completion = %completion.id, "charging: {e}");
    };
    let pending = match rewards.prepare_charge(&charge, &records) {
        // Asked again: the records and the fee are there, and nothing is locked or written.
        Ok(PreparedCharge::Charged(fee)) if prepared.is_filed() => {
            return Ok((serving.file_attribution(prepared, nothing)?, Some(fee)));
        }
        Ok(p) => p,
        Err(e) => {
            uncharged(e);
            return Ok((serving.file_attribution(prepared, nothing)?, None));
        }
    };
    // Kept for filing the records alone should the charge fail to write.
    let again = prepared.clone();
    let book = rewards.lock_book();
    let mut fee = None;
    let filed = serving.file_attribution(prepared, |filed, batch| {
        let ids: Vec<String> = filed.iter().map(|s| s.attribution.id.clone()).collect();
        fee = rewards
            .write_charge(&book, pending, &ids, batch)
            .map_err(Filing::Charge)?;
        Ok(())
    });
    drop(book);
    match filed {
        Ok(attribution) => Ok((attribution, fee)),
        Err(Filing::Serve(e)) => Err(e),
        Err(Filing::Charge(e)) => {
            uncharged(e);
            Ok((serving.file_attribution(again, nothing)?, None))
        }
    }
}

#[utoipa::path(put, operation_id = "setModelTerms", path = "/v1/models/{id}/terms", tag = "rewards",
    params(("id" = String, Path, description = "a served model: `base` or `base:adapter`")),
    request_body = ModelTerms,
    responses((status = 200, body = ModelTerms), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_terms(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(terms): JsonBody<ModelTerms>,
) -> Result<Json<ModelTerms>, ApiError> {
    principal.require_admin()?;
    let rewards = app.rewards.clone();
    Ok(Json(
        blocking(move || rewards.set_terms(&id, terms).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(get, operation_id = "getModelTerms", path = "/v1/models/{id}/terms", tag = "rewards",
    params(("id" = String, Path)),
    responses((status = 200, body = ModelTerms), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_terms(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ModelTerms>, ApiError> {
    principal.require_authenticated()?;
    let rewards = app.rewards.clone();
    Ok(Json(
        blocking(move || {
            rewards
                .terms(&id)?
                .ok_or_else(|| RewardsError::NoTerms(id).into())
        })
        .await?,
    ))
}

#[utoipa::path(get, operation_id = "completionFee", path = "/v1/completions/{id}/fee", tag = "rewards",
    params(("id" = String, Path)),
    responses((status = 200, body = FeeRecord), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn fee(
    State(app): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<FeeRecord>, ApiError> {
    principal.require_authenticated()?;
    let (rewards, serving) = (app.rewards.clone(), app.serving.clone());
    let admin = principal.is_admin();
    let subject = principal.subject().map(String::from);
    Ok(Json(
        blocking(move || {
            let missing = || RewardsError::NotFound(format!("completion {id} has no fee"));
            let c = serving.completion(&id).map_err(|_| missing())?;
            if !admin && (c.by.is_none() || c.by != subject) {
                return Err(missing().into());
            }
            rewards.fee(&id)?.ok_or_else(|| missing().into())
        })
        .await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FeesQuery {
    /// `paid` or `escrow`.
    pub status: Option<FeeStatus>,
    /// At most this many (default 1,000, at most 100,000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, operation_id = "listFees", path = "/v1/fees", tag = "rewards",
    params(FeesQuery),
    responses((status = 200, body = [FeeRecord], description = "fee records in completion-id order; `status=escrow` lists what waits, with the reasons"), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn fees(
    State(app): State<AppState>,
    principal: Principal,
    Query(q): Query<FeesQuery>,
) -> Result<Json<Vec<FeeRecord>>, ApiError> {
    principal.require_admin()?;
    let rewards = app.rewards.clone();
    let limit = q.limit.unwrap_or(1_000).min(100_000);
    Ok(Json(
        blocking(move || rewards.fees(q.status, limit).map_err(ApiError::from)).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AccountQuery {
    /// Payments listed, newest first (default 100, at most 1,000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, operation_id = "accountRewards", path = "/v1/accounts/{address}/rewards", tag = "rewards",
    params(("address" = String, Path), AccountQuery),
    responses((status = 200, body = AccountRewards), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn account(
    State(app): State<AppState>,
    principal: Principal,
    Path(address): Path<String>,
    Query(q): Query<AccountQuery>,
) -> Result<Json<AccountRewards>, ApiError> {
    principal.require_authenticated()?;
    let rewards = app.rewards.clone();
    let limit = q.limit.unwrap_or(100).min(1_000);
    Ok(Json(
        blocking(move || rewards.account(&address, limit).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(post, operation_id = "flagRecord", path = "/v1/datanets/{id}/records/{record}/flags", tag = "rewards",
    params(("id" = String, Path), ("record" = String, Path)),
    request_body = FlagRequest,
    responses((status = 201, body = Flag), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn flag(
    State(app): State<AppState>,
    principal: Principal,
    Path((id, record)): Path<(String, String)>,
    JsonBody(request): JsonBody<FlagRequest>,
) -> Result<(StatusCode, Json<Flag>), ApiError> {
    let datanet = load(&app, &id).await?;
    principal.can_curate(&datanet)?;
    let rewards = app.rewards.clone();
    let by = principal.subject().map(String::from);
    let flag = blocking(move || {
        rewards
            .flag(&id, &record, &request, by)
            .map_err(ApiError::from)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(flag)))
}

#[utoipa::path(post, operation_id = "closeEpoch", path = "/v1/epochs/close", tag = "rewards",
    responses((status = 200, body = ClosedEpoch, description = "the closed epoch: its attribution root, payout root and total, and its settlement (tried at once when a ledger is configured)"), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn close_epoch(
    State(app): State<AppState>,
    principal: Principal,
) -> Result<Json<ClosedEpoch>, ApiError> {
    principal.require_admin()?;
    let rewards = app.rewards.clone();
    let dir = app.data_dir.clone();
    let closed = blocking(move || {
        let closed = ledger::epochs::close(&rewards, &dir)?;
        if closed.settlement.is_some() {
            // The first try is part of closing; a failure stays pending and is retried.
            return ledger::settle::attempt(&rewards, closed.epoch).map_err(ApiError::from);
        }
        Ok(closed)
    })
    .await?;
    Ok(Json(closed))
}

#[utoipa::path(get, operation_id = "listEpochs", path = "/v1/epochs", tag = "rewards",
    responses((status = 200, body = [ClosedEpoch])),
    security(("bearer" = [])))]
pub async fn list_epochs(
    State(app): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<ClosedEpoch>>, ApiError> {
    principal.require_authenticated()?;
    let rewards = app.rewards.clone();
    Ok(Json(
        blocking(move || ledger::epochs::list(&rewards).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(get, operation_id = "getEpoch", path = "/v1/epochs/{n}", tag = "rewards",
    params(("n" = u64, Path)),
    responses((status = 200, body = ClosedEpoch), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_epoch(
    State(app): State<AppState>,
    principal: Principal,
    Path(n): Path<u64>,
) -> Result<Json<ClosedEpoch>, ApiError> {
    principal.require_authenticated()?;
    let rewards = app.rewards.clone();
    Ok(Json(
        blocking(move || ledger::epochs::get(&rewards, n).map_err(ApiError::from)).await?,
    ))
}

#[utoipa::path(post, operation_id = "settleEpoch", path = "/v1/epochs/{n}/settle", tag = "rewards",
    params(("n" = u64, Path)),
    responses((status = 200, body = ClosedEpoch, description = "the epoch after one more try (a settled epoch as it is)"), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn settle_epoch(
    State(app): State<AppState>,
    principal: Principal,
    Path(n): Path<u64>,
) -> Result<Json<ClosedEpoch>, ApiError> {
    principal.require_admin()?;
    let rewards = app.rewards.clone();
    Ok(Json(
        blocking(move || ledger::settle::attempt(&rewards, n).map_err(ApiError::from)).await?,
    ))
}

/// What one ask of an epoch's ledger found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClaimsSync {
    pub epoch: u64,
    /// Whether the epoch's ledger reports claims (false before it is settled, and for
    /// ledgers that keep no record of them).
    pub tracked: bool,
    /// What accounts have claimed of the epoch in all.
    #[serde(with = "crate::rewards::money::units")]
    #[schema(value_type = String)]
    pub claimed: u128,
    /// Accounts whose claims changed with this ask.
    pub changed: usize,
}

#[utoipa::path(post, operation_id = "syncEpochClaims", path = "/v1/epochs/{n}/claims/sync", tag = "rewards",
    params(("n" = u64, Path)),
    responses((status = 200, body = ClaimsSync, description = "the epoch's claims as its ledger reports them now (the server also asks every 30 s)"), (status = 404, body = Problem), (status = 502, body = Problem, description = "the ledger failed, or reported claims the epoch does not owe; nothing was booked")),
    security(("bearer" = [])))]
pub async fn sync_claims(
    State(app): State<AppState>,
    principal: Principal,
    Path(n): Path<u64>,
) -> Result<Json<ClaimsSync>, ApiError> {
    principal.require_admin()?;
    let rewards = app.rewards.clone();
    let synced =
        blocking(move || ledger::claims::sync(&rewards, n).map_err(ApiError::from)).await?;
    Ok(Json(match synced {
        ledger::claims::Synced::NotTracked { claimed } => ClaimsSync {
            epoch: n,
            tracked: false,
            claimed,
            changed: 0,
        },
        ledger::claims::Synced::Claims { claimed, changed } => ClaimsSync {
            epoch: n,
            tracked: true,
            claimed,
            changed,
        },
    }))
}

#[utoipa::path(get, operation_id = "epochClaim", path = "/v1/epochs/{n}/claims/{address}", tag = "rewards",
    params(("n" = u64, Path), ("address" = String, Path)),
    responses((status = 200, body = Claim, description = "the amount and its proof against the epoch's payout root"), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn claim(
    State(app): State<AppState>,
    principal: Principal,
    Path((n, address)): Path<(u64, String)>,
) -> Result<Json<Claim>, ApiError> {
    principal.require_authenticated()?;
    let rewards = app.rewards.clone();
    let dir = app.data_dir.clone();
    Ok(Json(
        blocking(move || {
            ledger::epochs::claim(&rewards, &dir, n, &address).map_err(ApiError::from)
        })
        .await?,
    ))
}

#[utoipa::path(put, operation_id = "setLedger", path = "/v1/ledger", tag = "rewards",
    request_body = LedgerSettings,
    responses((status = 200, body = LedgerSettings), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn set_ledger(
    State(app): State<AppState>,
    principal: Principal,
    JsonBody(settings): JsonBody<LedgerSettings>,
) -> Result<Json<LedgerSettings>, ApiError> {
    principal.require_admin()?;
    let rewards = app.rewards.clone();
    Ok(Json(
        blocking(move || ledger::settle::configure(&rewards, settings).map_err(ApiError::from))
            .await?,
    ))
}

/// How often the background asks settled epochs' ledgers for claims.
const CLAIMS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Retries due settlements in the background for as long as the server runs, and books
/// what ledgers report claimed.
pub fn spawn_settlements(rewards: std::sync::Arc<Rewards>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        let mut claims_asked: Option<std::time::Instant> = None;
        loop {
            tick.tick().await;
            let r = rewards.clone();
            let claims = claims_asked.is_none_or(|t| t.elapsed() >= CLAIMS_EVERY);
            if claims {
                claims_asked = Some(std::time::Instant::now());
            }
            // Each part runs whatever the other's outcome.
            let work = move || {
                let settled = ledger::settle::due(&r).map(drop);
                let claimed = if claims {
                    ledger::claims::sync_all(&r).map(drop)
                } else {
                    Ok(())
                };
                (settled, claimed)
            };
            match tokio::task::spawn_blocking(work).await {
                Ok((settled, claimed)) => {
                    if let Err(e) = settled {
                        tracing::warn!("settling due epochs: {e}");
                    }
                    if let Err(e) = claimed {
                        tracing::warn!("reading claims: {e}");
                    }
                }
                Err(e) => tracing::warn!("the settlement worker failed: {e}"),
            }
        }
    });
}
