//! Host bindings generated from `wit/0.1.0` (and `wit/0.1.2` for packed validators). The validator world's bindings hold the shared
//! types and host capabilities; the other worlds reuse them.

pub mod validator {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "tributary:plugins/validator",
        imports: { default: trappable },
    });
}

/// The host bindings of a world that reuses the validator world's shared interfaces.
macro_rules! world_reusing_shared {
    ($world:literal) => {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: $world,
            imports: { default: trappable },
            with: {
                "tributary:plugins/types": super::validator::tributary::plugins::types,
                "tributary:plugins/log": super::validator::tributary::plugins::log,
                "tributary:plugins/config": super::validator::tributary::plugins::config,
                "tributary:plugins/kv": super::validator::tributary::plugins::kv,
                "tributary:plugins/signer": super::validator::tributary::plugins::signer,
                "tributary:plugins/http": super::validator::tributary::plugins::http,
            },
        });
    };
}

pub mod reward_policy {
    world_reusing_shared!("tributary:plugins/reward-policy");
}

pub mod ledger_adapter {
    world_reusing_shared!("tributary:plugins/ledger-adapter");
}

/// 0.1.2's validator world: 0.1.0's, plus `packed-validation`, which the host calls where a
/// component exports it.
pub mod packed_validator {
    wasmtime::component::bindgen!({
        path: ["../wit/0.1.0", "../wit/0.1.2"],
        world: "tributary:plugins/validator@0.1.2",
        imports: { default: trappable },
        with: {
            "tributary:plugins/types@0.1.0": super::validator::tributary::plugins::types,
            "tributary:plugins/log@0.1.0": super::validator::tributary::plugins::log,
            "tributary:plugins/config@0.1.0": super::validator::tributary::plugins::config,
            "tributary:plugins/kv@0.1.0": super::validator::tributary::plugins::kv,
            "tributary:plugins/signer@0.1.0": super::validator::tributary::plugins::signer,
            "tributary:plugins/http@0.1.0": super::validator::tributary::plugins::http,
        },
    });
}

pub use validator::tributary::plugins::{config, http, kv, log, signer, types};
