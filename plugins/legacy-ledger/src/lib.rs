//! A ledger adapter as a toolchain other than the SDK would build it for 0.1.0: the receipt's
//! reference is the payout root, and verifying compares them. It exists so a test can load a
//! component that predates 0.1.1's `claims` interface.

// The generated glue declares the component's exports, which takes `unsafe` (the SDK does
// the same inside its macros).
#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "tributary:plugins/ledger-adapter@0.1.0",
});

use exports::tributary::plugins::ledger::{Guest, Receipt, Settlement};

struct Legacy;

impl Guest for Legacy {
    fn settle(settlement: Settlement, _config: String) -> Result<Receipt, String> {
        Ok(Receipt {
            ledger: "legacy".into(),
            reference: settlement.payout_root,
            details: "{}".into(),
        })
    }

    fn verify(settlement: Settlement, receipt: Receipt, _config: String) -> Result<bool, String> {
        Ok(receipt.reference == settlement.payout_root)
    }
}

export!(Legacy);
