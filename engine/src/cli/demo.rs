//! `tributary serve --demo`: a Datanet with a contributor, a reviewed batch and a published
//! version, so a new user has something real to query at once.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result};

use super::ServeArgs;
use crate::api::admin_token_path;
use crate::attribution::service::{Attributions, TokenizerChoice};
use crate::datanet::contribute::Contribution;
use crate::datanet::ingest::{Input, InputFormat};
use crate::datanet::service::Datanets;
use crate::datanet::{DatanetSpec, ValidatorAttachment};
use crate::identity::Key;
use crate::plugin::Plugins;

const SPEC: &str = include_str!("../../../examples/quickstart/datanet.json");
const RECORDS: &str = include_str!("../../../examples/quickstart/tips.jsonl");

/// The example plugins the demo installs, and the config it attaches each with.
const DEMO_PLUGINS: &[(&str, &str, &str)] = &[
    ("text-quality", "text_quality.wasm", r#"{"min_chars": 10}"#),
    ("pii-redact", "pii_redact.wasm", "{}"),
];

/// Installs the demo's plugins from `components` and returns their attachments.
fn install_plugins(plugins: &Plugins, components: &Path) -> Result<Vec<ValidatorAttachment>> {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut attached = Vec::new();
    for (id, file, config) in DEMO_PLUGINS {
        let manifest = std::fs::read_to_string(sources.join(id).join("plugin.toml"))
            .with_context(|| format!("the {id} manifest"))?;
        let wasm = std::fs::read(components.join(file))
            .with_context(|| format!("the {id} component in {}", components.display()))?;
        plugins.install(&manifest, &wasm)?;
        attached.push(ValidatorAttachment {
            plugin: id.to_string(),
            config: serde_json::from_str(config)?,
        });
    }
    // The reward policy priced models use unless their terms name another.
    let manifest = std::fs::read_to_string(sources.join("proportional").join("plugin.toml"))
        .context("the proportional manifest")?;
    let wasm = std::fs::read(components.join("proportional.wasm"))
        .with_context(|| format!("the proportional component in {}", components.display()))?;
    plugins.install(&manifest, &wasm)?;
    Ok(attached)
}

pub fn seed(
    datanets: &Datanets,
    plugins: &Plugins,
    attributions: &Attributions,
    args: &ServeArgs,
) -> Result<()> {
    let mut spec: DatanetSpec = serde_json::from_str(SPEC).context("the demo spec")?;
    spec.id = "demo-kitchen-tips".into();
    spec.name = "Kitchen tips (demo)".into();
    let id = spec.id.clone();
    if datanets.find(&id)?.is_none() {
        if let Some(components) = &args.demo_plugins {
            spec.validators = install_plugins(plugins, components)?;
            eprintln!(
                "Demo: installed the text-quality and pii-redact plugins (every contribution to {id:?} passes them) and the proportional reward policy."
            );
        }
        let key_path = args.data_dir.join("demo-contributor.key");
        let key = Key::generate();
        crate::api::write_private(&key_path, &key.to_hex())?;
        datanets.create(spec, "admin")?;
        let input = || Input::Stream(Box::new(Cursor::new(RECORDS.as_bytes().to_vec())));
        let datanet = datanets.get(&id)?;
        let commitment = Datanets::commitment(&datanet, InputFormat::Jsonl, input())?;
        let signature = key.sign_personal(&commitment.root);
        let batch = datanets.contribute(
            &id,
            Contribution {
                format: InputFormat::Jsonl,
                contributor: key.address(),
                signature,
            },
            input(),
        )?;
        datanets.review(&id, batch.id, true, Some("demo".into()))?;
        datanets.publish(&id)?;
        eprintln!(
            "Demo: created Datanet {id:?} with {} records and published version 1.",
            batch.accepted
        );
    }
    let index = match attributions.list(Some(&id), Some(1))?.into_iter().next() {
        Some(meta) => meta,
        None => {
            let meta =
                attributions.build_version(datanets, &id, 1, &TokenizerChoice::Bytes, &|_| {})?;
            eprintln!("Demo: built the span index of version 1, {}.", meta.hash);
            meta
        }
    };
    let url = format!("http://{}", args.listen);
    let token = admin_token_path(&args.data_dir);
    eprintln!(
        "\nTry it (in another terminal):\n\
         \x20 curl -s {url}/v1/datanets/{id} | python3 -m json.tool\n\
         \x20 curl -s {url}/v1/datanets/{id}/versions/1\n\
         \x20 curl -s -o demo.parquet {url}/v1/datanets/{id}/versions/1/export\n\
         \x20 export TRIBUTARY_URL={url} TRIBUTARY_TOKEN_FILE={token}\n\
         \x20 cargo run -q -- keys new\n\
         \x20 cargo run -q -- datanets create examples/quickstart/datanet.json\n\
         \x20 cargo run -q -- contribute kitchen-tips examples/quickstart/tips.jsonl\n\
         \x20 cargo run -q -- plugin list\n\
         \x20 curl -s -X POST -H \"Authorization: Bearer $(cat {token})\" -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"text\": \"Tip: rest a steak for five minutes before slicing it.\", \"min_len\": 12}}' \\\n\
         \x20   {url}/v1/indexes/{index}/attribute | python3 -m json.tool\n\
         \x20 curl -s -X POST -H \"Authorization: Bearer $(cat {token})\" -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"datanet\": \"{id}\", \"version\": 1, \"tokenizer\": \"{index}\", \"steps\": 100, \"seq_len\": 32}}' \\\n\
         \x20   {url}/v1/models     # trains a model on version 1 as a job; then watch it:\n\
         \x20 curl -sN -H \"Authorization: Bearer $(cat {token})\" -H 'Accept: text/event-stream' {url}/v1/jobs/<job id>\n\
         \x20 curl -s -H \"Authorization: Bearer $(cat {token})\" -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"model\": \"<model id from the job>\", \"prompt\": \"Rest a steak\", \"max_tokens\": 40}}' \\\n\
         \x20   {url}/v1/completions | python3 -m json.tool   # an answer with its attribution\n\
         \x20 curl -s -X PUT -H \"Authorization: Bearer $(cat {token})\" -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"price\": {{\"input_per_1k\": \"1000000\", \"output_per_1k\": \"3000000\"}}, \"platform\": \"0x00000000000000000000000000000000000000A1\", \"owner\": \"0x00000000000000000000000000000000000000B2\"}}' \\\n\
         \x20   {url}/v1/models/<model id>/terms   # price it: later answers carry a fee, paid to their contributors\n\
         \x20 cargo run -q -- rewards account <contributor address>   # then: cargo run -q -- epochs close\n\
         The README's walkthrough goes on from there (LoRA over SmolLM2, and serving, too).\n",
        token = token.display(),
        index = index.hash
    );
    Ok(())
}
