//! Plugins through the real server and CLI: install over REST (admin only), list, attach to
//! a Datanet, contributions judged by the component, and removal refused while in use.

mod common;

use common::{stderr, Server};
use tributary_plugin_artifacts as artifacts;

#[test]
fn plugins_install_attach_validate_and_remove_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let admin = server.admin_token();
    let curator = server.token("carol", "curator", &[]);

    // Only an admin installs.
    let refused = server.cli(
        Some(&curator),
        &[
            "plugin",
            "install",
            artifacts::TEXT_QUALITY.dir,
            "--component",
            artifacts::TEXT_QUALITY.component,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("only an admin token may do this"),
        "{}",
        stderr(&refused)
    );

    let info = server.cli_json(
        Some(&admin),
        &[
            "plugin",
            "install",
            artifacts::TEXT_QUALITY.dir,
            "--component",
            artifacts::TEXT_QUALITY.component,
        ],
    );
    assert_eq!(info["id"], "text-quality");
    assert_eq!(info["kind"], "validator");
    assert_eq!(info["api_version"], "0.1.2");
    let listed = server.cli_json(Some(&curator), &["plugin", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    // A broken manifest is refused with problem+json naming the part.
    let http = server.http();
    let form = reqwest::blocking::multipart::Form::new()
        .text("manifest", "id = \"x\"\nkind = \"validator\"\n")
        .part(
            "component",
            reqwest::blocking::multipart::Part::bytes(vec![0u8, 97, 115, 109]),
        );
    let response = http
        .post(format!("{}/v1/plugins", server.url))
        .bearer_auth(&admin)
        .multipart(form)
        .send()
        .expect("send");
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().expect("problem");
    assert_eq!(problem["field"], "manifest");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("missing field `version`"),
        "{problem}"
    );

    let spec = serde_json::json!({
        "id": "notes", "name": "Notes", "license": "CC0-1.0", "review": "auto", "invalid_rows": "skip",
        "schema": {"text_field": "text", "fields": [{"name": "text", "type": "string", "required": true}]},
    });
    server.create_datanet(&spec);
    let updated = server.cli_json(
        Some(&admin),
        &[
            "datanets",
            "update",
            "notes",
            "--validators",
            r#"[{"plugin": "text-quality", "config": {"min_chars": 20}}]"#,
        ],
    );
    assert_eq!(updated["validators"][0]["plugin"], "text-quality");

    let rows = dir.path().join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"text\": \"tiny\"}\n{\"text\": \"a contribution long enough to be kept by the validator\"}\n",
    )
    .expect("rows");
    let key = dir.path().join("key");
    assert!(server
        .cli(None, &["keys", "new", "--key", key.to_str().expect("utf8")])
        .status
        .success());
    let contributor = server.token("dave", "contributor", &[]);
    let batch = server.cli_json(
        Some(&contributor),
        &[
            "contribute",
            "notes",
            rows.to_str().expect("utf8"),
            "--key",
            key.to_str().expect("utf8"),
        ],
    );
    assert_eq!(batch["accepted"], 1);
    assert_eq!(batch["invalid"], 1);
    assert_eq!(
        batch["errors"]["errors"][0]["message"],
        "text-quality: 4 characters, fewer than 20"
    );

    // In use: removal is refused until the Datanet detaches it.
    let in_use = server.cli(Some(&admin), &["plugin", "remove", "text-quality"]);
    assert!(!in_use.status.success());
    assert!(
        stderr(&in_use).contains("validates Datanets notes; detach it first"),
        "{}",
        stderr(&in_use)
    );
    server.cli_json(
        Some(&admin),
        &["datanets", "update", "notes", "--validators", "[]"],
    );
    let removed = server.cli_json(Some(&admin), &["plugin", "remove", "text-quality"]);
    assert_eq!(removed["id"], "text-quality");
    assert_eq!(
        server.cli_json(Some(&admin), &["plugin", "list"]),
        serde_json::json!([])
    );
}

#[test]
fn plugin_test_prints_a_verdict_per_row_without_a_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"text\": \"call +44 20 7946 0958 after six\"}\n{\"text\": \"no personal data here\"}\n",
    )
    .expect("rows");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "plugin",
            "test",
            artifacts::PII_REDACT.dir,
            rows.to_str().expect("utf8"),
            "--component",
            artifacts::PII_REDACT.component,
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["rewrites"]["text"], "call [PHONE] after six");
    assert_eq!(lines[1]["verdict"], "accept");
    assert!(lines[1].get("rewrites").is_none());
}

#[test]
fn plugin_new_scaffolds_crates_that_build_as_components_and_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_tributary");
    // Shared between runs so that the dependencies build once.
    let target = common::repo_root().join("target").join("scaffold");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let datanets = tributary::Datanets::open(&data).expect("open");
    let plugins =
        tributary::plugin::Plugins::open(&data, datanets.store().clone()).expect("plugins");
    for (id, kind) in [
        ("my-check", "validator"),
        ("my-split", "reward-policy"),
        ("my-ledger", "ledger-adapter"),
    ] {
        let out = std::process::Command::new(bin)
            .args(["plugin", "new", id, "--kind", kind, "--dir"])
            .arg(dir.path())
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let root = dir.path().join(id);
        let build = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("cargo");
        assert!(build.success(), "the scaffolded {kind} builds");
        let manifest = std::fs::read_to_string(root.join("plugin.toml")).expect("manifest");
        let wasm = std::fs::read(
            target
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", id.replace('-', "_"))),
        )
        .expect("component");
        let info = plugins.install(&manifest, &wasm).expect("installs");
        assert_eq!(info.kind.to_string(), kind);
    }
    let again = std::process::Command::new(bin)
        .args(["plugin", "new", "my-check", "--kind", "validator", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}
