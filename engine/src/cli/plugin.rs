//! `tributary plugin ...`: install, list, show and remove plugins on a server; `test` runs a
//! validator over a file locally, without a server; `new` scaffolds a plugin crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use reqwest::blocking::multipart::{Form, Part};
use reqwest::Method;

use super::client::Client;
use crate::datanet::ingest::{self, ErrorReport, Input, InputFormat};
use crate::datanet::{DatanetSpec, ValidatorAttachment};
use crate::plugin::registry::PluginInfo;
use crate::plugin::{Manifest, PluginKind, Plugins};
use crate::Datanets;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Install (or upgrade) a plugin from its folder (admin).
    Install {
        /// The folder holding plugin.toml.
        dir: PathBuf,
        /// The component, if not where the manifest's `component` says.
        #[arg(long)]
        component: Option<PathBuf>,
    },
    /// List installed plugins.
    List,
    /// Show one plugin.
    Show { id: String },
    /// Remove a plugin no Datanet uses (admin).
    Remove { id: String },
    /// Run a validator over a JSON Lines file here, without a server, and print a verdict
    /// per row.
    Test {
        /// The plugin's folder (holding plugin.toml).
        dir: PathBuf,
        /// Records, one JSON object a line.
        input: PathBuf,
        #[arg(long)]
        component: Option<PathBuf>,
        /// A Datanet spec (JSON) whose schema the records follow; by default one required
        /// string field `text`.
        #[arg(long)]
        datanet: Option<PathBuf>,
        /// The validator's config, as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
        /// The operator's grants (a plugins.toml) to run under.
        #[arg(long)]
        grants: Option<PathBuf>,
    },
    /// Scaffold a plugin crate that builds for wasm32-wasip2.
    New {
        /// The plugin's id, also the crate's name and folder.
        id: String,
        #[arg(long, value_parser = ["validator", "reward-policy", "ledger-adapter"])]
        kind: String,
        /// Where to create the folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The Tributary SDK crate to depend on.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk"))]
        sdk: PathBuf,
    },
}

fn read_plugin(dir: &Path, component: Option<&Path>) -> Result<(String, Manifest, Vec<u8>)> {
    let manifest_path = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest = Manifest::parse(&text, &manifest_path.display().to_string())?;
    let wasm_path = component.map_or_else(|| dir.join(&manifest.component), Path::to_path_buf);
    let wasm = std::fs::read(&wasm_path)
        .with_context(|| format!("reading the component {}", wasm_path.display()))?;
    Ok((text, manifest, wasm))
}

pub fn run(client: &Client, cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::Install { dir, component } => {
            let (text, manifest, wasm) = read_plugin(&dir, component.as_deref())?;
            let form = Form::new()
                .part("manifest", Part::text(text).file_name("plugin.toml"))
                .part(
                    "component",
                    Part::bytes(wasm).file_name(format!("{}.wasm", manifest.id)),
                );
            let response =
                client.send(client.request(Method::POST, "/v1/plugins").multipart(form))?;
            let info: PluginInfo = response.json().context("decoding the reply")?;
            super::commands::print_json(&info)
        }
        PluginCommand::List => {
            super::commands::print_json(&client.get::<Vec<PluginInfo>>("/v1/plugins")?)
        }
        PluginCommand::Show { id } => {
            super::commands::print_json(&client.get::<PluginInfo>(&format!("/v1/plugins/{id}"))?)
        }
        PluginCommand::Remove { id } => {
            let response =
                client.send(client.request(Method::DELETE, &format!("/v1/plugins/{id}")))?;
            let info: PluginInfo = response.json().context("decoding the reply")?;
            super::commands::print_json(&info)
        }
        PluginCommand::Test {
            dir,
            input,
            component,
            datanet,
            config,
            grants,
        } => test(
            &dir,
            &input,
            component.as_deref(),
            datanet.as_deref(),
            &config,
            grants.as_deref(),
        ),
        PluginCommand::New { id, kind, dir, sdk } => scaffold(&id, &kind, &dir, &sdk),
    }
}

/// A dry run: a throwaway data directory, the plugin installed there, the records read with
/// the Datanet's schema and judged chunk by chunk.
fn test(
    dir: &Path,
    input: &Path,
    component: Option<&Path>,
    datanet: Option<&Path>,
    config: &str,
    grants: Option<&Path>,
) -> Result<()> {
    let (text, manifest, wasm) = read_plugin(dir, component)?;
    if manifest.kind != PluginKind::Validator {
        bail!(
            "plugin test runs validators; {} is a {}",
            manifest.id,
            manifest.kind
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(config).map_err(|e| anyhow!("--config: {e}"))?;
    let work = tempfile::tempdir()?;
    if let Some(grants) = grants {
        std::fs::copy(
            grants,
            work.path().join(crate::plugin::registry::GRANTS_FILE),
        )
        .with_context(|| format!("reading {}", grants.display()))?;
    }
    let datanets = Datanets::open(work.path())?;
    let plugins = Arc::new(Plugins::open(work.path(), datanets.store().clone())?);
    plugins.install(&text, &wasm)?;
    let datanets = datanets.with_plugins(plugins.clone());
    let mut spec: DatanetSpec = match datanet {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}: not a Datanet spec", path.display()))?,
        None => serde_json::from_value(serde_json::json!({
            "id": "plugin-test", "name": "plugin test", "license": "CC0-1.0",
            "schema": {"text_field": "text", "fields": [{"name": "text", "type": "string", "required": true}]}
        }))?,
    };
    spec.validators = vec![ValidatorAttachment {
        plugin: manifest.id.clone(),
        config,
    }];
    let datanet = datanets.create(spec, "plugin-test")?;
    let chain = datanets.chain_for(&datanet)?;
    let file =
        std::fs::File::open(input).with_context(|| format!("reading {}", input.display()))?;
    let mut reader = ingest::open(
        InputFormat::Jsonl,
        Input::Stream(Box::new(std::io::BufReader::new(file))),
        &datanet.spec.schema,
    )?;
    let mut state = crate::plugin::state::StateChanges::default();
    let mut bad = ErrorReport::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (mut accepted, mut rejected) = (0u64, 0u64);
    while let Some(chunk) = reader.next_chunk(&mut bad)? {
        let mut report = ErrorReport::default();
        let judgement = chain.judge(&datanet, &chunk, &mut state, &mut report)?;
        for i in 0..chunk.batch.num_rows() {
            let row = chunk.rows[i];
            let line = if judgement.keep[i] {
                accepted += 1;
                let mut line = serde_json::json!({"row": row, "verdict": "accept", "quality": judgement.quality[i]});
                if let Some(rewritten) = &judgement.rewritten {
                    let mut changed = serde_json::Map::new();
                    for (f, field) in datanet.spec.schema.fields.iter().enumerate() {
                        let (new, old) = (
                            rewritten.column(f).slice(i, 1),
                            chunk.batch.column(f).slice(i, 1),
                        );
                        if new != old {
                            let shown = arrow::util::display::array_value_to_string(&new, 0)?;
                            changed.insert(field.name.clone(), shown.into());
                        }
                    }
                    if !changed.is_empty() {
                        line["rewrites"] = changed.into();
                    }
                }
                line
            } else {
                rejected += 1;
                let reason = report
                    .errors
                    .iter()
                    .find(|e| e.row == row)
                    .map_or_else(String::new, |e| e.message.clone());
                serde_json::json!({"row": row, "verdict": "reject", "reason": reason})
            };
            use std::io::Write;
            writeln!(out, "{line}")?;
        }
    }
    for e in &bad.errors {
        eprintln!("row {}: not a valid record: {}", e.row, e.message);
    }
    eprintln!(
        "{accepted} accepted, {rejected} rejected, {} not valid records",
        bad.total
    );
    Ok(())
}

fn scaffold(id: &str, kind: &str, dir: &Path, sdk: &Path) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && id.as_bytes()[0].is_ascii_lowercase();
    if !valid {
        bail!("plugin id {id:?}: use lowercase letters, digits and -, starting with a letter");
    }
    let root = dir.join(id);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let sdk = std::fs::canonicalize(sdk)
        .with_context(|| format!("the SDK at {} (pass --sdk)", sdk.display()))?;
    let krate = id.replace('-', "_");
    use crate::plugin::PluginKind;
    let (feature, body, plugin_kind) = match kind {
        "validator" => ("validator", VALIDATOR_TEMPLATE, PluginKind::Validator),
        "reward-policy" => ("reward-policy", REWARD_TEMPLATE, PluginKind::RewardPolicy),
        _ => ("ledger-adapter", LEDGER_TEMPLATE, PluginKind::LedgerAdapter),
    };
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{id}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\nserde = {{ version = \"1\", features = [\"derive\"] }}\ntributary-sdk = {{ path = {:?}, features = [\"{feature}\"] }}\n\n# A plugin builds on its own, not as part of a surrounding workspace.\n[workspace]\n\n[profile.release]\nopt-level = 3\n",
            sdk.display().to_string()
        ),
    )?;
    std::fs::write(
        root.join("plugin.toml"),
        format!(
            "id = \"{id}\"\nversion = \"0.1.0\"\nkind = \"{kind}\"\nwit = \"{}\"\ndescription = \"\"\ncomponent = \"target/wasm32-wasip2/release/{krate}.wasm\"\ncapabilities = []\n\n[limits]\ndeadline_ms = 1000\nmemory_mb = 64\noutput_kb = 4096\n",
            crate::plugin::api_version::of_sdk(plugin_kind)
        ),
    )?;
    std::fs::write(root.join("src/lib.rs"), body)?;
    println!(
        "Created {}. Build it with\n  cd {} && cargo build --release --target wasm32-wasip2\nthen try it with\n  tributary plugin test {} records.jsonl",
        root.display(),
        root.display(),
        root.display()
    );
    Ok(())
}

const VALIDATOR_TEMPLATE: &str = r#"//! A validator: a verdict for each record of a contribution.

use serde::Deserialize;
use tributary_sdk::validator::{Record, Validator, Verdict};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub min_chars: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { min_chars: 1 }
    }
}

pub struct Plugin;

impl Validator for Plugin {
    type Config = Config;

    fn check(config: &Config, record: &Record) -> Verdict {
        let chars = record.text().chars().count();
        if chars < config.min_chars {
            Verdict::reject(format!("{chars} characters, fewer than {}", config.min_chars))
        } else {
            Verdict::accept(1.0)
        }
    }
}

tributary_sdk::export_validator!(Plugin);
"#;

const REWARD_TEMPLATE: &str = r#"//! A reward policy: split a completion's contributor pool.

use serde::Deserialize;
use tributary_sdk::reward::{split_proportionally, Request, RewardPolicy};

#[derive(Deserialize, Default)]
pub struct Config {}

pub struct Plugin;

impl RewardPolicy for Plugin {
    type Config = Config;

    fn distribute(_: &Config, request: &Request) -> Result<Vec<(String, u128)>, String> {
        let weights: Vec<f64> = request.entries.iter().map(|e| e.score).collect();
        let shares = split_proportionally(request.pool.amount, &weights);
        let mut payouts: Vec<(String, u128)> =
            request.entries.iter().map(|e| e.contributor.clone()).zip(shares).collect();
        let paid: u128 = payouts.iter().map(|(_, u)| u).sum();
        payouts.push((request.pool.fallback.clone(), request.pool.amount - paid));
        Ok(payouts)
    }
}

tributary_sdk::export_reward_policy!(Plugin);
"#;

const LEDGER_TEMPLATE: &str = r#"//! A ledger adapter: record a closed epoch somewhere others can check.

use serde::Deserialize;
use tributary_sdk::ledger::{LedgerAdapter, Receipt, Settlement};

#[derive(Deserialize, Default)]
pub struct Config {}

pub struct Plugin;

impl LedgerAdapter for Plugin {
    type Config = Config;

    fn settle(_: &Config, settlement: &Settlement) -> Result<Receipt, String> {
        Ok(Receipt {
            ledger: "example".into(),
            reference: settlement.payout_root.clone(),
            details: "{}".into(),
        })
    }

    fn verify(_: &Config, settlement: &Settlement, receipt: &Receipt) -> Result<bool, String> {
        Ok(receipt.reference == settlement.payout_root)
    }
}

tributary_sdk::export_ledger_adapter!(Plugin);
"#;
