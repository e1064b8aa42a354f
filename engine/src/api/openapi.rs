//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{attributions, completions, datanets, jobs, models, plugins, rewards, tokens};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tributary", description = "Datanets, signed contributions and versions, the WASM plugins that validate them, span attribution of outputs to the records they came from, the Model Factory that trains models and LoRA adapters on versions, OpenAI-compatible completions over bases and adapters, each answer attributed, and the fees they earn: split by reward-policy plugins into contributors' balances, closed into epochs with payout Merkle proofs and settled through ledger-adapter plugins. Errors are application/problem+json."),
    paths(
        datanets::create, datanets::list, datanets::get, datanets::update,
        datanets::contribute, datanets::list_batches, datanets::get_batch, datanets::review,
        datanets::get_record, datanets::withdraw,
        datanets::publish, datanets::list_versions, datanets::get_version, datanets::proof,
        datanets::export, tokens::create,
        plugins::install, plugins::list, plugins::get, plugins::remove,
        attributions::build, attributions::list, attributions::get, attributions::query, attributions::attribute,
        attributions::get_attribution, attributions::verify, attributions::proof,
        jobs::get, models::cancel,
        models::train, completions::list_models, models::get,
        completions::completion, completions::chat, completions::attribution,
        completions::load_adapter, completions::list_adapters, completions::unload_adapter,
        rewards::set_terms, rewards::get_terms, rewards::fee, rewards::fees, rewards::account, rewards::flag,
        rewards::close_epoch, rewards::list_epochs, rewards::get_epoch, rewards::settle_epoch,
        rewards::claim, rewards::sync_claims, rewards::set_ledger,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
