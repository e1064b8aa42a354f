//! Where the plugins of `plugins/` are after the build: each one's folder (with its
//! `plugin.toml`) and its component, built for wasm32-wasip2 by this crate's build script.

/// One built plugin.
#[derive(Debug, Clone, Copy)]
pub struct Plugin {
    /// The crate's name.
    pub name: &'static str,
    /// The plugin's folder, holding its `plugin.toml`.
    pub dir: &'static str,
    /// The component, `.wasm`.
    pub component: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
