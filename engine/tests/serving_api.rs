//! Serving through the real server: a small model trained on a Datanet of kitchen tips
//! completes the start of each tip with the rest of it, and the attribution credits that
//! tip's record and contributor; streaming gives the same text as a whole answer; bad
//! requests name their field; an attribution skipped at request time is made later; LoRA
//! adapters load within the rank limit and byte budget, serve beside the base and unload.

mod common;

use common::{published_with, start_job, tips_model, Server};
use serde_json::{json, Value};

fn post(server: &Server, token: &str, path: &str, body: &Value) -> reqwest::blocking::Response {
    server
        .http()
        .post(format!("{}{path}", server.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .expect("send")
}

fn ok(r: reqwest::blocking::Response) -> Value {
    let status = r.status();
    let body = r.text().expect("body");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// The `data:` lines of a stream, up to `[DONE]`.
fn chunks(body: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return out;
        }
        out.push(serde_json::from_str(data).expect("chunk"));
    }
    panic!("the stream did not end with [DONE]: {body}");
}

fn refused(r: reqwest::blocking::Response, status: u16, field: &str) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().expect("type"),
        "application/problem+json"
    );
    let p: Value = r.json().expect("problem");
    assert_eq!(p["field"], field, "{p}");
    p
}

/// As [`refused`], on an OpenAI route: the problem also carries the `error` object OpenAI's
/// clients read.
fn refused_openai(r: reqwest::blocking::Response, status: u16, field: &str) {
    let p = refused(r, status, field);
    assert!(
        p["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{p}"
    );
    assert_eq!(p["error"]["param"], field, "{p}");
}

#[test]
fn a_trained_model_answers_with_its_training_text_and_credits_its_contributor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--max-rank", "4", "--adapter-budget", "6000"],
    );
    let tips = common::TIPS;
    assert!(tips.iter().all(|t| t.len() == 33));
    let file = dir.path().join("tips.jsonl");
    let rows: String = tips
        .iter()
        .map(|t| format!("{}\n", json!({"text": t})))
        .collect();
    std::fs::write(&file, rows).expect("tips");
    let (curator, contributor) = published_with(&server, dir.path(), &file);
    let reader = server.token("rita", "reader", &[]);
    let admin = server.admin_token();
    let model = tips_model(&server, &curator);

    // The start of a tip is completed with the rest of it, and the attribution credits that
    // tip and the contributor who sent it. One window is held out of training, so one tip
    // may not be learned.
    let mut reproduced = 0;
    let mut first = None;
    for (row, tip) in tips.iter().enumerate() {
        let (prompt, rest) = tip.split_at(14);
        let answer = ok(post(
            &server,
            &reader,
            "/v1/completions",
            &json!({"model": model, "prompt": prompt, "max_tokens": 40, "temperature": 0}),
        ));
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(answer["usage"]["prompt_tokens"], prompt.len());
        let text = answer["choices"][0]["text"].as_str().expect("text");
        if text != rest {
            continue;
        }
        reproduced += 1;
        assert_eq!(
            answer["choices"][0]["finish_reason"], "stop",
            "the tip ends: {answer}"
        );
        let attribution = &answer["attribution"];
        assert_eq!(attribution["status"], "complete", "{attribution}");
        let part = &attribution["parts"][0];
        assert_eq!(part["part"], "base");
        assert_eq!(part["datanet"], "kitchen-tips");
        let top = part["records"][0]["record_id"]
            .as_str()
            .expect("top record");
        let record = ok(server
            .http()
            .get(format!(
                "{}/v1/datanets/kitchen-tips/records/{top}",
                server.url
            ))
            .bearer_auth(&curator)
            .send()
            .expect("send"));
        // The record is the tip's row of the batch the contributor sent.
        assert_eq!(record["row"], row, "{tip}: {record}");
        assert_eq!(
            part["contributors"][0]["contributor"]
                .as_str()
                .map(str::to_lowercase),
            Some(contributor.to_lowercase())
        );
        first.get_or_insert((prompt, top.to_string(), part["record"].clone()));
    }
    assert!(
        reproduced >= tips.len() - 2,
        "{reproduced} of {} tips reproduced",
        tips.len()
    );
    let (prompt, top, record_id) = first.expect("a reproduced tip");
    let record_id = record_id.as_str().expect("record id");
    let stored = ok(server
        .http()
        .get(format!("{}/v1/attributions/{record_id}", server.url))
        .bearer_auth(&reader)
        .send()
        .expect("send"));
    assert_eq!(stored["attribution"]["id"], record_id);

    // A stop sequence ends the answer before it.
    let stopped = ok(post(
        &server,
        &reader,
        "/v1/completions",
        &json!({"model": model, "prompt": prompt, "max_tokens": 40, "temperature": 0,
                "stop": ["e", "zz"]}),
    ));
    let text = stopped["choices"][0]["text"].as_str().expect("text");
    assert!(!text.contains('e'), "{stopped}");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

    // Streamed, the same seeded request gives the same text, then the attribution.
    let sampled = json!({"model": model, "prompt": "Toast cumin", "max_tokens": 24,
                         "temperature": 0.8, "seed": 42});
    let whole = ok(post(&server, &reader, "/v1/completions", &sampled));
    let mut streaming = sampled.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let body = post(&server, &reader, "/v1/completions", &streaming)
        .text()
        .expect("stream");
    let parts = chunks(&body);
    let streamed: String = parts
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(
        streamed,
        whole["choices"][0]["text"].as_str().expect("text")
    );
    let last = parts.last().expect("last chunk");
    assert_eq!(last["attribution"]["status"], "complete", "{last}");
    assert_eq!(
        last["usage"]["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );

    // Chat: the model's chat template, OpenAI's chat shapes.
    let chat = ok(post(
        &server,
        &reader,
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "Salt pasta water"}],
                "max_tokens": 8, "temperature": 0}),
    ));
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert!(chat["usage"]["completion_tokens"]
        .as_u64()
        .is_some_and(|n| (1..=8).contains(&n)));

    // Bad requests name their field.
    refused_openai(
        post(
            &server,
            &reader,
            "/v1/completions",
            &json!({"model": "no-such", "prompt": "x"}),
        ),
        404,
        "model",
    );
    refused_openai(
        post(
            &server,
            &reader,
            "/v1/completions",
            &json!({"model": model, "prompt": "x", "max_tokens": 5000}),
        ),
        400,
        "max_tokens",
    );
    refused_openai(
        post(
            &server,
            &reader,
            "/v1/completions",
            &json!({"model": model, "prompt": "x", "temperature": 3}),
        ),
        400,
        "temperature",
    );
    refused_openai(
        post(
            &server,
            &reader,
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "robot", "content": "x"}]}),
        ),
        400,
        "messages[0].role",
    );
    refused_openai(
        post(
            &server,
            &reader,
            "/v1/completions",
            &json!({"model": model, "prompt": "x".repeat(3000)}),
        ),
        400,
        "prompt",
    );

    // Attribution skipped at request time is made on request, once.
    let quick = ok(post(
        &server,
        &reader,
        "/v1/completions",
        &json!({"model": model, "prompt": prompt, "max_tokens": 20, "temperature": 0,
                "attribution": false}),
    ));
    assert_eq!(quick["attribution"]["status"], "deferred");
    assert!(quick["attribution"]["parts"][0]["record"].is_null());
    let url = format!(
        "{}/v1/completions/{}/attribution",
        server.url,
        quick["id"].as_str().expect("id")
    );
    let later = ok(server
        .http()
        .get(&url)
        .bearer_auth(&reader)
        .send()
        .expect("send"));
    assert_eq!(later["status"], "complete");
    assert_eq!(later["parts"][0]["records"][0]["record_id"], top);
    let again = ok(server
        .http()
        .get(&url)
        .bearer_auth(&reader)
        .send()
        .expect("send"));
    assert_eq!(again["parts"][0]["record"], later["parts"][0]["record"]);
    let other = server.token("otto", "reader", &[]);
    assert_eq!(
        server
            .http()
            .get(&url)
            .bearer_auth(&other)
            .send()
            .expect("send")
            .status(),
        404,
        "someone else's completion"
    );

    // Adapters: trained on the model, loaded within the limits, served beside the base.
    let lora = |r: usize| {
        start_job(
            &server,
            &curator,
            "/v1/models",
            &json!({"datanet": "kitchen-tips", "version": 1, "base": model, "r": r,
                    "steps": 3, "seq_len": 16, "batch_size": 2, "seed": r}),
        )["result"]["id"]
            .as_str()
            .expect("adapter id")
            .to_string()
    };
    let (small, large) = (lora(2), lora(8));
    assert_eq!(
        post(
            &server,
            &reader,
            "/v1/adapters",
            &json!({"base": model, "name": small})
        )
        .status(),
        403,
        "only admins load adapters"
    );
    refused(
        post(
            &server,
            &admin,
            "/v1/adapters",
            &json!({"base": model, "name": large}),
        ),
        400,
        "rank",
    );
    let loaded = ok(post(
        &server,
        &admin,
        "/v1/adapters",
        &json!({"base": model, "name": small, "pin": true}),
    ));
    // Rank 2 on q_proj and v_proj (64 wide), two layers: 2 · 2 · (2·64 + 64·2) floats.
    assert_eq!(loaded["bytes"], 4096);
    let copy = server.data_dir.join("models").join(&small);
    refused(
        post(
            &server,
            &admin,
            "/v1/adapters",
            &json!({"base": model, "name": "copy", "path": copy}),
        ),
        409,
        "budget",
    );
    let served = ok(post(
        &server,
        &reader,
        "/v1/completions",
        &json!({"model": format!("{model}:{small}"), "prompt": prompt, "max_tokens": 8,
                "temperature": 0}),
    ));
    let parts = served["attribution"]["parts"].as_array().expect("parts");
    assert_eq!(
        parts.iter().map(|p| p["part"].clone()).collect::<Vec<_>>(),
        vec![json!("base"), json!("adapter")]
    );
    let listed = ok(server
        .http()
        .get(format!("{}/v1/models", server.url))
        .bearer_auth(&reader)
        .send()
        .expect("send"));
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&model.as_str()), "{ids:?}");
    assert!(
        ids.contains(&format!("{model}:{small}").as_str()),
        "{ids:?}"
    );
    let unload = server
        .http()
        .delete(format!("{}/v1/adapters/{small}", server.url))
        .bearer_auth(&admin)
        .send()
        .expect("send");
    assert_eq!(unload.status(), 200);
    // With the pinned one gone, the copy fits.
    ok(post(
        &server,
        &admin,
        "/v1/adapters",
        &json!({"base": model, "name": "copy", "path": copy}),
    ));
}
