//! Write Tributary plugins in Rust.
//!
//! A plugin is a WASM component implementing one world of the `tributary:plugins@0.1.0` WIT
//! package. This crate hides the generated bindings: implement [`validator::Validator`],
//! [`reward::RewardPolicy`] or [`ledger::LedgerAdapter`] on a type, name it in the matching
//! export macro, and build for `wasm32-wasip2`. Enable the one cargo feature of the world you
//! implement (`validator`, `reward-policy` or `ledger-adapter`).
//!
//! ```ignore
//! use tributary_sdk::validator::{Record, Validator, Verdict};
//!
//! #[derive(serde::Deserialize, Default)]
//! struct Config { min_chars: usize }
//!
//! struct MinLength;
//!
//! impl Validator for MinLength {
//!     type Config = Config;
//!     fn check(config: &Config, record: &Record) -> Verdict {
//!         let chars = record.text().chars().count();
//!         if chars < config.min_chars {
//!             Verdict::reject(format!("{chars} characters, fewer than {}", config.min_chars))
//!         } else {
//!             Verdict::accept(1.0)
//!         }
//!     }
//! }
//!
//! tributary_sdk::export_validator!(MinLength);
//! ```
//!
//! Host capabilities ([`log`], [`config`], [`kv`], [`signer`], [`http`]) work only when the
//! plugin's `plugin.toml` requests them and the operator grants them; the engine refuses to
//! load a component that imports one it was not granted.

// The generated bindings and the exported functions of the macros are the FFI boundary of
// the component model; they cannot be written without `unsafe`.
#![allow(unsafe_code)]

extern crate self as tributary_sdk;

mod bindings;
mod cached;
pub mod capabilities;
#[cfg(feature = "ledger-adapter")]
pub mod ledger;
#[cfg(feature = "validator")]
mod packed;
#[cfg(feature = "reward-policy")]
pub mod reward;
#[cfg(feature = "validator")]
pub mod validator;

pub use capabilities::{config, http, kv, log, signer};

/// The newest version of the WIT package this SDK implements. Each component it builds is
/// stamped (custom section [`API_VERSION_SECTION`]) with its world's version, which the
/// engine reads before loading: 0.1.2 for validators (which also take packed batches),
/// 0.1.1 for ledger adapters, and 0.1.0 for reward policies, whose world neither changed.
pub const API_VERSION: &str = "0.1.2";
/// Name of the custom section that carries [`API_VERSION`].
pub const API_VERSION_SECTION: &str = "tributary-api-version";

/// Joins the halves of a WIT `amount` into base units.
pub fn amount_from_wit(amount: bindings::types::Amount) -> u128 {
    (u128::from(amount.high) << 64) | u128::from(amount.low)
}

/// Splits base units into a WIT `amount`.
pub fn amount_to_wit(units: u128) -> bindings::types::Amount {
    bindings::types::Amount {
        high: (units >> 64) as u64,
        low: units as u64,
    }
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    #[cfg(feature = "ledger-adapter")]
    pub use crate::bindings::ledger_adapter;
    #[cfg(feature = "reward-policy")]
    pub use crate::bindings::reward_policy;
    pub use crate::bindings::types;
    #[cfg(feature = "validator")]
    pub use crate::bindings::validator;
    pub use crate::cached::parse_config;
}

/// Stamps the SDK's API version into the component (used by the export macros).
#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_api_version {
    () => {
        $crate::__stamp_api_version!(b"0.1.0");
    };
    ($version:literal) => {
        #[allow(unsafe_code)]
        #[used]
        #[link_section = "tributary-api-version"]
        static __TRIBUTARY_API_VERSION: [u8; 5] = *$version;
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_trip_through_their_halves() {
        for units in [0u128, 1, u64::MAX as u128, u64::MAX as u128 + 1, u128::MAX] {
            assert_eq!(amount_from_wit(amount_to_wit(units)), units);
        }
        assert_eq!(API_VERSION.len(), 5, "the stamp macro writes five bytes");
    }
}
