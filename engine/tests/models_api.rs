//! The Model Factory through the real server: a curator trains a decoder on a published
//! version as a job whose server-sent events carry loss, speed and ETA; its card is in the
//! registry with the hashes of its files. A bad request names its field; a cancelled job
//! leaves no model; after a crash, the job that was running is failed with the reason and the
//! one still queued runs. Where SmolLM2 is installed, a LoRA adapter is trained over it.

mod common;

use std::time::{Duration, Instant};

use common::{published, Server};
use serde_json::{json, Value};

/// The model cards `GET /v1/models` lists (OpenAI's list object; GGUF bases have none).
fn cards(http: &reqwest::blocking::Client, server: &Server, token: &str) -> Vec<Value> {
    let listed: Value = http
        .get(format!("{}/v1/models", server.url))
        .bearer_auth(token)
        .send()
        .expect("send")
        .json()
        .expect("list");
    assert_eq!(listed["object"], "list", "{listed}");
    listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|m| !m["card"].is_null())
        .map(|m| m["card"].clone())
        .collect()
}

fn post(server: &Server, token: &str, body: &Value) -> reqwest::blocking::Response {
    server
        .http()
        .post(format!("{}/v1/models", server.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .expect("send")
}

fn job(server: &Server, token: &str, id: &str) -> Value {
    server
        .http()
        .get(format!("{}/v1/jobs/{id}", server.url))
        .bearer_auth(token)
        .send()
        .expect("send")
        .json()
        .expect("status")
}

fn wait_for(server: &Server, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let status = job(server, token, id);
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "job {id} is still {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finished(s: &Value) -> bool {
    matches!(
        s["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

fn small(extra: Value) -> Value {
    let mut body = json!({
        "datanet": "kitchen-tips", "version": 1, "steps": 30, "seq_len": 16,
        "batch_size": 4, "lr": 0.01, "hidden": 32, "heads": 2, "seed": 3,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

#[test]
fn train_watch_list_and_cancel_models_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    let (curator, _) = published(&server, dir.path());
    let http = server.http();
    let reader = server.token("rita", "reader", &[]);

    for (body, field) in [
        (small(json!({"hidden": 30})), "hidden"),
        (small(json!({"version": 9})), "version"),
        (small(json!({"r": 4})), "r"),
        (small(json!({"base": "no-such-base"})), "base"),
        (small(json!({"prompt_field": "tip"})), "response_field"),
        (small(json!({"tokenizer": "words"})), "tokenizer"),
        (small(json!({"steps": 0})), "steps"),
        (
            small(json!({"batch_size": 1024, "seq_len": 4096})),
            "batch_size",
        ),
        (
            small(json!({"batch_size": 64, "seq_len": 2048, "heads": 64, "hidden": 128})),
            "seq_len",
        ),
        (
            small(json!({"hidden": 8192, "heads": 64, "layers": 64})),
            "hidden",
        ),
    ] {
        let refused = post(&server, &curator, &body);
        assert_eq!(refused.status(), 400, "{body}");
        assert!(refused.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("application/problem+json"));
        let problem: Value = refused.json().expect("problem");
        assert_eq!(problem["field"], field, "{problem}");
    }
    assert_eq!(post(&server, &reader, &small(json!({}))).status(), 403);

    // Train: 202, a job at the Location, progress events with the loss, the speed and an ETA.
    let accepted = post(&server, &curator, &small(json!({"name": "tips-tiny"})));
    assert_eq!(accepted.status(), 202);
    let location = accepted.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let stream = http
        .get(format!("{}{location}", server.url))
        .bearer_auth(&curator)
        .header("Accept", "text/event-stream")
        .send()
        .expect("send")
        .text()
        .expect("events");
    let events = common::events(&stream);
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "done");
    assert_eq!(done["state"], "succeeded", "{done}");
    let training: Vec<&Value> = events
        .iter()
        .filter(|(_, s)| s["stage"] == "training")
        .map(|(_, s)| &s["detail"])
        .collect();
    assert!(!training.is_empty(), "{stream}");
    for d in &training {
        assert!(d["loss"].as_f64().is_some() && d["tokens_per_second"].as_f64().is_some());
        assert!(d["eta_seconds"].as_f64().is_some(), "{d}");
    }
    let card = done["result"].clone();
    let id = card["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("m-"));
    assert_eq!(card["name"], "tips-tiny");
    assert_eq!(card["kind"], "scratch");
    assert_eq!(card["datanet"], "kitchen-tips");
    assert_eq!(card["metrics"]["steps"], 30);
    assert_eq!(card["hyperparameters"]["seq_len"], 16);
    assert_eq!(card["config"]["hidden_size"], 32);
    let model_dir = server.data_dir.join("models").join(&id);
    let weights = std::fs::read(model_dir.join("model.safetensors")).expect("weights");
    assert_eq!(
        card["hashes"]["weights"],
        blake3::hash(&weights).to_hex().as_str()
    );
    assert!(card["files"]
        .as_array()
        .expect("files")
        .contains(&json!("config.json")));

    let listed = cards(&http, &server, &reader);
    assert_eq!(listed, vec![card.clone()]);
    let got: Value = http
        .get(format!("{}/v1/models/{id}", server.url))
        .bearer_auth(&reader)
        .send()
        .expect("send")
        .json()
        .expect("card");
    assert_eq!(got, card);
    let missing = http
        .get(format!("{}/v1/models/m-nope", server.url))
        .bearer_auth(&reader)
        .send()
        .expect("send");
    assert_eq!(missing.status(), 404);

    // Cancel a long run once it trains: it ends cancelled, and no model is filed.
    let long = post(
        &server,
        &curator,
        &small(json!({"steps": 1_000_000, "seed": 4})),
    );
    let long: Value = long.json().expect("status");
    let long_id = long["id"].as_str().expect("id").to_string();
    wait_for(&server, &curator, &long_id, |s| s["stage"] == "training");
    let cancel_url = format!("{}/v1/jobs/{long_id}/cancel", server.url);
    assert_eq!(
        http.post(&cancel_url)
            .bearer_auth(&reader)
            .send()
            .expect("send")
            .status(),
        403
    );
    let cancelled = http
        .post(&cancel_url)
        .bearer_auth(&curator)
        .send()
        .expect("send");
    assert_eq!(cancelled.status(), 202);
    let ended = wait_for(&server, &curator, &long_id, finished);
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert_eq!(
        http.post(&cancel_url)
            .bearer_auth(&curator)
            .send()
            .expect("send")
            .status(),
        409
    );
    let listed = cards(&http, &server, &curator);
    assert_eq!(listed.len(), 1, "a cancelled run files no model");
    let staged: Vec<_> = std::fs::read_dir(server.data_dir.join("models/.staging"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "{staged:?}");
}

#[test]
fn a_restart_fails_the_running_job_and_runs_the_queued_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let (curator, _) = published(&server, dir.path());
    let running: Value = post(&server, &curator, &small(json!({"steps": 1_000_000})))
        .json()
        .expect("status");
    let queued: Value = post(&server, &curator, &small(json!({"seed": 11})))
        .json()
        .expect("status");
    let (running, queued) = (
        running["id"].as_str().expect("id").to_string(),
        queued["id"].as_str().expect("id").to_string(),
    );
    wait_for(&server, &curator, &running, |s| s["stage"] == "training");
    assert_eq!(job(&server, &curator, &queued)["state"], "queued");
    server.kill();
    assert!(
        data.join("models/.staging").join(&running).exists(),
        "the killed run left its staging directory"
    );

    let server = Server::start(&data);
    let failed = job(&server, &curator, &running);
    assert_eq!(failed["state"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .expect("error")
            .contains("the server stopped while the job was running"),
        "{failed}"
    );
    assert!(!data.join("models/.staging").join(&running).exists());
    let resumed = wait_for(&server, &curator, &queued, finished);
    assert_eq!(resumed["state"], "succeeded", "{resumed}");
    let id = resumed["result"]["id"].as_str().expect("id");
    assert!(data
        .join("models")
        .join(id)
        .join("model.safetensors")
        .exists());
}

#[test]
fn a_lora_adapter_over_smollm2_through_the_api() {
    let Some(gguf) = common::smollm2("a_lora_adapter_over_smollm2_through_the_api") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bases = gguf.parent().expect("folder").to_str().expect("utf8");
    let server = Server::start_with(&dir.path().join("data"), &["--bases-dir", bases]);
    let (curator, _) = published(&server, dir.path());
    let body = json!({
        "datanet": "kitchen-tips", "version": 1, "base": "SmolLM2-135M-Instruct.Q4_1",
        "steps": 2, "seq_len": 16, "batch_size": 1, "r": 4, "alpha": 8,
        "targets": ["q_proj", "v_proj"],
    });
    let accepted = post(&server, &curator, &body);
    assert_eq!(accepted.status(), 202);
    let status: Value = accepted.json().expect("status");
    let done = wait_for(
        &server,
        &curator,
        status["id"].as_str().expect("id"),
        finished,
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    let card = &done["result"];
    assert_eq!(card["kind"], "lora");
    assert_eq!(card["base"]["name"], "Smollm2 135M 8k Lc100K Mix1 Ep2");
    assert_eq!(
        card["base"]["weights_hash"],
        blake3::hash(&std::fs::read(&gguf).expect("gguf"))
            .to_hex()
            .as_str()
    );
    assert_eq!(
        card["hyperparameters"]["target_modules"],
        json!(["q_proj", "v_proj"])
    );
    let files = card["files"].as_array().expect("files");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    ] {
        assert!(files.contains(&json!(f)), "{f}: {files:?}");
    }
}
