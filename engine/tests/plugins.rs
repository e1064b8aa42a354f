//! The plugin platform against real components built from `plugins/`: validators in the
//! ingest path (rejections, quality, rewrites, state), reward policies and ledger adapters,
//! and hostile plugins that must fail their call and nothing else.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use tributary::plugin::ledger::{self, Settlement};
use tributary::plugin::reward::{self, Distribution, Entry, Penalty};
use tributary::plugin::state::StateChanges;
use tributary::plugin::validator::WasmValidator;
use tributary::plugin::{PluginError, PluginKind, Plugins};
use tributary::{Batch, Datanet, DatanetError, Datanets, Key};
use tributary_plugin_artifacts as artifacts;

fn install(
    plugins: &Plugins,
    plugin: &artifacts::Plugin,
) -> tributary::plugin::registry::PluginInfo {
    let manifest =
        std::fs::read_to_string(Path::new(plugin.dir).join("plugin.toml")).expect("manifest");
    let wasm = std::fs::read(plugin.component).expect("component");
    plugins.install(&manifest, &wasm).expect("install")
}

/// A data directory with the operator's grants, its Datanets and its plugins.
struct Setup {
    _dir: tempfile::TempDir,
    datanets: Datanets,
    plugins: Arc<Plugins>,
}

fn setup(grants: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("plugins.toml"), grants).expect("grants");
    let datanets = Datanets::open(dir.path()).expect("open");
    let plugins = Arc::new(Plugins::open(dir.path(), datanets.store().clone()).expect("plugins"));
    let datanets = datanets.with_plugins(plugins.clone());
    Setup {
        _dir: dir,
        datanets,
        plugins,
    }
}

fn create(datanets: &Datanets, validators: serde_json::Value) -> Datanet {
    let spec = serde_json::json!({
        "id": "notes", "name": "Notes", "license": "CC0-1.0", "review": "auto", "invalid_rows": "skip",
        "schema": {"text_field": "text", "fields": [
            {"name": "text", "type": "string", "required": true},
            {"name": "tags", "type": "list<string>"}
        ]},
        "validators": validators,
    });
    datanets
        .create(serde_json::from_value(spec).expect("spec"), "carol")
        .expect("create")
}

fn contribute(datanets: &Datanets, rows: &str) -> Result<Batch, DatanetError> {
    let key = Key::generate();
    common::contribute_jsonl(datanets, "notes", rows, &key, &key)
}

fn exported(datanets: &Datanets) -> Vec<RecordBatch> {
    let version = datanets.publish("notes").expect("publish");
    let path = datanets.export("notes", version.version).expect("export");
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).expect("file"),
    )
    .expect("parquet")
    .build()
    .expect("reader")
    .map(|b| b.expect("batch"))
    .collect()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name(column)
                .expect("column")
                .as_string::<i32>()
                .clone();
            (0..c.len())
                .map(move |i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_chain_of_validators_rejects_scores_and_redacts() {
    let s = setup("");
    install(&s.plugins, &artifacts::TEXT_QUALITY);
    install(&s.plugins, &artifacts::PII_REDACT);
    create(
        &s.datanets,
        serde_json::json!([
            {"plugin": "text-quality", "config": {"min_chars": 20}},
            {"plugin": "pii-redact"}
        ]),
    );
    let rows = concat!(
        "{\"text\": \"too short\"}\n",
        "{\"text\": \"Write to ada@example.org about the river delta survey results.\"}\n",
        "{\"text\": \"The delta grows each spring as silt settles near the estuary.\", \"tags\": [\"geo\"]}\n",
    );
    let batch = contribute(&s.datanets, rows).expect("contribute");
    assert_eq!((batch.rows, batch.accepted, batch.invalid), (3, 2, 1));
    assert_eq!(batch.errors.errors[0].row, 1);
    assert_eq!(
        batch.errors.errors[0].message,
        "text-quality: 9 characters, fewer than 20"
    );

    let out = exported(&s.datanets);
    let texts = strings(&out, "text");
    assert!(
        texts.contains(&"Write to [EMAIL] about the river delta survey results.".to_string()),
        "{texts:?}"
    );
    assert!(texts.iter().all(|t| !t.contains('@')));
    // The stored record's id is the id of what is stored, the redacted text.
    let datanet = s.datanets.get("notes").expect("get");
    let ids = strings(&out, "_record_id");
    let recomputed = tributary::datanet::record::record_ids(
        &datanet.spec.schema,
        &out[0].project(&[0, 1]).expect("project"),
    );
    assert_eq!(ids, recomputed.iter().map(hex::encode).collect::<Vec<_>>());
    let quality: Vec<f64> = out
        .iter()
        .flat_map(|b| {
            b.column_by_name("_quality")
                .expect("q")
                .as_primitive::<Float64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert!(
        quality.iter().all(|q| (0.5..=1.0).contains(q)),
        "{quality:?}"
    );
    // What reward policies are told of each record: the same quality, read from its batch;
    // a record the Datanet does not hold counts as 1.
    let mut asked: Vec<&str> = ids.iter().map(String::as_str).collect();
    let unknown = "ab".repeat(32);
    asked.push(&unknown);
    let looked_up = s
        .datanets
        .record_qualities("notes", &asked)
        .expect("qualities");
    assert_eq!(&looked_up[..ids.len()], quality.as_slice());
    assert_eq!(looked_up[ids.len()], 1.0);
    assert!(
        quality.iter().any(|q| *q < 1.0),
        "the check needs a record under 1: {quality:?}"
    );
}

#[test]
fn attachments_are_checked_against_the_registry_and_config_schema() {
    let s = setup("");
    install(&s.plugins, &artifacts::TEXT_QUALITY);
    install(&s.plugins, &artifacts::PROPORTIONAL);
    let attempt = |validators: serde_json::Value| {
        let spec = serde_json::json!({
            "id": "x", "name": "X", "license": "CC0-1.0",
            "schema": {"text_field": "text", "fields": [{"name": "text", "type": "string", "required": true}]},
            "validators": validators,
        });
        s.datanets
            .create(serde_json::from_value(spec).expect("spec"), "carol")
            .expect_err("refused")
            .to_string()
    };
    let err = attempt(serde_json::json!([{"plugin": "missing"}]));
    assert!(
        err.contains("validators[0]") && err.contains("plugin missing is not installed"),
        "{err}"
    );
    let err = attempt(serde_json::json!([{"plugin": "proportional"}]));
    assert!(err.contains("is a reward-policy, not a validator"), "{err}");
    let err = attempt(serde_json::json!([{"plugin": "text-quality", "config": {"min_chars": -3}}]));
    assert!(
        err.contains("config.min_chars: -3 is under the minimum 0"),
        "{err}"
    );
    let err = attempt(serde_json::json!([{"plugin": "text-quality", "config": {"colour": 1}}]));
    assert!(
        err.contains("config.colour: not a setting of this plugin"),
        "{err}"
    );
}

#[test]
fn near_dup_state_persists_with_batches_and_not_with_refused_ones() {
    let s = setup("[plugins.near-dup]\ngrant = [\"kv\"]\n");
    install(&s.plugins, &artifacts::NEAR_DUP);
    create(
        &s.datanets,
        serde_json::json!([{"plugin": "near-dup", "config": {"threshold": 0.7}}]),
    );
    let first = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn";
    let near = "the quick brown fox jumps over the lazy dog near the quiet river bank at dusk";
    let other = "an entirely different note about baking bread with rye flour and caraway seeds";
    let batch = contribute(
        &s.datanets,
        &format!("{{\"text\": \"{first}\"}}\n{{\"text\": \"{near}\"}}\n"),
    )
    .expect("first");
    assert_eq!((batch.accepted, batch.invalid), (1, 1));
    assert!(
        batch.errors.errors[0]
            .message
            .starts_with("near-dup: near-duplicate of an earlier record"),
        "{:?}",
        batch.errors
    );

    // Across batches, through the plugin's state.
    let batch = contribute(
        &s.datanets,
        &format!("{{\"text\": \"{near}\"}}\n{{\"text\": \"{other}\"}}\n"),
    )
    .expect("second");
    assert_eq!((batch.accepted, batch.invalid), (1, 1));

    // A refused batch (its signature is wrong) leaves no state: the text it carried is new
    // to the Datanet afterwards.
    let fresh = "a third note on tidal patterns along the northern coast in the winter months";
    let rows = format!("{{\"text\": \"{fresh}\"}}\n");
    let err = common::contribute_jsonl(
        &s.datanets,
        "notes",
        &rows,
        &Key::generate(),
        &Key::generate(),
    )
    .expect_err("wrong signer");
    assert!(matches!(err, DatanetError::SignerMismatch { .. }), "{err}");
    let batch = contribute(&s.datanets, &rows).expect("fresh");
    assert_eq!(
        (batch.accepted, batch.invalid),
        (1, 0),
        "{:?}",
        batch.errors
    );
}

/// One record of the notes schema.
fn one_note(datanet: &Datanet) -> RecordBatch {
    RecordBatch::try_new(
        datanet.spec.schema.arrow_schema(),
        vec![
            Arc::new(arrow::array::StringArray::from(vec!["a note"])),
            Arc::new(arrow::array::ListArray::new_null(
                Arc::new(arrow::datatypes::Field::new(
                    "item",
                    arrow::datatypes::DataType::Utf8,
                    true,
                )),
                1,
            )),
        ],
    )
    .expect("batch")
}

/// Calls the hostile validator directly with `attack`.
fn attack(plugins: &Plugins, datanet: &Datanet, name: &str) -> Result<usize, PluginError> {
    let plugin = plugins
        .get_kind("hostile", PluginKind::Validator)
        .expect("hostile");
    let batch = one_note(datanet);
    let config = serde_json::json!({ "attack": name }).to_string();
    WasmValidator::new(plugin)
        .call(datanet, &config, &batch, &mut StateChanges::default())
        .map(|answer| {
            answer
                .unpack(batch.num_rows(), datanet.spec.schema.fields.len())
                .expect("a well-formed answer")
                .verdicts
                .len()
        })
}

#[test]
fn hostile_plugins_fail_their_call_and_nothing_else() {
    let s = setup("[plugins.hostile]\ngrant = [\"log\"]\n");
    let info = install(&s.plugins, &artifacts::HOSTILE);
    assert_eq!(
        info.granted,
        vec![tributary::plugin::Capability::Log],
        "kv is requested, not granted"
    );
    let datanet = create(&s.datanets, serde_json::json!([]));
    let plugin = s.plugins.get("hostile").expect("loaded");
    assert_eq!(
        attack(&s.plugins, &datanet, "none").expect("a good call"),
        1
    );

    let started = Instant::now();
    let err = attack(&s.plugins, &datanet, "loop").expect_err("loops");
    assert!(
        matches!(err, PluginError::Deadline { limit_ms: 300, .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err.to_string(),
        "plugin hostile, call validate: ran past its deadline of 300 ms"
    );

    let err = attack(&s.plugins, &datanet, "memory").expect_err("allocates");
    assert!(
        matches!(err, PluginError::Memory { limit_mb: 32, .. }),
        "{err}"
    );
    let err = attack(&s.plugins, &datanet, "output").expect_err("floods");
    assert!(
        matches!(err, PluginError::Output { limit_kb: 256, .. }),
        "{err}"
    );
    let err = attack(&s.plugins, &datanet, "panic").expect_err("panics");
    assert!(matches!(err, PluginError::Trap { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("the hostile plugin panics on purpose"),
        "{err}"
    );
    let err = attack(&s.plugins, &datanet, "kv-flood").expect_err("ungranted");
    assert!(
        matches!(
            err,
            PluginError::Denied {
                capability: "kv",
                ..
            }
        ),
        "{err}"
    );

    // The sandbox hides files, sockets and the environment: the plugin sees errors and an
    // empty environment, and says so.
    let err = attack(&s.plugins, &datanet, "file").expect_err("no file");
    assert!(err.to_string().contains("file:"), "{err}");
    let err = attack(&s.plugins, &datanet, "socket").expect_err("no socket");
    assert!(err.to_string().contains("socket:"), "{err}");
    let err = attack(&s.plugins, &datanet, "env").expect_err("no env");
    assert!(err.to_string().contains("env: 0 variables"), "{err}");

    // Each trap discarded its instance; the next call gets a fresh one and works.
    let before = plugin.instances_created();
    assert_eq!(
        attack(&s.plugins, &datanet, "none").expect("still serving"),
        1
    );
    assert!(plugin.instances_created() >= before);
    assert!(
        before >= 5,
        "{before} instances for 5 traps and a first call"
    );
}

#[test]
fn a_failing_validator_rejects_or_holds_the_batch_as_configured() {
    let s = setup("");
    install(&s.plugins, &artifacts::HOSTILE);
    install(&s.plugins, &artifacts::TEXT_QUALITY);
    create(
        &s.datanets,
        serde_json::json!([{"plugin": "hostile", "config": {"attack": "loop"}}]),
    );
    let rows = "{\"text\": \"a note long enough to pass every check here\"}\n";
    let err = contribute(&s.datanets, rows).expect_err("rejected");
    assert!(
        err.to_string().contains("ran past its deadline of 300 ms"),
        "{err}"
    );
    assert_eq!(
        s.datanets.get("notes").expect("get").batches,
        0,
        "nothing stored"
    );

    let update: tributary::datanet::DatanetUpdate =
        serde_json::from_value(serde_json::json!({"on_validator_failure": "hold"}))
            .expect("update");
    s.datanets.update("notes", update).expect("update");
    let batch = contribute(&s.datanets, rows).expect("held");
    assert_eq!(batch.status, tributary::BatchStatus::Pending);
    let reason = batch.review_reason.expect("reason");
    assert!(
        reason.starts_with("held for review: validator hostile failed"),
        "{reason}"
    );
}

#[test]
fn reward_policies_pay_exactly_and_greedy_ones_are_refused() {
    let s = setup("");
    install(&s.plugins, &artifacts::PROPORTIONAL);
    install(&s.plugins, &artifacts::GREEDY_POLICY);
    let entry = |c: &str, score: f64| Entry {
        record_id: "00".repeat(32),
        datanet: "notes".into(),
        contributor: c.into(),
        score,
        quality: 1.0,
    };
    let request = Distribution {
        pool: 1_000_000_000_000_000_007,
        fallback: "0x00000000000000000000000000000000000000f0".into(),
        attribution_id: "a1".into(),
        entries: vec![entry("0xaa", 0.5), entry("0xbb", 0.3), entry("0xaa", 0.2)],
        penalties: vec![Penalty {
            contributor: "0xbb".into(),
            weight: 0.5,
            reason: "flagged".into(),
        }],
    };
    let policy = s
        .plugins
        .get_kind("proportional", PluginKind::RewardPolicy)
        .expect("policy");
    let payouts = reward::distribute(&policy, &request, &[], "{}", &mut StateChanges::default())
        .expect("pays");
    assert_eq!(payouts.iter().map(|(_, u)| u).sum::<u128>(), request.pool);
    let aa = payouts.iter().find(|(a, _)| a == "0xaa").expect("aa").1;
    let bb = payouts.iter().find(|(a, _)| a == "0xbb").expect("bb").1;
    let fallback = payouts
        .iter()
        .find(|(a, _)| *a == request.fallback)
        .expect("fallback")
        .1;
    // Shares follow f64 weights: exact to about one part in 10^15, and summing exactly.
    assert!(
        aa.abs_diff(700_000_000_000_000_005) <= 1_000,
        "0.7 of the pool: {aa}"
    );
    assert!(
        bb.abs_diff(150_000_000_000_000_001) <= 1_000,
        "half of 0.3, after the penalty: {bb}"
    );
    assert_eq!(fallback, request.pool - aa - bb);

    let greedy = s
        .plugins
        .get_kind("greedy-policy", PluginKind::RewardPolicy)
        .expect("greedy");
    for (mode, expected) in [
        ("overpay", "payouts sum to 3000000000000000021 base units, but the pool is 1000000000000000007"),
        ("stranger", "pays 0x000000000000000000000000000000000000dEaD, which is neither in attribution a1 nor the fallback"),
        ("short", "payouts sum to 500000000000000003 base units"),
    ] {
        let config = serde_json::json!({ "mode": mode }).to_string();
        let err = reward::distribute(&greedy, &request, &[], &config, &mut StateChanges::default())
            .expect_err("refused");
        assert!(matches!(err, PluginError::Refused { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{mode}: {err}");
    }
}

#[test]
fn local_jsonl_settles_once_and_its_chain_detects_edits() {
    let ledger_dir = tempfile::tempdir().expect("ledger dir");
    let s = setup(&format!(
        "[plugins.local-jsonl]\ngrant = [\"filesystem\"]\nfilesystem = {:?}\n",
        ledger_dir.path().display().to_string()
    ));
    install(&s.plugins, &artifacts::LOCAL_JSONL);
    let adapter = s
        .plugins
        .get_kind("local-jsonl", PluginKind::LedgerAdapter)
        .expect("adapter");
    let settlement = Settlement {
        epoch: 1,
        payout_root: format!("0x{}", "ab".repeat(32)),
        total: u128::MAX,
        payouts: vec![("0xaa".into(), u128::MAX - 5), ("0xbb".into(), 5)],
    };
    let mut state = StateChanges::default();
    let receipt = ledger::settle(&adapter, &settlement, "{}", &mut state).expect("settle");
    assert_eq!(receipt.ledger, "local-jsonl");
    let again = ledger::settle(&adapter, &settlement, "{}", &mut state).expect("settle again");
    assert_eq!(again, receipt, "settling twice gives the same receipt");
    assert!(ledger::verify(&adapter, &settlement, &receipt, "{}", &mut state).expect("verify"));

    let file = ledger_dir.path().join("ledger.jsonl");
    let text = std::fs::read_to_string(&file).expect("ledger file");
    assert_eq!(text.lines().count(), 1);
    std::fs::write(&file, text.replace("\"5\"", "\"6\"")).expect("edit");
    let err =
        ledger::verify(&adapter, &settlement, &receipt, "{}", &mut state).expect_err("edited");
    assert!(
        err.to_string().contains("line 1: the line was changed"),
        "{err}"
    );
}

#[test]
fn components_are_checked_against_their_manifest_at_install() {
    let s = setup("");
    let wasm = std::fs::read(artifacts::HOSTILE.component).expect("component");
    assert_eq!(
        tributary::plugin::api_version::stamped(&wasm).as_deref(),
        Some("0.1.2")
    );
    let manifest = "id = \"sneaky\"\nversion = \"1\"\nkind = \"validator\"\nwit = \"0.1.0\"\ncapabilities = [\"log\"]\n";
    let err = s
        .plugins
        .install(manifest, &wasm)
        .expect_err("kv not requested");
    assert!(err.to_string().contains("imports tributary:plugins/kv@0.1.0, but its manifest does not request the kv capability"), "{err}");
    let manifest = "id = \"sneaky\"\nversion = \"1\"\nkind = \"reward-policy\"\nwit = \"0.1.0\"\ncapabilities = [\"log\", \"kv\"]\n";
    let err = s.plugins.install(manifest, &wasm).expect_err("wrong kind");
    assert!(
        err.to_string()
            .contains("does not export tributary:plugins/policy"),
        "{err}"
    );
    let err = s
        .plugins
        .install(
            "id = \"x\"\nversion = \"1\"\nkind = \"validator\"\nwit = \"0.1.0\"\n",
            b"\0asm nonsense",
        )
        .expect_err("not wasm");
    assert!(err.to_string().contains("not a valid component"), "{err}");
    assert!(
        s.plugins.list().is_empty(),
        "nothing installed by refused attempts"
    );
}

/// Calls the hostile validator with `config` and returns the message it fails with.
fn probe(plugins: &Plugins, datanet: &Datanet, config: serde_json::Value) -> String {
    let plugin = plugins
        .get_kind("hostile", PluginKind::Validator)
        .expect("hostile");
    let batch = one_note(datanet);
    WasmValidator::new(plugin)
        .call(
            datanet,
            &config.to_string(),
            &batch,
            &mut StateChanges::default(),
        )
        .err()
        .expect("probes report through their error")
        .to_string()
}

/// Answers one HTTP request with `body`, on a loopback port.
fn one_shot_http(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn the_signer_and_http_capabilities_work_only_as_granted() {
    let key_dir = tempfile::tempdir().expect("key dir");
    let key = Key::generate();
    let key_path = key_dir.path().join("operator-key");
    std::fs::write(&key_path, key.to_hex()).expect("key");
    let port = one_shot_http("hello from the allow-list");
    let s = setup(&format!(
        "[plugins.hostile]\ngrant = [\"signer\", \"http\"]\nsigner_key = {:?}\nhttp_allow = [\"127.0.0.1:{port}\"]\n",
        key_path.display().to_string()
    ));
    install(&s.plugins, &artifacts::HOSTILE);
    let datanet = create(&s.datanets, serde_json::json!([]));

    // The host signs with the operator's key; the plugin never sees it.
    let message = b"settle epoch 7";
    let digest = tributary::identity::personal_message_digest(message);
    let said = probe(
        &s.plugins,
        &datanet,
        serde_json::json!({"attack": "sign", "digest": hex::encode(digest)}),
    );
    let signature = said.rsplit(' ').next().expect("signature");
    let signature: tributary::Signature = signature.parse().expect("65 bytes");
    let recovered = tributary::identity::recover_personal(message, &signature).expect("recover");
    assert_eq!(recovered, key.address());
    assert!(
        said.contains(&format!("signer {}", key.address().to_checksum())),
        "{said}"
    );

    let said = probe(
        &s.plugins,
        &datanet,
        serde_json::json!({"attack": "http", "url": format!("http://127.0.0.1:{port}/x")}),
    );
    assert!(
        said.ends_with("http 200 hello from the allow-list"),
        "{said}"
    );
    let said = probe(
        &s.plugins,
        &datanet,
        serde_json::json!({"attack": "http", "url": "http://127.0.0.1:9/elsewhere"}),
    );
    assert!(
        said.ends_with("http://127.0.0.1:9/elsewhere is not on this plugin's allow-list"),
        "{said}"
    );

    // Without the grants the same calls fail as denied.
    let s = setup("");
    install(&s.plugins, &artifacts::HOSTILE);
    let datanet = create(&s.datanets, serde_json::json!([]));
    let said = probe(
        &s.plugins,
        &datanet,
        serde_json::json!({"attack": "sign", "digest": hex::encode(digest)}),
    );
    assert!(
        said.contains("used capability signer, which the operator has not granted it"),
        "{said}"
    );
    let said = probe(
        &s.plugins,
        &datanet,
        serde_json::json!({"attack": "http", "url": "http://127.0.0.1:9/"}),
    );
    assert!(said.contains("used capability http"), "{said}");
}

#[test]
fn a_component_stamped_with_an_unsupported_api_version_is_refused() {
    let s = setup("");
    let mut wasm = std::fs::read(artifacts::TEXT_QUALITY.component).expect("component");
    let section = b"tributary-api-version0.1.2";
    let at = wasm
        .windows(section.len())
        .position(|w| w == section)
        .expect("the SDK's stamp");
    // Same length, so the component stays well-formed; only the stamp changes.
    wasm[at + section.len() - 5..at + section.len()].copy_from_slice(b"0.2.0");
    let manifest =
        std::fs::read_to_string(Path::new(artifacts::TEXT_QUALITY.dir).join("plugin.toml"))
            .expect("manifest");
    let err = s
        .plugins
        .install(&manifest, &wasm)
        .expect_err("unsupported");
    assert_eq!(
        err.to_string(),
        "plugin text-quality is built for tributary:plugins@0.2.0; this engine supports 0.1.0 to 0.1.x"
    );
}

#[test]
fn installed_plugins_come_back_from_the_artifact_cache_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let datanets = Datanets::open(dir.path()).expect("open");
        let plugins = Plugins::open(dir.path(), datanets.store().clone()).expect("plugins");
        install(&plugins, &artifacts::TEXT_QUALITY);
    }
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("plugins/cache"))
        .expect("cache dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "one precompiled artifact");
    let datanets = Datanets::open(dir.path()).expect("reopen");
    let plugins = Arc::new(Plugins::open(dir.path(), datanets.store().clone()).expect("plugins"));
    let info = plugins.info("text-quality").expect("still installed");
    assert_eq!(info.kind, PluginKind::Validator);
    let datanets = datanets.with_plugins(plugins.clone());
    create(&datanets, serde_json::json!([{"plugin": "text-quality"}]));
    let batch = contribute(
        &datanets,
        "{\"text\": \"short\"}\n{\"text\": \"a note that is long enough to be kept\"}\n",
    )
    .expect("contribute");
    assert_eq!((batch.accepted, batch.invalid), (1, 1));
}

#[test]
fn plugin_state_stops_growing_at_its_limit() {
    let s = setup("[plugins.hostile]\ngrant = [\"kv\"]\n");
    let manifest = std::fs::read_to_string(Path::new(artifacts::HOSTILE.dir).join("plugin.toml"))
        .expect("manifest")
        .replace("[limits]\n", "[limits]\nkv_mb = 4\n");
    let wasm = std::fs::read(artifacts::HOSTILE.component).expect("component");
    s.plugins.install(&manifest, &wasm).expect("install");
    let datanet = create(&s.datanets, serde_json::json!([]));
    let err = attack(&s.plugins, &datanet, "kv-flood").expect_err("floods its state");
    assert!(matches!(err, PluginError::Failed { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("the plugin's state would grow past its limit of 4 MiB"),
        "{err}"
    );
}

/// `evm-sigclaim` signs every account's claim with the operator's key, which never enters
/// the plugin; settling again gives the same receipt; a settlement that differs fails
/// verification; and eth-account, an independent implementation, recovers our key's address
/// from each signature over the message SigDispersal.claim checks.
#[test]
fn evm_sigclaim_signs_claims_that_eth_account_recovers() {
    let keys = tempfile::tempdir().expect("key dir");
    let key = Key::generate();
    let key_file = keys.path().join("signer.key");
    std::fs::write(&key_file, key.to_hex()).expect("key");
    let s = setup(&format!(
        "[plugins.evm-sigclaim]\ngrant = [\"signer\"]\nsigner_key = {:?}\n",
        key_file.display().to_string()
    ));
    install(&s.plugins, &artifacts::EVM_SIGCLAIM);
    let adapter = s
        .plugins
        .get_kind("evm-sigclaim", PluginKind::LedgerAdapter)
        .expect("adapter");
    let contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
    let config = serde_json::json!({"contract": contract, "chain_id": 31337}).to_string();
    let settlement = Settlement {
        epoch: 3,
        payout_root: format!("0x{}", "7c".repeat(32)),
        total: u128::MAX,
        payouts: vec![
            (
                "0x00000000000000000000000000000000000000Aa".into(),
                u128::MAX - 12,
            ),
            ("0x00000000000000000000000000000000000000bB".into(), 12),
        ],
    };
    let mut state = StateChanges::default();
    let receipt = ledger::settle(&adapter, &settlement, &config, &mut state).expect("settle");
    assert_eq!(receipt.ledger, "evm-sigclaim:31337");
    assert_eq!(
        ledger::settle(&adapter, &settlement, &config, &mut state).expect("again"),
        receipt
    );
    assert!(ledger::verify(&adapter, &settlement, &receipt, &config, &mut state).expect("verify"));
    let mut other = settlement.clone();
    other.payouts[1].1 = 13;
    other.payouts[0].1 = u128::MAX - 13;
    assert!(!ledger::verify(&adapter, &other, &receipt, &config, &mut state).expect("verify"));
    // Without a signer key the call fails, naming what is missing.
    let bare = setup("[plugins.evm-sigclaim]\ngrant = [\"signer\"]\n");
    install(&bare.plugins, &artifacts::EVM_SIGCLAIM);
    let unsigned = bare
        .plugins
        .get_kind("evm-sigclaim", PluginKind::LedgerAdapter)
        .expect("adapter");
    let err = ledger::settle(&unsigned, &settlement, &config, &mut state).expect_err("no key");
    assert!(err.to_string().contains("signer_key"), "{err}");

    let details: serde_json::Value = serde_json::from_str(&receipt.details).expect("details");
    assert_eq!(
        details["signer"].as_str().map(str::to_lowercase),
        Some(key.address().to_checksum().to_lowercase())
    );
    let python = common_python();
    let script = r#"
import json, sys
from eth_abi.packed import encode_packed
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak
d = json.load(sys.stdin)
out = []
for c in d["claims"]:
    message = keccak(encode_packed(["address", "uint256", "bytes32", "address", "uint256"],
        [c["account"], int(c["amount"]), bytes.fromhex(d["batch"][2:]), d["contract"], d["chain_id"]]))
    out.append(Account.recover_message(encode_defunct(primitive=message), signature=c["signature"]))
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} (./dev test makes the .venv): {e}", python.display()));
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        receipt.details.as_bytes(),
    )
    .expect("details to python");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recovered: Vec<String> = serde_json::from_slice(&out.stdout).expect("addresses");
    assert_eq!(recovered.len(), 2);
    for a in recovered {
        assert_eq!(a.to_lowercase(), key.address().to_checksum().to_lowercase());
    }
}

/// The cross-checks' Python, which `./dev test` creates with eth-account in it.
fn common_python() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join(".venv/bin/python")
}

#[test]
fn a_ledger_adapter_from_before_0_1_1_loads_and_reports_no_claims() {
    let s = setup(
        "[plugins.evm-merkle]\ngrant = [\"signer\", \"http\"]\nhttp_allow = [\"127.0.0.1:1\"]\n",
    );
    // Built straight from wit/0.1.0: no `claims` export.
    install(&s.plugins, &artifacts::LEGACY_LEDGER);
    install(&s.plugins, &artifacts::EVM_MERKLE);
    let legacy = s
        .plugins
        .get_kind("legacy-ledger", PluginKind::LedgerAdapter)
        .expect("legacy");
    let merkle = s
        .plugins
        .get_kind("evm-merkle", PluginKind::LedgerAdapter)
        .expect("evm-merkle");
    assert_eq!(legacy.api_version, "0.1.0");
    assert_eq!(merkle.api_version, "0.1.1");
    let settlement = Settlement {
        epoch: 0,
        payout_root: format!("0x{}", "5e".repeat(32)),
        total: 9,
        payouts: vec![("0x00000000000000000000000000000000000000Aa".into(), 9)],
    };
    let mut state = StateChanges::default();
    let receipt = ledger::settle(&legacy, &settlement, "{}", &mut state).expect("settle");
    assert!(ledger::verify(&legacy, &settlement, &receipt, "{}", &mut state).expect("verify"));
    assert_eq!(
        ledger::claimed(&legacy, &settlement, &receipt, "{}", &mut state).expect("claimed"),
        None
    );
    // evm-merkle has the interface: the call reaches it, which reads its config first.
    let err =
        ledger::claimed(&merkle, &settlement, &receipt, "{}", &mut state).expect_err("no config");
    assert!(err.to_string().contains("rpc_url"), "{err}");
    let config = serde_json::json!({
        "rpc_url": "http://127.0.0.1:2/", "contract": format!("0x{}", "00".repeat(20)), "chain_id": 31337,
    })
    .to_string();
    let err = ledger::claimed(&merkle, &settlement, &receipt, &config, &mut state)
        .expect_err("off the allow-list");
    assert!(err.to_string().contains("allow-list"), "{err}");
}

/// A batch of every field type, with absent values, crosses 0.1.2's packed interface and
/// 0.1.0's typed one alike: the validator reads the same values and its verdicts (qualities,
/// rejections, rewrites) come back the same.
#[test]
fn packed_and_typed_batches_read_and_answer_alike() {
    use arrow::array::{
        BooleanArray, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder,
        TimestampMicrosecondArray,
    };
    use tributary::plugin::validator::Answer;

    let s = setup("[plugins.hostile]\ngrant = [\"log\"]\n");
    install(&s.plugins, &artifacts::HOSTILE);
    let spec = serde_json::json!({
        "id": "every-type", "name": "Every type", "license": "CC0-1.0", "review": "auto",
        "schema": {"text_field": "text", "fields": [
            {"name": "text", "type": "string", "required": true},
            {"name": "n", "type": "int64"},
            {"name": "x", "type": "float64"},
            {"name": "ok", "type": "bool"},
            {"name": "at", "type": "timestamp"},
            {"name": "tags", "type": "list<string>"},
            {"name": "note", "type": "string"}
        ]},
    });
    let datanet = s
        .datanets
        .create(serde_json::from_value(spec).expect("spec"), "carol")
        .expect("create");
    let mut tags = ListBuilder::new(StringBuilder::new());
    for row in [vec!["a", "bé"], vec![], vec!["c"]] {
        for t in row {
            tags.values().append_value(t);
        }
        tags.append(true);
    }
    tags.append(false);
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from(vec!["first", "café", "", "last"])),
        Arc::new(Int64Array::from(vec![
            Some(-1),
            None,
            Some(i64::MAX),
            Some(0),
        ])),
        Arc::new(Float64Array::from(vec![
            Some(0.5),
            Some(-2.25),
            None,
            Some(1e300),
        ])),
        Arc::new(BooleanArray::from(vec![
            Some(true),
            Some(false),
            None,
            Some(true),
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1), None, Some(-5), Some(7)])
                .with_timezone("UTC"),
        ),
        Arc::new(tags.finish()),
        Arc::new(StringArray::from(vec![None, Some("x"), None, Some("ünï")])),
    ];
    let whole = RecordBatch::try_new(datanet.spec.schema.arrow_schema(), columns).expect("batch");
    // A slice starts its offsets past zero, which both paths rebase: the four rows above
    // come after a copy of the last one.
    let padded = arrow::compute::concat_batches(&whole.schema(), [&whole.slice(3, 1), &whole])
        .expect("concat");
    let batch = padded.slice(1, 4);
    let plugin = s
        .plugins
        .get_kind("hostile", PluginKind::Validator)
        .expect("hostile");
    assert!(
        plugin.takes_packed_batches(),
        "an SDK validator exports packed-validation"
    );
    let config = serde_json::json!({ "attack": "echo" }).to_string();
    let mut state = StateChanges::default();
    let packed = WasmValidator::new(plugin.clone())
        .call(&datanet, &config, &batch, &mut state)
        .expect("packed call");
    assert!(matches!(packed, Answer::Packed(_)));
    let typed = WasmValidator::typed_only(plugin)
        .call(&datanet, &config, &batch, &mut state)
        .expect("typed call");
    assert!(matches!(typed, Answer::Typed(_)));
    let packed = packed.unpack(4, 7).expect("packed verdicts");
    let typed = typed.unpack(4, 7).expect("typed verdicts");
    assert_eq!(packed, typed);

    use tributary::datanet::validate::{FieldValue, Verdict};
    assert_eq!(packed.verdicts[0], Verdict::Accept { quality: 1.0 });
    assert_eq!(packed.verdicts[2], Verdict::Accept { quality: 1.0 / 3.0 });
    assert_eq!(
        packed.verdicts[1],
        Verdict::Reject {
            reason: "String(\"café\") | Null | Float64(-2.25) | Bool(false) | Null | StringList([]) | String(\"x\")"
                .into()
        }
    );
    assert_eq!(
        packed.verdicts[3],
        Verdict::Reject {
            reason: "String(\"last\") | Int64(0) | Float64(1e300) | Bool(true) | Timestamp(7) | Null | String(\"ünï\")"
                .into()
        }
    );
    let rewritten: Vec<(usize, usize, FieldValue)> = packed
        .rewrites
        .iter()
        .map(|r| (r.row, r.field, r.value.clone()))
        .collect();
    assert_eq!(
        rewritten,
        vec![
            (0, 0, FieldValue::String("String(\"first\") | Int64(-1) | Float64(0.5) | Bool(true) | Timestamp(1) | StringList([\"a\", \"bé\"]) | Null".into())),
            (2, 0, FieldValue::String(format!("String(\"\") | Int64({}) | Null | Null | Timestamp(-5) | StringList([\"c\"]) | Null", i64::MAX))),
        ]
    );
}
