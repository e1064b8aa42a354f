//! Rewards through the real server: a model trained on two contributors' tips is priced;
//! every answer is charged once, its fee split exactly between the platform, the owner and
//! the contributors its attribution names (by the `proportional` plugin); a flagged
//! record's contributor loses their share; a policy that pays a stranger, pays short, traps
//! or loops leaves the whole fee in escrow and every balance as it was; closing the epoch
//! freezes balances into a payout tree whose proofs check, and the `local-jsonl` ledger
//! settles it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{published_by, tips_model, Server, TIPS};
use serde_json::{json, Value};
use tributary::identity::{recover_personal, Signature};
use tributary::merkle;
use tributary::Key;
use tributary_plugin_artifacts as artifacts;

const PLATFORM: &str = "0x00000000000000000000000000000000000000A1";
const OWNER: &str = "0x00000000000000000000000000000000000000B2";

fn send(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", server.url);
    let http = server.http();
    let request = match method {
        "GET" => http.get(url),
        "PUT" => http.put(url),
        _ => http.post(url),
    }
    .bearer_auth(token);
    let request = match body {
        Some(b) => request.json(b),
        None => request,
    };
    let r = request.send().expect("send");
    let status = r.status().as_u16();
    let text = r.text().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ok(server: &Server, token: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (status, v) = send(server, token, method, path, body);
    assert!(
        status == 200 || status == 201,
        "{method} {path}: {status} {v}"
    );
    v
}

fn refused(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    status: u16,
    field: Option<&str>,
) -> Value {
    let (got, v) = send(server, token, method, path, body);
    assert_eq!(got, status, "{method} {path}: {v}");
    if let Some(f) = field {
        assert_eq!(v["field"], f, "{v}");
    }
    v
}

fn units(v: &Value) -> u128 {
    v.as_str()
        .unwrap_or_else(|| panic!("an amount as a string: {v}"))
        .parse()
        .expect("amount")
}

fn install(server: &Server, admin: &str, plugin: &artifacts::Plugin) {
    server.cli_json(
        Some(admin),
        &[
            "plugin",
            "install",
            plugin.dir,
            "--component",
            plugin.component,
        ],
    );
}

fn rewards_of(server: &Server, token: &str, account: &str) -> Value {
    ok(
        server,
        token,
        "GET",
        &format!("/v1/accounts/{account}/rewards"),
        None,
    )
}

/// Each account's pending balance.
fn pending(server: &Server, token: &str, accounts: &[&str]) -> HashMap<String, u128> {
    accounts
        .iter()
        .map(|a| {
            (
                a.to_lowercase(),
                units(&rewards_of(server, token, a)["pending"]),
            )
        })
        .collect()
}

/// A server with the reward plugins installed and `local-jsonl` granted a folder, and a
/// small model trained on bob's and alice's tips.
struct Setup {
    /// Holds the temporary folders for as long as the test runs.
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    ledger_dir: std::path::PathBuf,
    server: Server,
    admin: String,
    curator: String,
    reader: String,
    model: String,
    bob: String,
    alice: String,
    /// The operator's key behind the `signer` capability.
    signer: Key,
}

fn setup() -> Setup {
    setup_on(None)
}

/// The setup, with the `evm-merkle` adapter allowed to reach a node on `chain_port`.
fn setup_on(chain_port: Option<u16>) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ledger_dir = dir.path().join("ledger");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::create_dir_all(&ledger_dir).expect("ledger dir");
    let signer = Key::generate();
    let signer_file = dir.path().join("signer.key");
    std::fs::write(&signer_file, signer.to_hex()).expect("signer key");
    let mut grants = format!(
        "[plugins.local-jsonl]\ngrant = [\"filesystem\"]\nfilesystem = {:?}\n\
         [plugins.evm-sigclaim]\ngrant = [\"signer\"]\nsigner_key = {:?}\n",
        ledger_dir.display().to_string(),
        signer_file.display().to_string()
    );
    if let Some(port) = chain_port {
        grants.push_str(&format!(
            "[plugins.evm-merkle]\ngrant = [\"signer\", \"http\"]\nsigner_key = {:?}\n\
             http_allow = [\"127.0.0.1:{port}\"]\n",
            signer_file.display().to_string()
        ));
    }
    std::fs::write(data.join("plugins.toml"), grants).expect("grants");
    let server = Server::start(&data);
    let admin = server.admin_token();
    for p in [
        &artifacts::PROPORTIONAL,
        &artifacts::GREEDY_POLICY,
        &artifacts::LOCAL_JSONL,
        &artifacts::CAPPED,
        &artifacts::EVM_SIGCLAIM,
    ] {
        install(&server, &admin, p);
    }
    if chain_port.is_some() {
        install(&server, &admin, &artifacts::EVM_MERKLE);
    }
    let write = |name: &str, part: &[&str]| {
        let file = dir.path().join(name);
        let rows: String = part
            .iter()
            .map(|t| format!("{}\n", json!({"text": t})))
            .collect();
        std::fs::write(&file, rows).expect("tips");
        file
    };
    let (bob_file, alice_file) = (
        write("bob.jsonl", &TIPS[..4]),
        write("alice.jsonl", &TIPS[4..]),
    );
    let (curator, people) = published_by(
        &server,
        dir.path(),
        &[("bob", &bob_file), ("alice", &alice_file)],
    );
    let reader = server.token("rita", "reader", &[]);
    let model = tips_model(&server, &curator);
    Setup {
        _dir: dir,
        data,
        ledger_dir,
        server,
        admin,
        curator,
        reader,
        model,
        bob: people[0].clone(),
        alice: people[1].clone(),
        signer,
    }
}

fn terms() -> Value {
    json!({
        "price": {"input_per_1k": "1000000000000", "output_per_1k": "3000000000000"},
        "split": {"platform_bps": 1000, "owner_bps": 2000},
        "platform": PLATFORM, "owner": OWNER, "policy": "proportional",
    })
}

#[test]
fn answers_pay_their_contributors_exactly_once_and_epochs_settle_with_checkable_proofs() {
    let s = setup();
    let (server, admin, curator, reader, model) =
        (&s.server, &s.admin, &s.curator, &s.reader, &s.model);
    let (bob, alice, ledger_dir) = (&s.bob, &s.alice, &s.ledger_dir);
    let tips = TIPS;
    let terms_path = format!("/v1/models/{model}/terms");

    // Terms: only an admin sets them, and bad ones name their field.
    let terms = terms();
    refused(server, curator, "PUT", &terms_path, Some(&terms), 403, None);
    let mut bad = terms.clone();
    bad["split"]["owner_bps"] = json!(9500);
    refused(
        server,
        admin,
        "PUT",
        &terms_path,
        Some(&bad),
        400,
        Some("split"),
    );
    let mut bad = terms.clone();
    bad["policy"] = json!("local-jsonl");
    refused(
        server,
        admin,
        "PUT",
        &terms_path,
        Some(&bad),
        400,
        Some("policy"),
    );
    let mut bad = terms.clone();
    bad["price"]["input_per_1k"] = json!("-3");
    refused(server, admin, "PUT", &terms_path, Some(&bad), 400, None);
    ok(server, admin, "PUT", &terms_path, Some(&terms));
    assert_eq!(
        ok(server, reader, "GET", &terms_path, None)["policy"],
        "proportional"
    );

    // An answer that reproduces one of bob's tips pays the platform, the owner and bob, and
    // the shares add up to the fee exactly.
    let complete = |prompt: &str| {
        ok(
            server,
            reader,
            "POST",
            "/v1/completions",
            Some(&json!({"model": model, "prompt": prompt, "max_tokens": 40, "temperature": 0})),
        )
    };
    let answer = complete(&tips[1][..14]);
    let fee = &answer["fee"];
    assert_eq!(fee["status"], "paid", "{answer}");
    let (prompt_tokens, completion_tokens) = (
        answer["usage"]["prompt_tokens"].as_u64().expect("prompt") as u128,
        answer["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion") as u128,
    );
    let total = (prompt_tokens * 1_000_000_000_000 + completion_tokens * 3_000_000_000_000) / 1000;
    assert_eq!(units(&fee["fee"]["total"]), total);
    assert_eq!(units(&fee["fee"]["platform"]), total / 10);
    assert_eq!(units(&fee["fee"]["owner"]), total / 5);
    let payouts = fee["payouts"].as_array().expect("payouts");
    assert_eq!(
        payouts.iter().map(|p| units(&p["amount"])).sum::<u128>(),
        total
    );
    let paid_to = |fee: &Value, who: &str| -> u128 {
        fee["payouts"]
            .as_array()
            .expect("payouts")
            .iter()
            .filter(|p| {
                p["account"]
                    .as_str()
                    .is_some_and(|a| a.eq_ignore_ascii_case(who))
            })
            .map(|p| units(&p["amount"]))
            .sum()
    };
    assert!(paid_to(fee, bob) > 0, "bob's tip: {fee}");
    let id = answer["id"].as_str().expect("id").to_string();
    assert_eq!(
        &ok(
            server,
            reader,
            "GET",
            &format!("/v1/completions/{id}/fee"),
            None
        ),
        fee
    );

    // Asking for the attribution again charges nothing more.
    let everyone = [PLATFORM, OWNER, bob.as_str(), alice.as_str()];
    let before = pending(server, reader, &everyone);
    ok(
        server,
        reader,
        "GET",
        &format!("/v1/completions/{id}/attribution"),
        None,
    );
    assert_eq!(pending(server, reader, &everyone), before);
    let bob_account = rewards_of(server, reader, bob);
    assert_eq!(bob_account["payments"][0]["completion"], id.as_str());
    assert_eq!(bob_account["payments"][0]["role"], "contributor");

    // Concurrent answers: every account's pending balance is the sum of what the fees paid.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = tips
            .iter()
            .map(|t| s.spawn(|| complete(&t[..14])["id"].as_str().expect("id").to_string()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut expected: HashMap<String, u128> = HashMap::new();
    let mut fees_total = 0u128;
    for c in ids.iter().chain(std::iter::once(&id)) {
        let fee = ok(
            server,
            reader,
            "GET",
            &format!("/v1/completions/{c}/fee"),
            None,
        );
        assert_eq!(fee["status"], "paid", "{fee}");
        fees_total += units(&fee["fee"]["total"]);
        for p in fee["payouts"].as_array().expect("payouts") {
            *expected
                .entry(p["account"].as_str().expect("account").to_lowercase())
                .or_default() += units(&p["amount"]);
        }
    }
    let balances = pending(server, reader, &everyone);
    assert_eq!(balances.values().sum::<u128>(), fees_total);
    for (account, amount) in &balances {
        assert_eq!(
            expected.get(account).copied().unwrap_or(0),
            *amount,
            "{account}"
        );
    }
    assert!(balances[&alice.to_lowercase()] > 0, "alice's tips paid her");

    // A flagged record's contributor keeps nothing of it: the share goes to the fallback.
    let top = answer["attribution"]["parts"][0]["records"][0]["record_id"]
        .as_str()
        .expect("top record")
        .to_string();
    let flags = format!("/v1/datanets/kitchen-tips/records/{top}/flags");
    refused(
        server,
        reader,
        "POST",
        &flags,
        Some(&json!({"kind": "adversarial", "reason": "spam"})),
        403,
        None,
    );
    refused(
        server,
        curator,
        "POST",
        &flags,
        Some(&json!({"kind": "adversarial", "reason": "spam", "weight": 2})),
        400,
        Some("weight"),
    );
    let flag = ok(
        server,
        curator,
        "POST",
        &flags,
        Some(&json!({"kind": "adversarial", "reason": "copied from a cookbook"})),
    );
    assert_eq!(
        flag["contributor"].as_str().map(str::to_lowercase),
        Some(bob.to_lowercase())
    );
    let flagged = complete(&tips[1][..14]);
    assert_eq!(paid_to(&flagged["fee"], bob), 0, "{flagged}");
    assert!(
        flagged["fee"]["payouts"]
            .as_array()
            .expect("payouts")
            .iter()
            .any(|p| p["role"] == "fallback"),
        "{flagged}"
    );

    // The policy is swapped at run time: `capped` pays nobody over its share of the pool.
    let mut capped = terms.clone();
    capped["policy"] = json!("capped");
    capped["policy_config"] = json!({"max_share": 0.25});
    ok(server, admin, "PUT", &terms_path, Some(&capped));
    let answer = complete(&tips[6][..14]);
    let pool = units(&answer["fee"]["fee"]["pool"]);
    assert_eq!(answer["fee"]["policy"], "capped");
    for p in answer["fee"]["payouts"].as_array().expect("payouts") {
        if p["role"] == "contributor" {
            assert!(units(&p["amount"]) <= pool / 4, "{answer}");
        }
    }

    // Policies that break the rules: the whole fee waits in escrow and no balance moves.
    let before = pending(server, reader, &everyone);
    for mode in ["stranger", "short", "trap", "loop"] {
        let mut greedy = terms.clone();
        greedy["policy"] = json!("greedy-policy");
        greedy["policy_config"] = json!({"mode": mode});
        ok(server, admin, "PUT", &terms_path, Some(&greedy));
        let held = complete(&tips[5][..14]);
        assert_eq!(held["fee"]["status"], "escrow", "{mode}: {held}");
        assert!(
            held["fee"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{held}"
        );
        assert_eq!(held["fee"]["payouts"], json!([]));
    }
    assert_eq!(pending(server, reader, &everyone), before);
    ok(server, admin, "PUT", &terms_path, Some(&terms));

    // Closing the epoch: the payout tree holds each account's earnings, a claim's proof
    // checks against its root, and the ledger records the epoch.
    refused(server, curator, "POST", "/v1/epochs/close", None, 403, None);
    refused(
        server,
        admin,
        "PUT",
        "/v1/ledger",
        Some(&json!({"adapter": "proportional"})),
        400,
        Some("adapter"),
    );
    ok(
        server,
        admin,
        "PUT",
        "/v1/ledger",
        Some(&json!({"adapter": "local-jsonl"})),
    );
    let balances = pending(server, reader, &everyone);
    let closed = ok(server, admin, "POST", "/v1/epochs/close", None);
    assert_eq!(closed["epoch"], 0);
    assert_eq!(units(&closed["total"]), balances.values().sum::<u128>());
    assert_eq!(
        closed["accounts"],
        balances.values().filter(|b| **b > 0).count()
    );
    assert_eq!(closed["settlement"]["status"], "settled", "{closed}");
    assert_eq!(closed["settlement"]["receipt"]["ledger"], "local-jsonl");
    let ledger_text = std::fs::read_to_string(ledger_dir.join("ledger.jsonl")).expect("ledger");
    assert!(
        ledger_text.contains(closed["payout_root"].as_str().expect("root")),
        "{ledger_text}"
    );
    let root = merkle_hash(&closed["payout_root"]);
    for who in [&alice, &bob] {
        let claim = ok(
            server,
            reader,
            "GET",
            &format!("/v1/epochs/0/claims/{who}"),
            None,
        );
        assert_eq!(units(&claim["amount"]), balances[&who.to_lowercase()]);
        let address: [u8; 20] = hex::decode(&who[2..])
            .expect("hex")
            .try_into()
            .expect("20 bytes");
        let leaf = merkle::leaf_address_uint256(&address, units(&claim["amount"]));
        assert_eq!(merkle_hash(&claim["leaf"]), leaf);
        let proof: Vec<merkle::Hash> = claim["proof"]
            .as_array()
            .expect("proof")
            .iter()
            .map(merkle_hash)
            .collect();
        assert!(merkle::verify(&root, &leaf, &proof), "{claim}");
        let account = rewards_of(server, reader, who);
        assert_eq!(units(&account["pending"]), 0);
        assert_eq!(units(&account["balance"]), balances[&who.to_lowercase()]);
        assert_eq!(account["epoch"], 1);
    }
    // OpenZeppelin's own library builds the same tree from the claims and accepts each proof.
    let claims: Vec<Value> = everyone
        .iter()
        .filter(|a| balances[&a.to_lowercase()] > 0)
        .map(|a| {
            ok(
                server,
                reader,
                "GET",
                &format!("/v1/epochs/0/claims/{a}"),
                None,
            )
        })
        .collect();
    let script = r#"
const { StandardMerkleTree } = require('@openzeppelin/merkle-tree');
const claims = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const tree = StandardMerkleTree.of(claims.map(c => [c.account, c.amount]), ['address', 'uint256']);
const verified = claims.map(c => StandardMerkleTree.verify(c.root, ['address', 'uint256'], [c.account, c.amount], c.proof));
console.log(JSON.stringify({ root: tree.root, verified }));
"#;
    let mut node = std::process::Command::new("node")
        .args(["-e", script])
        .current_dir(common::repo_root().join("tests/crosscheck"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (./dev installs the cross-checks' npm packages)");
    std::io::Write::write_all(
        node.stdin.as_mut().expect("stdin"),
        Value::Array(claims.clone()).to_string().as_bytes(),
    )
    .expect("claims to node");
    let out = node.wait_with_output().expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let js: Value = serde_json::from_slice(&out.stdout).expect("node's answer");
    assert_eq!(js["root"], closed["payout_root"], "{js}");
    assert_eq!(js["verified"], json!(vec![true; claims.len()]), "{js}");
    refused(
        server,
        reader,
        "GET",
        "/v1/epochs/0/claims/0x00000000000000000000000000000000000000c3",
        None,
        404,
        None,
    );
    refused(
        server,
        reader,
        "GET",
        "/v1/epochs/0/claims/0x12",
        None,
        400,
        Some("address"),
    );
    refused(
        server,
        reader,
        "GET",
        "/v1/epochs/7/claims/0x00000000000000000000000000000000000000c3",
        None,
        404,
        None,
    );
    assert_eq!(
        ok(server, reader, "GET", "/v1/epochs", None)
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Settling again changes nothing: the same receipt, one ledger line.
    let again = ok(server, admin, "POST", "/v1/epochs/0/settle", None);
    assert_eq!(again["settlement"], closed["settlement"]);
    assert_eq!(
        std::fs::read_to_string(ledger_dir.join("ledger.jsonl"))
            .expect("ledger")
            .lines()
            .count(),
        1
    );

    // The CLI: a claim, an account, and the ledger checked on this machine.
    let claim = server.cli_json(Some(reader), &["epochs", "claim", "0", bob]);
    assert_eq!(units(&claim["amount"]), balances[&bob.to_lowercase()]);
    let account = server.cli_json(Some(reader), &["rewards", "account", alice, "--limit", "1"]);
    assert_eq!(account["payments"].as_array().map(Vec::len), Some(1));
    let (data, ledger_file) = (s.data.clone(), ledger_dir.join("ledger.jsonl"));
    let mut s = s;
    s.server.kill();
    let verify = |expect_ok: bool| {
        let out = std::process::Command::new(common::BIN)
            .args(["ledger", "verify", "--data-dir"])
            .arg(&data)
            .output()
            .expect("ledger verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), expect_ok, "{text}");
        text
    };
    assert!(verify(true).contains("epoch 0: the ledger proves it"));
    let text = std::fs::read_to_string(&ledger_file).expect("ledger");
    let edited = text.replacen(&closed["total"].as_str().expect("total")[..4], "9999", 1);
    assert_ne!(edited, text);
    std::fs::write(&ledger_file, edited).expect("edit the ledger");
    let refusal = verify(false);
    assert!(refusal.contains("the line was changed"), "{refusal}");
}

fn merkle_hash(v: &Value) -> merkle::Hash {
    let s = v.as_str().unwrap_or_else(|| panic!("a 0x hash: {v}"));
    hex::decode(s.trim_start_matches("0x"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// A seeded stream of completions from several threads, some attributed later, some asked
/// again (a client's retry), across servers killed with SIGKILL at random moments: in the
/// end every answer is charged once, every fee's payouts sum to it, and every balance is the
/// sum of what the fees paid it, to the unit.
#[test]
fn a_random_fee_stream_with_retries_and_kills_pays_every_fee_exactly_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let mut s = setup();
    let terms_path = format!("/v1/models/{}/terms", s.model);
    ok(&s.server, &s.admin, "PUT", &terms_path, Some(&terms()));
    let answered: Mutex<Vec<String>> = Mutex::new(Vec::new());
    const ROUNDS: u64 = 3;
    for round in 0..ROUNDS {
        let stop = AtomicBool::new(false);
        let pid = s.server.child.id();
        std::thread::scope(|scope| {
            for thread in 0..6u64 {
                let (server, reader, model) = (&s.server, &s.reader, &s.model);
                let (stop, answered) = (&stop, &answered);
                scope.spawn(move || {
                    let mut state = (round * 16 + thread + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let mut next = move |n: u64| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state % n
                    };
                    let http = server.http();
                    while !stop.load(Ordering::Relaxed) {
                        let tip = TIPS[next(8) as usize];
                        let body = json!({
                            "model": model,
                            "prompt": &tip[..5 + next(15) as usize],
                            "max_tokens": 1 + next(6),
                            "temperature": 0,
                            "attribution": next(3) != 0,
                        });
                        let Ok(r) = http
                            .post(format!("{}/v1/completions", server.url))
                            .bearer_auth(reader)
                            .json(&body)
                            .send()
                        else {
                            return;
                        };
                        let Ok(v) = r.json::<Value>() else { return };
                        let Some(id) = v["id"].as_str() else { return };
                        answered.lock().expect("lock").push(id.to_string());
                        if next(4) == 0 {
                            // The client retries: asking for the attribution charges nothing twice.
                            let _ = http
                                .get(format!("{}/v1/completions/{id}/attribution", server.url))
                                .bearer_auth(reader)
                                .send();
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(400 + 350 * round));
            stop.store(true, Ordering::Relaxed);
            // SIGKILL while requests are in flight: answers, attributions and charges are cut
            // wherever they happen to be.
            let killed = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .expect("kill");
            assert!(killed.success());
        });
        s.server.kill();
        s.server = Server::start(&s.data);
    }
    let answered = answered.into_inner().expect("lock");
    assert!(answered.len() >= 10, "only {} answers", answered.len());
    // Charging resumes where it was cut: asking for each attribution charges what was not.
    for id in &answered {
        ok(
            &s.server,
            &s.reader,
            "GET",
            &format!("/v1/completions/{id}/attribution"),
            None,
        );
    }
    let fees = ok(&s.server, &s.admin, "GET", "/v1/fees?limit=100000", None);
    let fees = fees.as_array().expect("fees");
    let charged: std::collections::HashSet<&str> = fees
        .iter()
        .filter_map(|f| f["completion"].as_str())
        .collect();
    assert_eq!(charged.len(), fees.len(), "one fee per completion");
    for id in &answered {
        assert!(
            charged.contains(id.as_str()),
            "{id} was answered but not charged"
        );
    }
    let mut expected: HashMap<String, u128> = HashMap::new();
    let mut paid = 0u128;
    for f in fees {
        assert_eq!(f["status"], "paid", "{f}");
        let total = units(&f["fee"]["total"]);
        let payouts = f["payouts"].as_array().expect("payouts");
        assert_eq!(
            payouts.iter().map(|p| units(&p["amount"])).sum::<u128>(),
            total,
            "{f}"
        );
        paid += total;
        for p in payouts {
            *expected
                .entry(p["account"].as_str().expect("account").to_lowercase())
                .or_default() += units(&p["amount"]);
        }
    }
    let everyone = [PLATFORM, OWNER, s.bob.as_str(), s.alice.as_str()];
    let balances = pending(&s.server, &s.reader, &everyone);
    assert_eq!(
        balances.values().sum::<u128>(),
        paid,
        "balances against fees"
    );
    for (account, amount) in &balances {
        assert_eq!(
            expected.get(account).copied().unwrap_or(0),
            *amount,
            "{account}"
        );
    }
    assert!(
        expected.keys().all(|a| balances.contains_key(a)),
        "{expected:?}"
    );

    // Settled as signed claims: each account's claim recovers to the operator's key over the
    // message SigDispersal.claim checks.
    let contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
    ok(
        &s.server,
        &s.admin,
        "PUT",
        "/v1/ledger",
        Some(
            &json!({"adapter": "evm-sigclaim", "config": {"contract": contract, "chain_id": 31337}}),
        ),
    );
    let closed = ok(&s.server, &s.admin, "POST", "/v1/epochs/close", None);
    assert_eq!(closed["settlement"]["status"], "settled", "{closed}");
    let claim = ok(
        &s.server,
        &s.reader,
        "GET",
        &format!("/v1/epochs/0/claims/{}", s.bob),
        None,
    );
    let signed = &claim["ledger_claim"];
    assert_eq!(signed["amount"], claim["amount"], "{claim}");
    let mut packed = Vec::new();
    packed.extend_from_slice(&hex::decode(&s.bob[2..]).expect("hex"));
    packed.extend_from_slice(&[0u8; 16]);
    packed.extend_from_slice(&units(&claim["amount"]).to_be_bytes());
    packed.extend_from_slice(&merkle_hash(&closed["payout_root"]));
    packed.extend_from_slice(&hex::decode(&contract[2..]).expect("hex"));
    packed.extend_from_slice(&[0u8; 24]);
    packed.extend_from_slice(&31337u64.to_be_bytes());
    let message = merkle::keccak256(&packed);
    let signature: Signature = signed["signature"]
        .as_str()
        .expect("signature")
        .parse()
        .expect("65 bytes");
    assert_eq!(
        recover_personal(&message, &signature).expect("recover"),
        s.signer.address()
    );
}

/// A local EVM chain: ganache with the distributor contract and a signature-claim checker,
/// deployed by the operator's key (`tests/crosscheck/evm_chain.mjs`), answering one JSON line
/// per request.
struct Chain {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    info: Value,
}

impl Chain {
    fn start(port: u16, operator: &Key) -> Chain {
        use std::io::BufRead;
        let mut child = std::process::Command::new("node")
            .arg("evm_chain.mjs")
            .arg(port.to_string())
            .arg(operator.to_hex())
            .current_dir(common::repo_root().join("tests/crosscheck"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node (./dev installs ganache, solc and ethers from npm)");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = lines.next().expect("the chain's ready line").expect("read");
        let info = serde_json::from_str(&ready).expect("ready line");
        Chain {
            child,
            stdin,
            lines,
            info,
        }
    }

    fn ask(&mut self, request: Value) -> Value {
        use std::io::Write;
        writeln!(self.stdin, "{request}").expect("request to the chain");
        let line = self.lines.next().expect("an answer").expect("read");
        serde_json::from_str(&line).expect("answer line")
    }

    fn balance(&mut self, account: &str) -> u128 {
        units(&self.ask(json!({"op": "balance", "account": account}))["balance"])
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn epochs_settle_on_a_local_evm_chain_where_every_claim_pays_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let s = setup_on(Some(port));
    let mut chain = Chain::start(port, &s.signer);
    let (server, admin, reader, model) = (&s.server, &s.admin, &s.reader, &s.model);
    ok(
        server,
        admin,
        "PUT",
        &format!("/v1/models/{model}/terms"),
        Some(&terms()),
    );
    let complete = |tip: &str| {
        let answer = ok(
            server,
            reader,
            "POST",
            "/v1/completions",
            Some(
                &json!({"model": model, "prompt": &tip[..14], "max_tokens": 40, "temperature": 0}),
            ),
        );
        assert_eq!(answer["fee"]["status"], "paid", "{answer}");
    };
    let use_ledger = |adapter: &str, config: &Value| {
        ok(
            server,
            admin,
            "PUT",
            "/v1/ledger",
            Some(&json!({"adapter": adapter, "config": config})),
        );
    };
    let config = json!({
        "rpc_url": chain.info["rpc_url"],
        "contract": chain.info["distributor"],
        "chain_id": 31337,
    });

    // The adapter reaches only its allow-list: a node elsewhere is refused, the epoch waits.
    let mut elsewhere = config.clone();
    elsewhere["rpc_url"] = json!("http://127.0.0.1:1/");
    use_ledger("evm-merkle", &elsewhere);
    complete(TIPS[1]);
    complete(TIPS[5]);
    let closed0 = ok(server, admin, "POST", "/v1/epochs/close", None);
    assert_eq!(closed0["settlement"]["status"], "pending", "{closed0}");
    let error = closed0["settlement"]["last_error"].as_str().unwrap_or("");
    assert!(error.contains("allow-list"), "{closed0}");

    // An earlier attempt whose answer was lost has put the root on chain: settling finds it
    // there and sends nothing (the contract would refuse a second publication anyway).
    let early = chain.ask(json!({
        "op": "publish", "epoch": 0, "root": closed0["payout_root"], "total": closed0["total"],
    }));
    let early_tx = early["tx"].as_str().unwrap_or_else(|| panic!("{early}"));
    use_ledger("evm-merkle", &config);
    let settled0 = ok(server, admin, "POST", "/v1/epochs/0/settle", None);
    let receipt0 = &settled0["settlement"]["receipt"];
    assert_eq!(settled0["settlement"]["status"], "settled", "{settled0}");
    assert_eq!(receipt0["reference"], early_tx, "{settled0}");
    assert_eq!(receipt0["ledger"], "evm-merkle:31337");

    // Epoch 1 settles as it closes, with a transaction the adapter builds, the host signs and
    // the allow-listed capability sends.
    let before_epoch_1 = chain.ask(json!({"op": "snapshot"}))["id"].clone();
    complete(TIPS[2]);
    complete(TIPS[6]);
    let closed1 = ok(server, admin, "POST", "/v1/epochs/close", None);
    assert_eq!(closed1["settlement"]["status"], "settled", "{closed1}");
    let tx1 = closed1["settlement"]["receipt"]["reference"]
        .as_str()
        .expect("a transaction hash");
    assert!(tx1.len() == 66 && tx1 != early_tx, "{closed1}");
    let on_chain = chain.ask(json!({"op": "epoch", "epoch": 1}));
    assert_eq!(on_chain["published"], true, "{on_chain}");
    assert_eq!(on_chain["root"], closed1["payout_root"]);
    assert_eq!(on_chain["total"], closed1["total"]);
    let funded = units(&closed0["total"]) + units(&closed1["total"]);
    assert_eq!(chain.balance("distributor"), funded);

    // Every account claims its amount once with our proof; a wrong amount or a second claim
    // is refused on chain. All claims together drain the contract to the unit.
    let everyone = [PLATFORM, OWNER, s.bob.as_str(), s.alice.as_str()];
    let mut paid = 0;
    for epoch in [0, 1] {
        for who in everyone {
            let path = format!("/v1/epochs/{epoch}/claims/{who}");
            let (status, claim) = send(server, reader, "GET", &path, None);
            if status == 404 {
                continue;
            }
            assert_eq!(status, 200, "{claim}");
            let amount = units(&claim["amount"]);
            let mut ask = json!({
                "op": "claim", "epoch": epoch, "account": who,
                "amount": (amount + 1).to_string(), "proof": claim["proof"],
            });
            let wrong = chain.ask(ask.clone());
            assert_eq!(wrong["error"], "InvalidProof()", "{wrong}");
            ask["amount"] = json!(amount.to_string());
            let good = chain.ask(ask.clone());
            assert_eq!(good["ok"], true, "{good}");
            assert_eq!(units(&good["gained"]), amount);
            let again = chain.ask(ask);
            let refusal = again["error"].as_str().unwrap_or("");
            assert!(refusal.starts_with("AlreadyClaimed"), "{again}");
            paid += amount;
        }
    }
    assert_eq!(paid, funded);
    assert_eq!(chain.balance("distributor"), 0);

    // The engine books what the contract's logs say was claimed: everything, by everyone.
    for (epoch, closed) in [(0, &closed0), (1, &closed1)] {
        let synced = ok(
            server,
            admin,
            "POST",
            &format!("/v1/epochs/{epoch}/claims/sync"),
            None,
        );
        assert_eq!(synced["tracked"], true, "{synced}");
        assert_eq!(synced["claimed"], closed["total"], "{synced}");
        let epoch_now = ok(server, reader, "GET", &format!("/v1/epochs/{epoch}"), None);
        assert_eq!(epoch_now["claimed"], closed["total"], "{epoch_now}");
        let again = ok(
            server,
            admin,
            "POST",
            &format!("/v1/epochs/{epoch}/claims/sync"),
            None,
        );
        assert_eq!(again["changed"], 0, "{again}");
    }
    for who in everyone {
        let account = rewards_of(server, reader, who);
        assert_eq!(account["claimed"], account["earned"], "{account}");
        assert_eq!(units(&account["balance"]), 0, "{account}");
    }
    let bob_claim = ok(
        server,
        reader,
        "GET",
        &format!("/v1/epochs/0/claims/{}", s.bob),
        None,
    );
    assert_eq!(bob_claim["claimed"], bob_claim["amount"], "{bob_claim}");

    // evm-sigclaim's claims pass the check a signature-dispersal contract makes on chain.
    use_ledger(
        "evm-sigclaim",
        &json!({"contract": chain.info["sigclaim"], "chain_id": 31337}),
    );
    complete(TIPS[3]);
    let closed2 = ok(server, admin, "POST", "/v1/epochs/close", None);
    assert_eq!(closed2["settlement"]["status"], "settled", "{closed2}");
    let mut checked = 0;
    for who in everyone {
        let (status, claim) = send(
            server,
            reader,
            "GET",
            &format!("/v1/epochs/2/claims/{who}"),
            None,
        );
        if status == 404 {
            continue;
        }
        let signer = chain.ask(json!({
            "op": "signer", "signature": claim["ledger_claim"]["signature"],
            "batch": closed2["payout_root"], "amount": claim["amount"], "account": who,
        }));
        assert_eq!(signer["signer"], chain.info["operator"], "{signer} {claim}");
        checked += 1;
    }
    assert!(checked >= 3, "platform, owner and bob earned in epoch 2");
    // Signed claims are redeemed on a contract the engine does not watch: nothing to book.
    let synced = server.cli_json(Some(admin), &["epochs", "sync-claims", "2"]);
    assert_eq!(synced["tracked"], false, "{synced}");

    // A contract that is no distributor, or one that would refuse the publication (another
    // operator's), fails the attempt before anything is signed or sent; the epoch waits with
    // the reason.
    let mut wrong = config.clone();
    wrong["contract"] = chain.info["sigclaim"].clone();
    use_ledger("evm-merkle", &wrong);
    complete(TIPS[0]);
    let closed3 = ok(server, admin, "POST", "/v1/epochs/close", None);
    assert_eq!(closed3["settlement"]["status"], "pending", "{closed3}");
    let error = closed3["settlement"]["last_error"].as_str().unwrap_or("");
    assert!(error.contains("is it a TributaryDistributor?"), "{closed3}");
    wrong["contract"] = chain.info["foreign"].clone();
    use_ledger("evm-merkle", &wrong);
    let again3 = ok(server, admin, "POST", "/v1/epochs/3/settle", None);
    let error = again3["settlement"]["last_error"].as_str().unwrap_or("");
    assert!(
        error.contains("would refuse publishing epoch 3"),
        "{again3}"
    );

    // An operator deploys a distributor of their own with contracts/deploy.mjs and gets the
    // ledger config for it, which the server takes; the waiting epoch settles there.
    let out = std::process::Command::new("node")
        .arg(common::repo_root().join("contracts/deploy.mjs"))
        .arg(chain.info["rpc_url"].as_str().expect("rpc url"))
        .arg(s._dir.path().join("signer.key"))
        .output()
        .expect("node contracts/deploy.mjs");
    assert!(out.status.success(), "{}", common::stderr(&out));
    let deployed: Value = serde_json::from_slice(&out.stdout).expect("deploy.mjs prints JSON");
    assert_eq!(deployed["adapter"], "evm-merkle", "{deployed}");
    assert_eq!(deployed["config"]["chain_id"], 31337, "{deployed}");
    assert_ne!(deployed["config"]["contract"], chain.info["distributor"]);
    assert!(
        deployed["config"]["from_block"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{deployed}"
    );
    ok(server, admin, "PUT", "/v1/ledger", Some(&deployed));
    let settled3 = ok(server, admin, "POST", "/v1/epochs/3/settle", None);
    assert_eq!(settled3["settlement"]["status"], "settled", "{settled3}");

    // Checked offline against the chain: the CLI asks the node through the same adapter.
    let data = s.data.clone();
    let mut s = s;
    s.server.kill();
    let verify = || {
        let out = std::process::Command::new(common::BIN)
            .args(["ledger", "verify", "--data-dir"])
            .arg(&data)
            .output()
            .expect("ledger verify");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            format!("{text}{}", common::stderr(&out)),
        )
    };
    let (verified, text) = verify();
    assert!(verified, "{text}");
    for epoch in 0..4 {
        assert!(
            text.contains(&format!("epoch {epoch}: the ledger proves it")),
            "{text}"
        );
    }
    // The chain forgets everything after epoch 0 (as a reorganisation would): verifying says
    // so of epochs 1 and 3, published since.
    let reverted = chain.ask(json!({"op": "revert", "id": before_epoch_1}));
    assert_eq!(reverted["reverted"], true, "{reverted}");
    let (verified, text) = verify();
    assert!(!verified, "{text}");
    assert!(text.contains("epoch 0: the ledger proves it"), "{text}");
    for epoch in [1, 3] {
        assert!(
            text.contains(&format!(
                "epoch {epoch}: the ledger does not match the settlement"
            )),
            "{text}"
        );
    }
}
