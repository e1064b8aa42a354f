//! Installed plugins: each in `<data-dir>/plugins/installed/<id>/` (its `plugin.toml` and
//! `component.wasm`), listed in RocksDB, loaded at start. The operator's grants come from
//! `<data-dir>/plugins.toml`, the one place that decides what a plugin may use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::manifest::{Capability, Grants, Limits, Manifest, PluginKind};
use super::runtime::{LoadedPlugin, PluginRuntime};
use super::validator::WasmValidator;
use super::PluginError;
use crate::datanet::validate::{Validator, ValidatorError, ValidatorResolver};
use crate::store::{Store, CF_PLUGINS};

/// The operator's grants file, in the data directory.
pub const GRANTS_FILE: &str = "plugins.toml";

/// An installed plugin as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PluginInfo {
    pub id: String,
    pub version: String,
    pub kind: PluginKind,
    pub description: String,
    /// The `tributary:plugins` version the component was built for.
    pub api_version: String,
    /// BLAKE3 of the component, hex.
    pub component_hash: String,
    pub component_bytes: u64,
    /// What the manifest requests.
    pub capabilities: Vec<Capability>,
    /// What the operator grants of it.
    pub granted: Vec<Capability>,
    /// The limits calls run under: the manifest's, within the operator's maxima.
    pub limits: Limits,
    #[schema(value_type = Object)]
    pub config_schema: Option<serde_json::Value>,
    pub installed_at: DateTime<Utc>,
}

/// One installed plugin, ready to call.
struct Installed {
    info: PluginInfo,
    loaded: Arc<LoadedPlugin>,
    /// For validators, the plugin as ingest calls it, kept so its packing buffers are reused.
    validator: Option<Arc<WasmValidator>>,
}

/// The installed plugins.
pub struct Plugins {
    runtime: PluginRuntime,
    grants: Grants,
    store: Arc<Store>,
    dir: PathBuf,
    installed: RwLock<HashMap<String, Installed>>,
}

impl Plugins {
    /// Opens the registry of `data_dir` and loads every installed plugin. One that no longer
    /// loads (its grants changed, say) is reported and left out; the rest serve.
    pub fn open(data_dir: &Path, store: Arc<Store>) -> Result<Self, PluginError> {
        let grants_path = data_dir.join(GRANTS_FILE);
        let grants = match std::fs::read_to_string(&grants_path) {
            Ok(text) => Grants::parse(&text, &grants_path.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Grants::default(),
            Err(e) => return Err(e.into()),
        };
        let dir = data_dir.join("plugins");
        let runtime = PluginRuntime::new(&dir.join("cache"), grants.limits, store.clone())?;
        let plugins = Self {
            runtime,
            grants,
            store,
            dir,
            installed: RwLock::new(HashMap::new()),
        };
        let mut installed: Vec<PluginInfo> = Vec::new();
        plugins.store.for_each_prefix(CF_PLUGINS, b"", |_, value| {
            if let Ok(info) = serde_json::from_slice::<PluginInfo>(value) {
                installed.push(info);
            }
            Ok(())
        })?;
        for info in installed {
            match plugins.load_installed(&info.id) {
                Ok(loaded) => plugins.remember(info, loaded),
                Err(e) => {
                    tracing::error!(plugin = info.id, error = %e, "an installed plugin does not load")
                }
            }
        }
        Ok(plugins)
    }

    fn folder(&self, id: &str) -> PathBuf {
        self.dir.join("installed").join(id)
    }

    fn load_installed(&self, id: &str) -> Result<LoadedPlugin, PluginError> {
        let folder = self.folder(id);
        let manifest_path = folder.join("plugin.toml");
        let text = std::fs::read_to_string(&manifest_path)?;
        let manifest = Manifest::parse(&text, &manifest_path.display().to_string())?;
        let wasm = std::fs::read(folder.join("component.wasm"))?;
        self.runtime.load(manifest, &wasm, &self.grants)
    }

    fn remember(&self, info: PluginInfo, loaded: LoadedPlugin) {
        let loaded = Arc::new(loaded);
        let validator = (info.kind == PluginKind::Validator)
            .then(|| Arc::new(WasmValidator::new(loaded.clone())));
        self.installed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                info.id.clone(),
                Installed {
                    info,
                    loaded,
                    validator,
                },
            );
    }

    /// What `f` reads of plugin `id`, or `NotFound`.
    fn with<T>(&self, id: &str, f: impl FnOnce(&Installed) -> T) -> Result<T, PluginError> {
        self.installed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(f)
            .ok_or_else(|| PluginError::NotFound(id.to_string()))
    }

    /// Installs (or upgrades) a plugin from its manifest and component. Nothing is written
    /// unless the component loads under its manifest and the operator's grants.
    pub fn install(&self, manifest_text: &str, wasm: &[u8]) -> Result<PluginInfo, PluginError> {
        let manifest = Manifest::parse(manifest_text, "plugin.toml")?;
        let loaded = self.runtime.load(manifest.clone(), wasm, &self.grants)?;
        let info = PluginInfo {
            id: manifest.id.clone(),
            version: manifest.version.clone(),
            kind: manifest.kind,
            description: manifest.description.clone(),
            api_version: loaded.api_version.clone(),
            component_hash: loaded.hash.clone(),
            component_bytes: wasm.len() as u64,
            capabilities: manifest.capabilities.clone(),
            granted: loaded.granted.clone(),
            limits: loaded.limits,
            config_schema: manifest.config_schema.clone(),
            installed_at: Utc::now(),
        };
        let folder = self.folder(&manifest.id);
        let staging = self.dir.join("staging").join(&manifest.id);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        std::fs::write(staging.join("plugin.toml"), manifest_text)?;
        std::fs::write(staging.join("component.wasm"), wasm)?;
        if let Some(parent) = folder.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::rename(&staging, &folder)?;
        let mut batch = self.store.batch();
        batch
            .put_json(CF_PLUGINS, manifest.id.as_bytes(), &info)
            .map_err(PluginError::from)?;
        batch.commit()?;
        self.remember(info.clone(), loaded);
        tracing::info!(plugin = info.id, version = info.version, kind = %info.kind, "plugin installed");
        Ok(info)
    }

    pub fn list(&self) -> Vec<PluginInfo> {
        let mut all: Vec<PluginInfo> = self
            .installed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|i| i.info.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub fn info(&self, id: &str) -> Result<PluginInfo, PluginError> {
        self.with(id, |i| i.info.clone())
    }

    pub fn get(&self, id: &str) -> Result<Arc<LoadedPlugin>, PluginError> {
        self.with(id, |i| i.loaded.clone())
    }

    /// The plugin `id`, which must be of `kind`.
    pub fn get_kind(&self, id: &str, kind: PluginKind) -> Result<Arc<LoadedPlugin>, PluginError> {
        let plugin = self.get(id)?;
        if plugin.manifest.kind != kind {
            return Err(PluginError::WrongKind {
                plugin: id.to_string(),
                found: plugin.manifest.kind.to_string(),
                wanted: kind.to_string(),
            });
        }
        Ok(plugin)
    }

    /// Removes a plugin; its state stays, should it be installed again.
    pub fn remove(&self, id: &str) -> Result<PluginInfo, PluginError> {
        let info = self.info(id)?;
        let mut batch = self.store.batch();
        batch.delete(CF_PLUGINS, id.as_bytes());
        batch.commit()?;
        self.installed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let _ = std::fs::remove_dir_all(self.folder(id));
        Ok(info)
    }

    /// Checks a config for plugin `id` against the plugin's config schema.
    pub fn check_config(&self, id: &str, config: &serde_json::Value) -> Result<(), PluginError> {
        let info = self.info(id)?;
        if let Some(schema) = &info.config_schema {
            super::config_schema::check(schema, config, "config").map_err(|message| {
                PluginError::Failed {
                    plugin: id.to_string(),
                    call: "config",
                    message,
                }
            })?;
        }
        Ok(())
    }
}

impl ValidatorResolver for Plugins {
    fn resolve(&self, plugin: &str) -> Result<Arc<dyn Validator>, ValidatorError> {
        self.get_kind(plugin, PluginKind::Validator)
            .and_then(|_| self.with(plugin, |i| i.validator.clone()))
            .and_then(|v| v.ok_or_else(|| PluginError::NotFound(plugin.to_string())))
            .map(|v| v as Arc<dyn Validator>)
            .map_err(|e| ValidatorError {
                validator: plugin.to_string(),
                message: e.to_string(),
            })
    }

    fn check(&self, plugin: &str, config: &serde_json::Value) -> Result<(), String> {
        self.get_kind(plugin, PluginKind::Validator)
            .map_err(|e| e.to_string())?;
        self.check_config(plugin, config).map_err(|e| e.to_string())
    }
}
