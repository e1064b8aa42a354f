//! `plugin.toml`: what a plugin is, what it asks for, and the limits it runs under; and the
//! operator's grants, the one place that decides what a plugin may use.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::PluginError;

/// The three worlds of `tributary:plugins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    Validator,
    RewardPolicy,
    LedgerAdapter,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Validator => "validator",
            PluginKind::RewardPolicy => "reward-policy",
            PluginKind::LedgerAdapter => "ledger-adapter",
        })
    }
}

/// A host capability a plugin may request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `tributary:plugins/log`.
    Log,
    /// `tributary:plugins/config`: the operator's settings for this plugin.
    Config,
    /// `tributary:plugins/kv`: state of the plugin's own, kept in RocksDB.
    Kv,
    /// `tributary:plugins/signer`: signatures by the operator's key.
    Signer,
    /// `tributary:plugins/http`: outbound requests to an allow-list.
    Http,
    /// WASI filesystem, limited to one folder the operator names.
    Filesystem,
    /// WASI wall and monotonic clocks; without it they read zero.
    Clock,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Config => "config",
            Capability::Kv => "kv",
            Capability::Signer => "signer",
            Capability::Http => "http",
            Capability::Filesystem => "filesystem",
            Capability::Clock => "clock",
        }
    }

    /// The capability a component import stands for, if it is one of ours or WASI's.
    pub fn of_import(name: &str) -> Option<Capability> {
        let base = name.split('@').next().unwrap_or(name);
        Some(match base {
            "tributary:plugins/log" => Capability::Log,
            "tributary:plugins/config" => Capability::Config,
            "tributary:plugins/kv" => Capability::Kv,
            "tributary:plugins/signer" => Capability::Signer,
            "tributary:plugins/http" => Capability::Http,
            _ => return None,
        })
    }
}

/// Per-call limits, in the manifest and as the operator's maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time of one call.
    pub deadline_ms: u64,
    /// Linear memory of an instance.
    pub memory_mb: u64,
    /// Bytes one call may answer.
    pub output_kb: u64,
    /// Size of the plugin's key-value state (keys and values), in MiB.
    pub kv_mb: u64,
    /// Instances kept ready, so concurrent calls do not queue behind one.
    pub instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline_ms: 1_000,
            memory_mb: 64,
            output_kb: 4_096,
            kv_mb: 64,
            instances: 4,
        }
    }
}

impl Limits {
    /// The operator's maxima when nothing is configured.
    pub fn default_maxima() -> Self {
        Self {
            deadline_ms: 30_000,
            memory_mb: 512,
            output_kb: 65_536,
            kv_mb: 1_024,
            instances: 16,
        }
    }

    /// Each limit no higher than the operator allows.
    pub fn within(self, max: Limits) -> Limits {
        Limits {
            deadline_ms: self.deadline_ms.min(max.deadline_ms).max(1),
            memory_mb: self.memory_mb.min(max.memory_mb).max(1),
            output_kb: self.output_kb.min(max.output_kb).max(1),
            kv_mb: self.kv_mb.min(max.kv_mb),
            instances: self.instances.min(max.instances).max(1),
        }
    }
}

/// `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Lowercase letters, digits and `-`, 1 to 64 characters.
    pub id: String,
    pub version: String,
    pub kind: PluginKind,
    /// The `tributary:plugins` version the component implements.
    pub wit: String,
    #[serde(default)]
    pub description: String,
    /// The component's file, relative to the manifest.
    #[serde(default = "default_component")]
    pub component: String,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    #[serde(default)]
    pub limits: Limits,
    /// A JSON Schema (subset: type, properties, required, additionalProperties, items, enum,
    /// minimum, maximum) that a Datanet's or model's config for this plugin must satisfy.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config_schema: Option<serde_json::Value>,
}

fn default_component() -> String {
    "component.wasm".into()
}

impl Manifest {
    /// Parses and checks a manifest; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, PluginError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| PluginError::manifest(origin, e.message()))?;
        let valid_id = !manifest.id.is_empty()
            && manifest.id.len() <= 64
            && manifest
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_id {
            return Err(PluginError::manifest(
                origin,
                format!(
                    "id {:?}: use 1 to 64 lowercase letters, digits and -",
                    manifest.id
                ),
            ));
        }
        if manifest.version.is_empty() || manifest.version.len() > 32 {
            return Err(PluginError::manifest(origin, "version: 1 to 32 characters"));
        }
        if let Err(message) = super::api_version::check(&manifest.wit) {
            return Err(PluginError::manifest(origin, format!("wit: {message}")));
        }
        if let Some(schema) = &manifest.config_schema {
            if !schema.is_object() {
                return Err(PluginError::manifest(
                    origin,
                    "config_schema: must be a table",
                ));
            }
        }
        Ok(manifest)
    }
}

/// What the operator grants one plugin (`[plugins.<id>]` in `plugins.toml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grant {
    /// Capabilities beyond `log` and `config`, which every plugin has.
    pub grant: Vec<Capability>,
    /// The folder behind the `filesystem` capability, seen by the plugin as `/ledger`.
    pub filesystem: Option<PathBuf>,
    /// Hosts (`example.com`, `127.0.0.1:8545`) the `http` capability may reach.
    pub http_allow: Vec<String>,
    /// A key file (as `tributary keys new` writes) behind the `signer` capability.
    pub signer_key: Option<PathBuf>,
    /// Settings the plugin reads through `config`.
    pub config: BTreeMap<String, toml::Value>,
}

/// The operator's plugin configuration: `plugins.toml` in the data directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// The most any manifest may ask for.
    pub limits: Limits,
    pub plugins: BTreeMap<String, Grant>,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            limits: Limits::default_maxima(),
            plugins: BTreeMap::new(),
        }
    }
}

impl Grants {
    pub fn parse(text: &str, origin: &str) -> Result<Grants, PluginError> {
        toml::from_str(text).map_err(|e| PluginError::manifest(origin, e.message()))
    }

    /// The capabilities `plugin` may use: what it requests and the operator grants.
    pub fn granted(&self, manifest: &Manifest) -> Vec<Capability> {
        let grant = self.plugins.get(&manifest.id);
        manifest
            .capabilities
            .iter()
            .copied()
            .filter(|c| {
                matches!(c, Capability::Log | Capability::Config)
                    || grant.is_some_and(|g| g.grant.contains(c))
            })
            .collect()
    }

    pub fn grant(&self, id: &str) -> Grant {
        self.plugins.get(id).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_their_problem() {
        let ok = Manifest::parse(
            "id = \"a\"\nversion = \"1\"\nkind = \"validator\"\nwit = \"0.1.0\"\ncapabilities = [\"kv\"]\n",
            "a/plugin.toml",
        )
        .expect("parses");
        assert_eq!(ok.limits, Limits::default());
        let err = Manifest::parse(
            "id = \"A\"\nversion = \"1\"\nkind = \"validator\"\nwit = \"0.1.0\"\n",
            "x",
        )
        .expect_err("bad id");
        assert!(err.to_string().contains("id \"A\""), "{err}");
        let err = Manifest::parse(
            "id = \"a\"\nversion = \"1\"\nkind = \"validator\"\nwit = \"0.2.0\"\n",
            "x",
        )
        .expect_err("unsupported wit");
        assert!(err.to_string().contains("supports 0.1.0 to 0.1.x"), "{err}");
        let err = Manifest::parse(
            "id = \"a\"\nversion = \"1\"\nkind = \"teapot\"\nwit = \"0.1.0\"\n",
            "x",
        )
        .expect_err("bad kind");
        assert!(
            err.to_string().contains("unknown variant `teapot`"),
            "{err}"
        );
    }

    #[test]
    fn only_the_operator_grants_what_a_manifest_requests() {
        let manifest = Manifest::parse(
            "id = \"a\"\nversion = \"1\"\nkind = \"validator\"\nwit = \"0.1.0\"\ncapabilities = [\"kv\", \"log\", \"http\"]\n",
            "x",
        )
        .expect("parses");
        let none = Grants::default();
        assert_eq!(none.granted(&manifest), vec![Capability::Log]);
        let grants = Grants::parse(
            "[plugins.a]\ngrant = [\"kv\", \"signer\"]\n",
            "plugins.toml",
        )
        .expect("grants");
        // `signer` is granted but not requested, `http` requested but not granted.
        assert_eq!(
            grants.granted(&manifest),
            vec![Capability::Kv, Capability::Log]
        );
        let limits = Limits {
            deadline_ms: 60_000,
            ..Limits::default()
        }
        .within(Limits::default_maxima());
        assert_eq!(limits.deadline_ms, 30_000);
    }
}
