//! Which `tributary:plugins` versions this engine loads, and which one a component was
//! built for: the SDK stamps it into a custom section; components from other toolchains
//! are read by the version on the interface they export.

use super::manifest::PluginKind;

/// Custom section the SDK writes the API version into.
pub const SECTION: &str = "tributary-api-version";
// Within 0.1, minor releases only add new interfaces, which the host probes for, so every
// 0.1.x component loads; 0.1.1 added `claims` for ledger adapters and 0.1.2
// `packed-validation` for validators.
pub const SUPPORTED: &str = "0.1.0 to 0.1.x";

/// `Ok` when `version` is one this engine loads; otherwise why not.
pub fn check(version: &str) -> Result<(), String> {
    let mut parts = version.split('.');
    let numbers: Option<Vec<u64>> = (0..3)
        .map(|_| parts.next().and_then(|p| p.parse().ok()))
        .collect();
    match numbers {
        Some(n) if parts.next().is_none() => {
            if n[0] == 0 && n[1] == 1 {
                Ok(())
            } else {
                Err(format!(
                    "tributary:plugins@{version} is not supported; this engine supports {SUPPORTED}"
                ))
            }
        }
        _ => Err(format!("{version:?} is not a version (major.minor.patch)")),
    }
}

/// The version the SDK builds components of `kind` for: validators use 0.1.2's world, ledger
/// adapters 0.1.1's, reward policies 0.1.0's, which neither changed.
pub fn of_sdk(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Validator => "0.1.2",
        PluginKind::LedgerAdapter => "0.1.1",
        PluginKind::RewardPolicy => "0.1.0",
    }
}

/// The exported interface of each kind, without its version.
pub fn export_of(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Validator => "tributary:plugins/validation",
        PluginKind::RewardPolicy => "tributary:plugins/policy",
        PluginKind::LedgerAdapter => "tributary:plugins/ledger",
    }
}

/// The version in the SDK's custom section, in the component or any module nested in it.
pub fn stamped(wasm: &[u8]) -> Option<String> {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::CustomSection(section)) = payload {
            if section.name() == SECTION {
                return std::str::from_utf8(section.data())
                    .ok()
                    .map(|s| s.trim_end_matches('\0').to_string());
            }
        }
    }
    None
}

/// The version of an export name such as `tributary:plugins/validation@0.1.0`.
pub fn of_export(name: &str) -> Option<&str> {
    name.split_once('@').map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_in_and_out_of_range() {
        assert!(check("0.1.0").is_ok());
        assert!(check("0.1.7").is_ok());
        assert!(check("0.2.0")
            .expect_err("newer minor")
            .contains("supports 0.1.0 to 0.1.x"));
        assert!(check("1.0.0").is_err());
        assert!(check("0.1").expect_err("short").contains("not a version"));
        assert_eq!(
            of_export("tributary:plugins/validation@0.1.3"),
            Some("0.1.3")
        );
    }
}
