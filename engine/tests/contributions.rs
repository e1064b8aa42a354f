//! Contributions through the real server: every input format, skipped and refused bad rows,
//! upload limits, and problem+json errors that name the field at fault.

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::{example, example_spec, Server};
use serde_json::{json, Value};
use tributary::datanet::ingest::{Input, InputFormat};
use tributary::{Datanet, Datanets, Key};

struct Fixture {
    _dir: tempfile::TempDir,
    server: Server,
    admin: String,
    key: Key,
}

fn fixture(changes: Value) -> (Fixture, Datanet) {
    fixture_with(changes, &[])
}

fn fixture_with(changes: Value, args: &[&str]) -> (Fixture, Datanet) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(&dir.path().join("data"), args);
    let admin = server.admin_token();
    let mut spec = example_spec();
    spec["review"] = "auto".into();
    for (k, v) in changes.as_object().expect("object") {
        spec[k] = v.clone();
    }
    let datanet = serde_json::from_value(server.create_datanet(&spec)).expect("datanet");
    (
        Fixture {
            _dir: dir,
            server,
            admin,
            key: Key::generate(),
        },
        datanet,
    )
}

impl Fixture {
    /// Signs `body` as the CLI would and uploads it.
    fn upload(&self, datanet: &Datanet, format: InputFormat, body: Vec<u8>) -> (u16, Value) {
        let input = if format.needs_seek() {
            let mut file = tempfile::tempfile().expect("tempfile");
            std::io::Write::write_all(&mut file, &body).expect("write");
            std::io::Seek::rewind(&mut file).expect("rewind");
            Input::File(file)
        } else {
            Input::Stream(Box::new(std::io::Cursor::new(body.clone())))
        };
        let root = Datanets::commitment(datanet, format, input)
            .map(|c| c.root)
            .unwrap_or([0; 32]);
        let signature = self.key.sign_personal(&root);
        let response = self
            .server
            .http()
            .post(format!(
                "{}/v1/datanets/kitchen-tips/contributions",
                self.server.url
            ))
            .bearer_auth(&self.admin)
            .header("Content-Type", format.media_type())
            .header("X-Tributary-Contributor", self.key.address().to_string())
            .header("X-Tributary-Signature", signature.to_hex())
            .body(body)
            .send()
            .expect("upload");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn datanet(&self) -> Value {
        self.server
            .http()
            .get(format!("{}/v1/datanets/kitchen-tips", self.server.url))
            .send()
            .expect("get")
            .json()
            .expect("json")
    }
}

fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
    out
}

fn arrow_batch() -> RecordBatch {
    // Columns in another order and of other widths than the schema: matched by name, cast.
    let schema = Arc::new(Schema::new(vec![
        Field::new("difficulty", DataType::Int32, true),
        Field::new("text", DataType::Utf8, true),
        Field::new("topic", DataType::LargeUtf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(arrow::array::Int32Array::from(vec![Some(1), None, Some(3)])),
        Arc::new(StringArray::from(vec![
            Some("Sear in batches."),
            Some("Rinse rice."),
            None,
        ])),
        Arc::new(arrow::array::LargeStringArray::from(vec![
            "meat", "rice", "x",
        ])),
    ];
    RecordBatch::try_new(schema, columns).expect("batch")
}

#[test]
fn parquet_and_arrow_uploads_are_read_by_name_and_bad_rows_named() {
    let (f, datanet) = fixture(json!({ "invalid_rows": "skip" }));
    let batch = arrow_batch();

    let (status, body) = f.upload(&datanet, InputFormat::Parquet, parquet_bytes(&batch));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["invalid"], 1);
    assert_eq!(
        body["errors"]["errors"][0],
        json!({"row": 3, "field": "text", "message": "required field is null"})
    );

    // The same rows as an Arrow IPC stream and file: all duplicates now.
    let mut stream = Vec::new();
    let mut w =
        arrow::ipc::writer::StreamWriter::try_new(&mut stream, &batch.schema()).expect("ipc");
    w.write(&batch).expect("write");
    w.finish().expect("finish");
    drop(w);
    let (status, body) = f.upload(&datanet, InputFormat::Arrow, stream);
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(0), Some(2))
    );

    let mut file = Vec::new();
    let mut w = arrow::ipc::writer::FileWriter::try_new(&mut file, &batch.schema()).expect("ipc");
    w.write(&batch).expect("write");
    w.finish().expect("finish");
    drop(w);
    let (status, body) = f.upload(&datanet, InputFormat::Arrow, file);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["duplicates"], 2);

    // A column the schema does not have refuses the whole file.
    let extra = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("text", DataType::Utf8, false),
            Field::new("colour", DataType::Float64, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
        ],
    )
    .expect("batch");
    let (status, body) = f.upload(&datanet, InputFormat::Parquet, parquet_bytes(&extra));
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().expect("detail").contains("colour"));
}

#[test]
fn skip_mode_stores_good_rows_and_reject_mode_stores_nothing() {
    let bad = std::fs::read(example("bad-tips.jsonl")).expect("bad");
    let mut mixed = std::fs::read(example("tips.jsonl")).expect("good");
    mixed.extend_from_slice(&bad);

    let (f, datanet) = fixture(json!({ "invalid_rows": "reject" }));
    let (status, body) = f.upload(&datanet, InputFormat::Jsonl, mixed.clone());
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["type"], "urn:tributary:problem:invalid-rows");
    assert_eq!(body["total_errors"], 4);
    let rows: Vec<(u64, Option<&str>)> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| (e["row"].as_u64().expect("row"), e["field"].as_str()))
        .collect();
    assert_eq!(
        rows,
        vec![
            (7, Some("difficulty")),
            (8, Some("text")),
            (9, Some("colour")),
            (10, None)
        ]
    );
    assert_eq!(
        f.datanet()["batches"],
        0,
        "nothing of a refused batch is stored"
    );
    let leftovers = std::fs::read_dir(f.server.data_dir.join("segments"))
        .expect("dir")
        .count();
    assert_eq!(leftovers, 0);

    let (f, datanet) = fixture(json!({ "invalid_rows": "skip" }));
    let (status, body) = f.upload(&datanet, InputFormat::Jsonl, mixed);
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["invalid"].as_u64()),
        (Some(6), Some(4))
    );

    // Only bad rows, even when skipping: refused with the report, not as merely empty.
    let (status, body) = f.upload(&datanet, InputFormat::Jsonl, bad);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["total_errors"], 4);

    // A byte-order mark before the CSV header or the first JSON line is not part of the data.
    let csv = b"\xef\xbb\xbftext,topic\nBrown the butter first.,baking\n".to_vec();
    let (status, body) = f.upload(&datanet, InputFormat::Csv, csv);
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (201, Some(1)),
        "{body}"
    );
    let jsonl = b"\xef\xbb\xbf{\"text\": \"Warm the plates.\"}\n".to_vec();
    let (status, body) = f.upload(&datanet, InputFormat::Jsonl, jsonl);
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (201, Some(1)),
        "{body}"
    );
}

#[test]
fn a_rejected_batch_frees_its_records_for_contribution_again() {
    let (f, datanet) = fixture(json!({ "review": "manual" }));
    let tips = std::fs::read(example("tips.jsonl")).expect("tips");
    let (status, first) = f.upload(&datanet, InputFormat::Jsonl, tips.clone());
    assert_eq!((status, first["status"].as_str()), (201, Some("pending")));
    let (_, second) = f.upload(&datanet, InputFormat::Jsonl, tips.clone());
    assert_eq!(second["duplicates"], 6, "pending records already count");
    let http = f.server.http();
    let review = |batch: u64, decision: &str| {
        http.post(format!(
            "{}/v1/datanets/kitchen-tips/contributions/{batch}/review",
            f.server.url
        ))
        .bearer_auth(&f.admin)
        .json(&json!({ "decision": decision, "reason": "test" }))
        .send()
        .expect("review")
    };
    let rejected: Value = review(1, "reject").json().expect("json");
    assert_eq!(rejected["status"], "rejected");
    assert!(rejected["segment"].is_null());
    let (_, third) = f.upload(&datanet, InputFormat::Jsonl, tips);
    assert_eq!(
        third["accepted"], 6,
        "records of a rejected batch can come again"
    );
    assert_eq!(review(1, "approve").status(), 409);
}

#[test]
fn uploads_over_the_limit_are_refused_with_413() {
    let (f, datanet) = fixture_with(json!({}), &["--max-upload-bytes", "2000"]);
    let mut body = Vec::new();
    for i in 0..200 {
        body.extend_from_slice(
            format!("{{\"text\": \"tip number {i} about knife skills\"}}\n").as_bytes(),
        );
    }
    let (status, problem) = f.upload(&datanet, InputFormat::Jsonl, body);
    assert_eq!(status, 413, "{problem}");
    assert_eq!(problem["field"], "body");
    assert_eq!(f.datanet()["batches"], 0);
}

#[test]
fn bad_requests_get_problem_json_naming_the_field() {
    let (f, _) = fixture(json!({}));
    let http = f.server.http();
    let post = |body: Value| {
        let r = http
            .post(format!("{}/v1/datanets", f.server.url))
            .bearer_auth(&f.admin)
            .json(&body)
            .send()
            .expect("post");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        (r.status().as_u16(), r.json::<Value>().expect("problem"))
    };
    let schema = json!({ "fields": [{ "name": "text", "type": "string" }], "text_field": "text" });
    let cases = [
        (
            json!({ "id": "x", "name": "X", "license": "MIT", "schema": { "fields": [{ "name": "t", "type": "uint8" }], "text_field": "t" } }),
            "schema.fields[0].type",
        ),
        (
            json!({ "id": "Bad Id", "name": "X", "license": "MIT", "schema": schema }),
            "id",
        ),
        (
            json!({ "id": "x", "name": "X", "license": "Not-A-Licence", "schema": schema }),
            "license",
        ),
        (
            json!({ "id": "x", "name": "X", "license": "MIT", "schema": { "fields": [{ "name": "n", "type": "int64" }], "text_field": "n" } }),
            "schema.text_field",
        ),
        (json!({ "id": "x", "name": "X", "license": "MIT" }), "body"),
        (
            json!({ "id": "x", "name": "X", "license": "MIT", "schema": schema, "colour": 1 }),
            "colour",
        ),
        (
            json!({ "id": "kitchen-tips", "name": "X", "license": "MIT", "schema": schema }),
            "id",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = post(body.clone());
        assert!(status == 400 || status == 409, "{body}: {status} {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // Nothing accepted earlier changed.
    assert_eq!(f.datanet()["name"], "Kitchen tips");

    let unknown = http
        .get(format!("{}/v1/datanets/none/versions/1", f.server.url))
        .send()
        .expect("get");
    assert_eq!(unknown.status(), 404);
    let anonymous = http
        .post(format!(
            "{}/v1/datanets/kitchen-tips/versions",
            f.server.url
        ))
        .send()
        .expect("post");
    assert_eq!(anonymous.status(), 401);
}

#[test]
fn openapi_documents_every_route_and_metrics_count() {
    let (f, datanet) = fixture(json!({}));
    let (status, _) = f.upload(
        &datanet,
        InputFormat::Jsonl,
        std::fs::read(example("tips.jsonl")).expect("tips"),
    );
    assert_eq!(status, 201);
    let http = f.server.http();
    let doc: Value = http
        .get(format!("{}/openapi.json", f.server.url))
        .send()
        .expect("get")
        .json()
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/v1/datanets",
        "/v1/datanets/{id}",
        "/v1/datanets/{id}/contributions",
        "/v1/datanets/{id}/contributions/{batch}",
        "/v1/datanets/{id}/contributions/{batch}/review",
        "/v1/datanets/{id}/versions",
        "/v1/datanets/{id}/versions/{v}/export",
        "/v1/datanets/{id}/versions/{v}/proofs/{record}",
        "/v1/datanets/{id}/withdrawals",
        "/v1/tokens",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    let metrics = http
        .get(format!("{}/metrics", f.server.url))
        .send()
        .expect("get")
        .text()
        .expect("text");
    assert!(
        metrics.contains("tributary_records_stored_total 6"),
        "{metrics}"
    );
}

#[test]
fn concurrent_uploads_of_the_same_records_store_each_once() {
    let (f, datanet) = fixture(json!({}));
    let mut body = Vec::new();
    for i in 0..500 {
        body.extend_from_slice(format!("{{\"text\": \"shared tip {i}\"}}\n").as_bytes());
    }
    let f = &f;
    let results: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|k| {
                // Each uploader sends the same records in its own order.
                let mut lines: Vec<&[u8]> = body.split_inclusive(|b| *b == b'\n').collect();
                lines.rotate_left(k * 97);
                let mine = lines.concat();
                let datanet = &datanet;
                scope.spawn(move || f.upload(datanet, InputFormat::Jsonl, mine))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("uploader"))
            .collect()
    });
    let accepted: u64 = results
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 201, "{b}");
            b["accepted"].as_u64().expect("accepted")
        })
        .sum();
    let duplicates: u64 = results
        .iter()
        .map(|(_, b)| b["duplicates"].as_u64().expect("duplicates"))
        .sum();
    assert_eq!((accepted, duplicates), (500, 1500));
    assert_eq!(f.datanet()["batches"], 4);

    // Batches page in order.
    let page = |query: &str| {
        let r = f
            .server
            .http()
            .get(format!(
                "{}/v1/datanets/kitchen-tips/contributions?{query}",
                f.server.url
            ))
            .send()
            .expect("list");
        let status = r.status().as_u16();
        (status, r.json::<Value>().expect("json"))
    };
    let ids = |v: &Value| -> Vec<u64> {
        v.as_array()
            .expect("list")
            .iter()
            .map(|b| b["id"].as_u64().expect("id"))
            .collect()
    };
    assert_eq!(ids(&page("limit=3").1), vec![1, 2, 3]);
    assert_eq!(ids(&page("after=3&limit=3").1), vec![4]);
    let (status, problem) = page("limit=0");
    assert_eq!((status, problem["field"].as_str()), (400, Some("limit")));
}
