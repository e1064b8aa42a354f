//! `tributary serve --demo`: a Datanet with a contributor, a reviewed batch and a published
//! version, so a new user has something real to query at once.

use std::io::Cursor;

use anyhow::{Context, Result};

use super::ServeArgs;
use crate::api::admin_token_path;
use crate::datanet::contribute::Contribution;
use crate::datanet::ingest::{Input, InputFormat};
use crate::datanet::service::Datanets;
use crate::datanet::DatanetSpec;
use crate::identity::Key;

const SPEC: &str = include_str!("../../../examples/quickstart/datanet.json");
const RECORDS: &str = include_str!("../../../examples/quickstart/tips.jsonl");

pub fn seed(datanets: &Datanets, args: &ServeArgs) -> Result<()> {
    let mut spec: DatanetSpec = serde_json::from_str(SPEC).context("the demo spec")?;
    spec.id = "demo-kitchen-tips".into();
    spec.name = "Kitchen tips (demo)".into();
    let id = spec.id.clone();
    if datanets.find(&id)?.is_none() {
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
         The README's walkthrough goes on from there.\n",
        token = token.display()
    );
    Ok(())
}
