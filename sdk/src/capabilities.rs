//! The host capabilities, with Rust types. Each works only where the plugin's manifest
//! requests it and the operator grants it.

/// Messages to the engine's log, tagged by the host with the plugin's id.
pub mod log {
    use crate::bindings::log::{log, Level};

    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// The operator's settings for this plugin.
pub mod config {
    /// The setting `key` parsed as `T`; `None` when unset, an error when it does not parse.
    pub fn get<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, String> {
        match crate::bindings::config::get(key) {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| format!("setting {key}: {e}")),
        }
    }
}

/// This plugin's own key-value state, kept by the engine.
pub mod kv {
    pub fn get(key: &[u8]) -> Option<Vec<u8>> {
        crate::bindings::kv::get(key)
    }
    pub fn set(key: &[u8], value: &[u8]) -> Result<(), String> {
        crate::bindings::kv::set(key, value)
    }
    pub fn delete(key: &[u8]) {
        crate::bindings::kv::delete(key)
    }
}

/// Signatures by the operator's key, which never enters the plugin.
pub mod signer {
    /// The signing key's address, 0x-prefixed and checksummed.
    pub fn address() -> Result<String, String> {
        crate::bindings::signer::signing_address()
    }
    /// A 65-byte signature (r, s, v) over `digest`.
    pub fn sign_digest(digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        crate::bindings::signer::sign_digest(digest)
    }
}

/// Outbound HTTP to the operator's allow-list.
pub mod http {
    pub use crate::bindings::http::{Header, Request, Response};

    pub fn send(request: &Request) -> Result<Response, String> {
        crate::bindings::http::send(request)
    }

    /// A POST of a JSON body, answering the response body when the status is 2xx.
    pub fn post_json(url: &str, body: &str) -> Result<Vec<u8>, String> {
        let response = send(&Request {
            method: "POST".into(),
            url: url.into(),
            headers: vec![Header {
                name: "content-type".into(),
                value: "application/json".into(),
            }],
            body: body.as_bytes().to_vec(),
        })?;
        if (200..300).contains(&response.status) {
            Ok(response.body)
        } else {
            Err(format!(
                "{url} answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ))
        }
    }
}
