//! Ledger adapters: record a closed epoch's payouts where others can check them.

use crate::amount_from_wit;
// Two versions of the package are in the world, so the generated modules carry them.
use crate::bindings::ledger_adapter::exports::tributary::plugins0_1_0::ledger as wit;

pub use wit::Receipt;

/// A closed epoch, with amounts in base units.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub epoch: u64,
    /// 0x-prefixed hex of the payout Merkle root.
    pub payout_root: String,
    pub total: u128,
    pub payouts: Vec<(String, u128)>,
}

pub trait LedgerAdapter {
    type Config: serde::de::DeserializeOwned + 'static;

    /// Records the settlement; settling the same epoch again returns the same receipt.
    fn settle(config: &Self::Config, settlement: &Settlement) -> Result<Receipt, String>;
    /// Whether `receipt` still proves `settlement`.
    fn verify(
        config: &Self::Config,
        settlement: &Settlement,
        receipt: &Receipt,
    ) -> Result<bool, String>;
    /// What each account has claimed of the settled epoch, where the ledger knows it (a
    /// distributor contract's claim events). `None`, the default, for ledgers where claims
    /// are not recorded; the engine then shows nothing claimed.
    fn claimed(
        _config: &Self::Config,
        _settlement: &Settlement,
        _receipt: &Receipt,
    ) -> Result<Option<Vec<(String, u128)>>, String> {
        Ok(None)
    }
}

fn settlement(s: wit::Settlement) -> Settlement {
    Settlement {
        epoch: s.epoch,
        payout_root: s.payout_root,
        total: amount_from_wit(s.total),
        payouts: s
            .payouts
            .into_iter()
            .map(|p| (p.account, amount_from_wit(p.amount)))
            .collect(),
    }
}

#[doc(hidden)]
pub fn settle<A: LedgerAdapter>(s: wit::Settlement, config: String) -> Result<Receipt, String> {
    let parsed = crate::cached::parse_config::<A::Config>(&config)?;
    A::settle(&parsed, &settlement(s))
}

#[doc(hidden)]
pub fn verify<A: LedgerAdapter>(
    s: wit::Settlement,
    receipt: Receipt,
    config: String,
) -> Result<bool, String> {
    let parsed = crate::cached::parse_config::<A::Config>(&config)?;
    A::verify(&parsed, &settlement(s), &receipt)
}

#[doc(hidden)]
pub fn claimed<A: LedgerAdapter>(
    s: wit::Settlement,
    receipt: Receipt,
    config: String,
) -> Result<Option<Vec<crate::bindings::types::Payout>>, String> {
    let parsed = crate::cached::parse_config::<A::Config>(&config)?;
    Ok(
        A::claimed(&parsed, &settlement(s), &receipt)?.map(|claims| {
            claims
                .into_iter()
                .map(|(account, units)| crate::bindings::types::Payout {
                    account,
                    amount: crate::amount_to_wit(units),
                })
                .collect()
        }),
    )
}

/// Exports `$ty`, which implements [`LedgerAdapter`], as the component's ledger adapter.
#[macro_export]
macro_rules! export_ledger_adapter {
    ($ty:ty) => {
        // Only components export the world; on the host the plugin is a library for its tests.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::ledger_adapter::exports::tributary::plugins0_1_0::ledger as __wit;

            struct __Export;

            impl __wit::Guest for __Export {
                fn settle(
                    settlement: __wit::Settlement,
                    config: ::std::string::String,
                ) -> ::std::result::Result<__wit::Receipt, ::std::string::String> {
                    $crate::ledger::settle::<$ty>(settlement, config)
                }
                fn verify(
                    settlement: __wit::Settlement,
                    receipt: __wit::Receipt,
                    config: ::std::string::String,
                ) -> ::std::result::Result<bool, ::std::string::String> {
                    $crate::ledger::verify::<$ty>(settlement, receipt, config)
                }
            }

            impl $crate::__private::ledger_adapter::exports::tributary::plugins0_1_1::claims::Guest for __Export {
                fn claimed(
                    settlement: __wit::Settlement,
                    receipt: __wit::Receipt,
                    config: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::option::Option<::std::vec::Vec<$crate::__private::types::Payout>>,
                    ::std::string::String,
                > {
                    $crate::ledger::claimed::<$ty>(settlement, receipt, config)
                }
            }

            $crate::__private::ledger_adapter::export_world!(__Export with_types_in $crate::__private::ledger_adapter);
            $crate::__stamp_api_version!(b"0.1.1");
        };
    };
}
