//! What can go wrong with a plugin. Every error names the plugin, and a failed call names
//! the call and, where a limit stopped it, the limit.

/// A plugin failure. The engine keeps serving after any of these.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("plugin manifest {origin}: {message}")]
    Manifest { origin: String, message: String },
    #[error("plugin {plugin}: {message}")]
    Load { plugin: String, message: String },
    #[error(
        "plugin {plugin} is built for tributary:plugins@{found}; this engine supports {supported}"
    )]
    UnsupportedApi {
        plugin: String,
        found: String,
        supported: String,
    },
    #[error("plugin {0} is not installed")]
    NotFound(String),
    #[error("plugin {plugin} is a {found}, not a {wanted}")]
    WrongKind {
        plugin: String,
        found: String,
        wanted: String,
    },
    #[error("plugin {plugin}, call {call}: ran past its deadline of {limit_ms} ms")]
    Deadline {
        plugin: String,
        call: &'static str,
        limit_ms: u64,
    },
    #[error("plugin {plugin}, call {call}: needed more than its memory cap of {limit_mb} MiB")]
    Memory {
        plugin: String,
        call: &'static str,
        limit_mb: u64,
    },
    #[error("plugin {plugin}, call {call}: answered {size} bytes, over its output cap of {limit_kb} KiB")]
    Output {
        plugin: String,
        call: &'static str,
        size: usize,
        limit_kb: u64,
    },
    #[error("plugin {plugin}, call {call}: used capability {capability}, which the operator has not granted it")]
    Denied {
        plugin: String,
        call: &'static str,
        capability: &'static str,
    },
    #[error("plugin {plugin}, call {call}: trapped: {message}")]
    Trap {
        plugin: String,
        call: &'static str,
        message: String,
    },
    /// The plugin ran and answered with an error of its own.
    #[error("plugin {plugin}, call {call}: {message}")]
    Failed {
        plugin: String,
        call: &'static str,
        message: String,
    },
    /// The plugin answered something the host refuses (payouts that do not sum to the pool).
    #[error("plugin {plugin}, call {call}: refused its answer: {message}")]
    Refused {
        plugin: String,
        call: &'static str,
        message: String,
    },
    #[error("plugin store: {0}")]
    Io(String),
}

impl PluginError {
    pub fn manifest(origin: impl Into<String>, message: impl Into<String>) -> Self {
        PluginError::Manifest {
            origin: origin.into(),
            message: message.into(),
        }
    }

    pub fn load(plugin: impl Into<String>, message: impl std::fmt::Display) -> Self {
        PluginError::Load {
            plugin: plugin.into(),
            message: message.to_string(),
        }
    }
}

impl From<std::io::Error> for PluginError {
    fn from(e: std::io::Error) -> Self {
        PluginError::Io(e.to_string())
    }
}

impl From<crate::store::StoreError> for PluginError {
    fn from(e: crate::store::StoreError) -> Self {
        PluginError::Io(e.to_string())
    }
}
