//! The README's walkthrough, end to end through the real CLI and the real server: curator,
//! contributor and reader, review, versions, proofs, withdrawal and export.

mod common;

use std::fs::File;

use arrow::array::{Array, AsArray, RecordBatch};
use common::{example, example_spec, stderr, Server};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use tributary::datanet::parse_hex32;
use tributary::merkle;

fn read_parquet(path: &std::path::Path) -> Vec<RecordBatch> {
    let file = File::open(path).expect("open export");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    reader.map(|b| b.expect("batch")).collect()
}

fn record_ids(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let col = b
                .column_by_name("_record_id")
                .expect("_record_id")
                .as_string::<i32>();
            (0..col.len())
                .map(|i| col.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn curator_contributor_and_reader_walkthrough() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    let curator = server.token("carol", "curator", &[]);
    let key = dir.path().join("bob.key");
    let key_arg = key.to_str().expect("utf8");

    let address = server.cli(None, &["keys", "new", "--key", key_arg]);
    assert!(address.status.success(), "{}", stderr(&address));
    let address = String::from_utf8_lossy(&address.stdout).trim().to_string();
    let contributor = server.token("bob", "contributor", &["--address", &address]);
    let reader = server.token("rita", "reader", &["--datanet", "kitchen-tips"]);

    // The curator creates the Datanet; a contributor may not.
    let spec = example("datanet.json");
    let spec = spec.to_str().expect("utf8");
    let denied = server.cli(Some(&contributor), &["datanets", "create", spec]);
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("403"), "{}", stderr(&denied));
    let created = server.cli_json(Some(&curator), &["datanets", "create", spec]);
    assert_eq!(created["id"], "kitchen-tips");
    assert_eq!(created["curators"][0], "carol");

    // The contributor signs and uploads; the batch waits for review.
    let tips = example("tips.jsonl");
    let batch = server.cli_json(
        Some(&contributor),
        &[
            "contribute",
            "kitchen-tips",
            tips.to_str().expect("utf8"),
            "--key",
            key_arg,
        ],
    );
    assert_eq!(batch["id"], 1);
    assert_eq!(batch["status"], "pending");
    assert_eq!(batch["accepted"], 6);
    assert_eq!(batch["contributor"], address.as_str());

    // A contributor cannot approve, a reader cannot contribute.
    let not_curator = server.cli(
        Some(&contributor),
        &["batches", "approve", "kitchen-tips", "1"],
    );
    assert!(!not_curator.status.success() && stderr(&not_curator).contains("403"));
    let reader_contributes = server.cli(
        Some(&reader),
        &[
            "contribute",
            "kitchen-tips",
            tips.to_str().expect("utf8"),
            "--key",
            key_arg,
        ],
    );
    assert!(!reader_contributes.status.success());
    assert!(
        stderr(&reader_contributes).contains("403"),
        "{}",
        stderr(&reader_contributes)
    );

    let approved = server.cli_json(Some(&curator), &["batches", "approve", "kitchen-tips", "1"]);
    assert_eq!(approved["status"], "approved");
    let again = server.cli(Some(&curator), &["batches", "approve", "kitchen-tips", "1"]);
    assert!(stderr(&again).contains("409"), "{}", stderr(&again));

    // A CSV batch with one record already in the Datanet: stored once, reported as duplicate.
    let csv = example("more-tips.csv");
    let second = server.cli_json(
        Some(&contributor),
        &[
            "contribute",
            "kitchen-tips",
            csv.to_str().expect("utf8"),
            "--key",
            key_arg,
        ],
    );
    assert_eq!(second["accepted"], 2);
    assert_eq!(second["duplicates"], 1);
    assert_eq!(second["duplicate_examples"][0]["first_batch"], 1);
    assert_eq!(
        second["duplicate_examples"][0]["row"], 3,
        "line 3 of the CSV"
    );
    server.cli_json(Some(&curator), &["batches", "approve", "kitchen-tips", "2"]);
    let page = server.cli_json(
        None,
        &[
            "batches",
            "list",
            "kitchen-tips",
            "--after",
            "1",
            "--limit",
            "5",
        ],
    );
    assert_eq!(page.as_array().map(|p| p.len()), Some(1));
    assert_eq!(page[0]["id"], 2);

    // Bad rows: refused whole, every problem named by row and field, nothing stored.
    let bad = example("bad-tips.jsonl");
    let refused = server.cli(
        Some(&contributor),
        &[
            "contribute",
            "kitchen-tips",
            bad.to_str().expect("utf8"),
            "--key",
            key_arg,
        ],
    );
    assert!(!refused.status.success());
    let message = stderr(&refused);
    for expected in [
        "row 1, field difficulty",
        "row 2, field text",
        "row 3, field colour",
        "row 4",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected:?} in {message}"
        );
    }
    let datanet = server.cli_json(None, &["datanets", "get", "kitchen-tips"]);
    assert_eq!(datanet["batches"], 2, "a refused batch takes no number");

    // Version 1: eight records, a root, and a proof that verifies.
    let v1 = server.cli_json(Some(&curator), &["versions", "publish", "kitchen-tips"]);
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["records"], 8);
    let export1 = dir.path().join("v1.parquet");
    let out = server.cli(
        None,
        &[
            "versions",
            "export",
            "kitchen-tips",
            "1",
            "-o",
            export1.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = record_ids(&read_parquet(&export1));
    assert_eq!(ids.len(), 8);
    let proof = server.cli_json(None, &["versions", "proof", "kitchen-tips", "1", &ids[3]]);
    let root = parse_hex32(proof["root"].as_str().expect("root")).expect("hex");
    assert_eq!(proof["root"], v1["merkle_root"]);
    let siblings: Vec<[u8; 32]> = proof["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(|h| parse_hex32(h.as_str().expect("str")).expect("hex"))
        .collect();
    let record = parse_hex32(&ids[3]).expect("record id");
    assert!(merkle::verify(
        &root,
        &merkle::leaf_bytes32(&record),
        &siblings
    ));

    // The contributor withdraws a record; version 2 leaves it out, version 1 keeps it.
    let receipt = server.cli_json(
        Some(&contributor),
        &[
            "records",
            "withdraw",
            "kitchen-tips",
            &ids[0],
            "--key",
            key_arg,
        ],
    );
    assert_eq!(receipt["withdrawn"][0], ids[0].as_str());
    let info = server.cli_json(None, &["records", "get", "kitchen-tips", &ids[0]]);
    assert_eq!(info["withdrawn"], true);
    let v2 = server.cli_json(Some(&curator), &["versions", "publish", "kitchen-tips"]);
    assert_eq!(v2["records"], 7);
    assert_ne!(v2["merkle_root"], v1["merkle_root"]);
    let export2 = dir.path().join("v2.parquet");
    let out = server.cli(
        None,
        &[
            "versions",
            "export",
            "kitchen-tips",
            "2",
            "-o",
            export2.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ids2 = record_ids(&read_parquet(&export2));
    assert_eq!(ids2.len(), 7);
    assert!(!ids2.contains(&ids[0]));
    let not_in_v2 = server.cli(None, &["versions", "proof", "kitchen-tips", "2", &ids[0]]);
    assert!(stderr(&not_in_v2).contains("404"));
    // Version 1 is unchanged.
    let ids1_again = record_ids(&read_parquet(&export1));
    assert_eq!(ids1_again, ids);
    let v1_again = server.cli_json(None, &["versions", "get", "kitchen-tips", "1"]);
    assert_eq!(v1_again["merkle_root"], v1["merkle_root"]);

    // Someone else cannot withdraw bob's records.
    let mallory_key = dir.path().join("mallory.key");
    server.cli(
        None,
        &["keys", "new", "--key", mallory_key.to_str().expect("utf8")],
    );
    let mallory = server.token("mallory", "contributor", &[]);
    let stolen = server.cli(
        Some(&mallory),
        &[
            "records",
            "withdraw",
            "kitchen-tips",
            &ids[1],
            "--key",
            mallory_key.to_str().expect("utf8"),
        ],
    );
    assert!(stderr(&stolen).contains("403"), "{}", stderr(&stolen));
}

#[test]
fn private_datanets_are_hidden_without_a_token_for_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    let mut spec = example_spec();
    spec["id"] = "secret".into();
    spec["visibility"] = "private".into();
    server.create_datanet(&spec);
    let http = server.http();

    let anonymous = http
        .get(format!("{}/v1/datanets/secret", server.url))
        .send()
        .expect("get");
    assert_eq!(anonymous.status(), 404);
    let listed: Vec<Value> = http
        .get(format!("{}/v1/datanets", server.url))
        .send()
        .expect("list")
        .json()
        .expect("json");
    assert!(listed.iter().all(|d| d["id"] != "secret"));

    let outsider = server.token("olga", "reader", &["--datanet", "other"]);
    let denied = http
        .get(format!("{}/v1/datanets/secret/versions", server.url))
        .bearer_auth(&outsider)
        .send()
        .expect("get");
    assert_eq!(denied.status(), 404);
    let insider = server.token("rita", "reader", &["--datanet", "secret"]);
    let allowed = http
        .get(format!("{}/v1/datanets/secret", server.url))
        .bearer_auth(&insider)
        .send()
        .expect("get");
    assert_eq!(allowed.status(), 200);

    let bogus = http
        .get(format!("{}/v1/datanets/secret", server.url))
        .bearer_auth("trb_nope")
        .send()
        .expect("get");
    assert_eq!(bogus.status(), 401);
    assert_eq!(bogus.headers()["content-type"], "application/problem+json");
}
