//! Kill the real server with SIGKILL at random points while contributions stream in, restart
//! it, and check that every acknowledged batch is there, whole, and that nothing
//! unacknowledged is half-visible.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{example_spec, Server};
use parquet::file::reader::{FileReader, SerializedFileReader};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tributary::datanet::ingest::{Input, InputFormat};
use tributary::{Datanet, Datanets, Key};

const ROUNDS: usize = 24;
const ROWS_PER_BATCH: usize = 3000;

fn batch_body(round: usize, seq: usize) -> Vec<u8> {
    let mut body = String::new();
    for row in 0..ROWS_PER_BATCH {
        body.push_str(&format!(
            "{{\"text\": \"round {round} batch {seq} row {row}: a tip about simmering stock slowly\", \"difficulty\": {row}}}\n"
        ));
    }
    body.into_bytes()
}

fn segment_rows(server: &Server, batch: &Value) -> Option<i64> {
    let rel = batch["segment"].as_str()?;
    let file = File::open(server.data_dir.join(rel)).expect("an acknowledged segment exists");
    let reader = SerializedFileReader::new(file).expect("the segment is whole Parquet");
    Some(reader.metadata().file_metadata().num_rows())
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let key = Key::generate();
    let mut spec = example_spec();
    spec["review"] = "auto".into();
    let datanet: Datanet = {
        let server = Server::start(&data);
        serde_json::from_value(server.create_datanet(&spec)).expect("datanet")
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7219_b07a);
    // batch id -> record count, for every batch the server acknowledged.
    let mut acknowledged: HashMap<u64, u64> = HashMap::new();
    let mut kills_mid_request = 0;
    for round in 0..ROUNDS {
        // Odd rounds load each batch's index through an SST file after the batch's commit,
        // so a kill can land between the two.
        let bulk: &[&str] = if round % 2 == 1 {
            &["--bulk-index-min", "1000"]
        } else {
            &[]
        };
        let mut server = Server::start_with(&data, bulk);
        let token = server.admin_token();
        let url = format!(
            "{}/v1/datanets/kitchen-tips/contributions?format=jsonl",
            server.url
        );
        let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let in_flight = Arc::new(AtomicBool::new(false));
        let uploader = {
            let acked = acked.clone();
            let in_flight = in_flight.clone();
            let datanet = datanet.clone();
            let key = Key::from_hex(&key.to_hex()).expect("key");
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                for seq in 0.. {
                    let body = batch_body(round, seq);
                    let commitment = Datanets::commitment(
                        &datanet,
                        InputFormat::Jsonl,
                        Input::Stream(Box::new(std::io::Cursor::new(body.clone()))),
                    )
                    .expect("commitment");
                    let signature = key.sign_personal(&commitment.root);
                    in_flight.store(true, Ordering::SeqCst);
                    let response = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("X-Tributary-Contributor", key.address().to_string())
                        .header("X-Tributary-Signature", signature.to_hex())
                        .body(body)
                        .send();
                    in_flight.store(false, Ordering::SeqCst);
                    let Ok(response) = response else { return };
                    if response.status() != 201 {
                        let status = response.status();
                        let body = response.text().unwrap_or_default();
                        panic!("round {round}: upload refused with {status}: {body}");
                    }
                    let Ok(batch) = response.json::<Value>() else {
                        return;
                    };
                    let id = batch["id"].as_u64().expect("id");
                    assert_eq!(batch["accepted"], ROWS_PER_BATCH as u64, "fresh records");
                    acked
                        .lock()
                        .expect("lock")
                        .push((id, ROWS_PER_BATCH as u64));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..600)));
        if in_flight.load(Ordering::SeqCst) {
            kills_mid_request += 1;
        }
        server.kill();
        uploader.join().expect("uploader");
        acknowledged.extend(acked.lock().expect("lock").iter().copied());

        // Restart and check.
        let server = Server::start(&data);
        let tmp_left: Vec<_> = std::fs::read_dir(data.join("tmp")).expect("tmp").collect();
        assert!(
            tmp_left.is_empty(),
            "round {round}: temporary files survived a restart"
        );
        let batches = server.list_batches("kitchen-tips");
        let stored: HashMap<u64, &Value> = batches
            .iter()
            .map(|b| (b["id"].as_u64().expect("id"), b))
            .collect();
        for (id, rows) in &acknowledged {
            let batch = stored
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: acknowledged batch {id} is gone"));
            assert_eq!(
                batch["accepted"].as_u64(),
                Some(*rows),
                "round {round}: batch {id}"
            );
        }
        // Every batch the server shows, acknowledged or not, is whole.
        for batch in &batches {
            assert_eq!(
                segment_rows(&server, batch),
                Some(batch["accepted"].as_i64().expect("accepted")),
                "round {round}: batch {} is not whole",
                batch["id"]
            );
        }
        let segment_files = std::fs::read_dir(data.join("segments/kitchen-tips"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(
            segment_files,
            batches.len(),
            "round {round}: orphan segments were not collected"
        );
    }
    eprintln!(
        "{} batches acknowledged over {ROUNDS} kills, {kills_mid_request} mid-request",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= ROUNDS / 2,
        "too few batches acknowledged to mean anything"
    );
    assert!(
        kills_mid_request >= ROUNDS / 3,
        "only {kills_mid_request} kills landed mid-request"
    );

    // The surviving data publishes into one consistent version.
    let server = Server::start(&data);
    let version: Value = server
        .http()
        .post(format!("{}/v1/datanets/kitchen-tips/versions", server.url))
        .bearer_auth(server.admin_token())
        .send()
        .expect("publish")
        .json()
        .expect("version");
    let batches = server.list_batches("kitchen-tips");
    let total: u64 = batches
        .iter()
        .map(|b| b["accepted"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(version["records"].as_u64(), Some(total));
}
