//! Span attribution through the real server: a published version of the quickstart Datanet
//! is indexed, a text that quotes two of its tips is attributed, and the record is fetched,
//! verified against the pinned index, and proven in its epoch's Merkle root. The CLI builds
//! the same index from the version's Parquet export, with the same name.

mod common;

use common::{published, stderr, Server};
use serde_json::{json, Value};
use tributary::datanet::parse_hex32;
use tributary::merkle;

#[test]
fn attribute_verify_and_prove_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    let (curator, address) = published(&server, dir.path());
    let http = server.http();
    let admin = server.admin_token();

    // Only a curator of the Datanet may build its index; a bad tokenizer names the field.
    let url = format!("{}/v1/datanets/kitchen-tips/versions/1/indexes", server.url);
    let anonymous = http.post(&url).json(&json!({})).send().expect("send");
    assert_eq!(anonymous.status(), 401);
    let bad = http
        .post(&url)
        .bearer_auth(&curator)
        .json(&json!({"tokenizer": "words"}))
        .send()
        .expect("send");
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().expect("problem");
    assert_eq!(problem["field"], "tokenizer");
    let missing_version = http
        .post(format!(
            "{}/v1/datanets/kitchen-tips/versions/9/indexes",
            server.url
        ))
        .bearer_auth(&curator)
        .json(&json!({}))
        .send()
        .expect("send");
    assert_eq!(missing_version.status(), 404);
    // The build is a job; its events say how far it got, and the last one carries the index.
    let started = http
        .post(&url)
        .bearer_auth(&curator)
        .json(&json!({"tokenizer": "bytes"}))
        .send()
        .expect("send");
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let job: Value = started.json().expect("job");
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().expect("id"))
    );
    let stream = http
        .get(format!("{}{location}", server.url))
        .bearer_auth(&curator)
        .header("Accept", "text/event-stream")
        .send()
        .expect("send");
    assert!(stream.headers()["content-type"]
        .to_str()
        .expect("type")
        .starts_with("text/event-stream"));
    let body = stream.text().expect("events");
    let events = common::events(&body);
    let (last, done) = events.last().expect("an event");
    assert_eq!(last, "done", "{body}");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(events[..events.len() - 1]
        .iter()
        .all(|(n, _)| n == "progress"));
    let status: Value = http
        .get(format!("{}{location}", server.url))
        .bearer_auth(&curator)
        .send()
        .expect("send")
        .json()
        .expect("status");
    assert_eq!(status, *done);
    let meta = done["result"].clone();
    let hash = meta["hash"].as_str().expect("hash").to_string();
    assert_eq!(meta["datanet"], "kitchen-tips");
    assert_eq!(meta["records"], 6);
    let listed: Vec<Value> = http
        .get(format!(
            "{}/v1/indexes?datanet=kitchen-tips&version=1",
            server.url
        ))
        .bearer_auth(&curator)
        .send()
        .expect("send")
        .json()
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["hash"], hash.as_str());

    // A query counts an n-gram, says which records hold it, and what follows.
    let queried = http
        .post(format!("{}/v1/indexes/{hash}/query", server.url))
        .bearer_auth(&curator)
        .json(&json!({"text": "pasta water", "limit": 1}))
        .send()
        .expect("send");
    assert_eq!(queried.status(), 200);
    let queried: Value = queried.json().expect("query");
    assert_eq!(queried["count"], 2, "two tips speak of pasta water");
    assert_eq!(
        queried["occurrences"].as_array().expect("list").len(),
        1,
        "the limit holds"
    );
    assert_eq!(queried["occurrences"][0]["contributor"], address.as_str());
    assert_eq!(queried["next"]["tokens"][0], json!([u32::from(b' '), 2]));

    // An output quoting two tips, between words of its own.
    let text = "My advice: salt pasta water until it tastes like a mild broth, and also \
                toast whole spices in a dry pan until fragrant. Enjoy!";
    let attribute = format!("{}/v1/indexes/{hash}/attribute", server.url);
    let response = http
        .post(&attribute)
        .bearer_auth(&curator)
        .json(&json!({"request_id": "inference-1", "text": text, "min_len": 12}))
        .send()
        .expect("send");
    assert_eq!(response.status(), 201);
    let stored: Value = response.json().expect("attribution");
    let record = &stored["attribution"];
    let id = record["id"].as_str().expect("id").to_string();
    assert_eq!(record["request_id"], "inference-1");
    assert_eq!(record["index"], hash.as_str());
    assert_eq!(record["method"], "span");
    let spans = record["spans"].as_array().expect("spans");
    assert!(spans.len() >= 2, "{record}");
    let records = record["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "two tips were quoted: {record}");
    let total: u64 = records
        .iter()
        .map(|r| r["score"].as_u64().expect("score"))
        .sum();
    assert_eq!(total, record["score_unit"].as_u64().expect("unit"));
    assert_eq!(record["contributors"][0]["contributor"], address.as_str());
    assert_eq!(record["contributors"][0]["score"], record["score_unit"]);

    // The same request id is the same record; reused for another text, it is refused.
    let again: Value = http
        .post(&attribute)
        .bearer_auth(&curator)
        .json(&json!({"request_id": "inference-1", "text": text, "min_len": 12}))
        .send()
        .expect("send")
        .json()
        .expect("again");
    assert_eq!(again["attribution"]["id"], id.as_str());
    let reused = http
        .post(&attribute)
        .bearer_auth(&curator)
        .json(&json!({"request_id": "inference-1", "text": "something else entirely"}))
        .send()
        .expect("send");
    assert_eq!(reused.status(), 400);
    let unknown = http
        .post(&attribute)
        .bearer_auth(&curator)
        .json(&json!({"text": text, "temperature": 1}))
        .send()
        .expect("send");
    assert_eq!(unknown.status(), 400, "unknown fields are refused");
    let missing = http
        .post(format!(
            "{}/v1/indexes/{}/attribute",
            server.url,
            "0".repeat(64)
        ))
        .bearer_auth(&curator)
        .json(&json!({"text": text}))
        .send()
        .expect("send");
    assert_eq!(missing.status(), 404);

    let nobody = http
        .get(format!(
            "{}/v1/attributions/0x{}",
            server.url,
            "ab".repeat(32)
        ))
        .bearer_auth(&curator)
        .send()
        .expect("send");
    assert_eq!(nobody.status(), 404);

    // Fetched, it is what was filed; verified, it recomputes to the same id.
    let fetched: Value = http
        .get(format!("{}/v1/attributions/{id}", server.url))
        .bearer_auth(&curator)
        .send()
        .expect("send")
        .json()
        .expect("fetched");
    assert_eq!(fetched["attribution"], *record);
    let verified: Value = http
        .post(format!("{}/v1/attributions/{id}/verify", server.url))
        .bearer_auth(&curator)
        .send()
        .expect("send")
        .json()
        .expect("verified");
    assert_eq!(verified["matches"], true, "{verified}");
    assert_eq!(verified["index_verified"], true);
    assert_eq!(verified["recomputed"], id.as_str());

    // No proof while the epoch is open; closing it is for the admin; then the proof checks.
    let early = http
        .get(format!("{}/v1/attributions/{id}/proof", server.url))
        .bearer_auth(&curator)
        .send()
        .expect("send");
    assert_eq!(early.status(), 400);
    let close = format!("{}/v1/epochs/close", server.url);
    assert_eq!(
        http.post(&close)
            .bearer_auth(&curator)
            .send()
            .expect("send")
            .status(),
        403
    );
    let closed: Value = http
        .post(&close)
        .bearer_auth(&admin)
        .send()
        .expect("send")
        .json()
        .expect("closed");
    assert_eq!(closed["epoch"], 0);
    assert_eq!(closed["attributions"], 1);
    let proof: Value = http
        .get(format!("{}/v1/attributions/{id}/proof", server.url))
        .bearer_auth(&curator)
        .send()
        .expect("send")
        .json()
        .expect("proof");
    let hex = |v: &Value| {
        parse_hex32(v.as_str().expect("hex").trim_start_matches("0x")).expect("32 bytes")
    };
    let digest = hex(&json!(id));
    let leaf = merkle::leaf_bytes32(&digest);
    assert_eq!(hex(&proof["leaf"]), leaf);
    let path: Vec<merkle::Hash> = proof["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(hex)
        .collect();
    assert!(merkle::verify(&hex(&proof["root"]), &leaf, &path));
    assert_eq!(proof["root"], closed["root"]);

    // The CLI builds the same index from the version's export: same contents, same name.
    let export = dir.path().join("v1.parquet");
    let out = server.cli(
        Some(&curator),
        &[
            "versions",
            "export",
            "kitchen-tips",
            "1",
            "--out",
            export.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let local = dir.path().join("indexes");
    let built = server.cli_json(
        None,
        &[
            "index",
            "build",
            "--parquet",
            export.to_str().expect("utf8"),
            "--out",
            local.to_str().expect("utf8"),
            "--datanet",
            "kitchen-tips",
            "--version",
            "1",
        ],
    );
    assert_eq!(built["hash"], hash.as_str());
    let traced = server.cli_json(
        None,
        &[
            "attribute",
            "--index",
            local.join(&hash).to_str().expect("utf8"),
            "--text",
            text,
            "--min-len",
            "12",
        ],
    );
    assert_eq!(traced["records"].as_array().expect("records").len(), 2);
    let bad = server.cli(
        None,
        &[
            "attribute",
            "--index",
            local.join("nope").to_str().expect("utf8"),
            "--text",
            "x",
        ],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("does not exist"), "{}", stderr(&bad));
}
