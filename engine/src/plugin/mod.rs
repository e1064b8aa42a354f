//! The plugin platform: WASM components implementing the `tributary:plugins` worlds
//! (`wit/0.1.0`; `wit/0.1.1` and `wit/0.1.2` add interfaces), run sandboxed by wasmtime.
//!
//! - [`manifest`]: `plugin.toml` and the operator's grants (`plugins.toml`).
//! - [`runtime`]: the engine, the artifact cache, instance pools and limits on every call.
//! - [`host`]: the host capabilities a plugin may import, each behind its grant.
//! - [`state`]: plugin key-value state, committed with the work it belongs to.
//! - [`validator`], [`reward`], [`ledger`]: typed calls of each world; [`packed`]: the
//!   single-buffer batches and verdicts of 0.1.2's `packed-validation`.
//! - [`registry`]: installed plugins in the data directory.

pub mod api_version;
pub mod bindings;
pub mod config_schema;
mod error;
pub mod host;
pub mod ledger;
pub mod manifest;
pub mod packed;
pub mod registry;
pub mod reward;
pub mod runtime;
pub mod state;
pub mod validator;

pub use error::PluginError;
pub use manifest::{Capability, Grants, Limits, Manifest, PluginKind};
pub use registry::Plugins;
pub use runtime::{LoadedPlugin, PluginRuntime};
