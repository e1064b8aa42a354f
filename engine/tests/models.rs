//! `tributary models train` end to end: a byte-level BPE trained on the quickstart tips, a
//! small decoder trained from scratch on them, and the files read back by the library.

mod common;

use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::{example, stderr};
use tributary::model::files;

fn tributary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
}

#[test]
fn trains_a_model_from_scratch_and_writes_hugging_face_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("model");
    let tips = example("tips.jsonl");
    let run = tributary()
        .args(["models", "train", "--jsonl", tips.to_str().expect("utf8")])
        .args([
            "--tokenizer",
            "bpe:300",
            "--out",
            out.to_str().expect("utf8"),
        ])
        .args([
            "--steps",
            "40",
            "--seq-len",
            "16",
            "--batch-size",
            "4",
            "--lr",
            "0.01",
        ])
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("report");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 40);
    let loss = |i: usize| steps[i]["loss"].as_f64().expect("loss");
    assert!(loss(39) < loss(0), "{} -> {}", loss(0), loss(39));
    assert!(report["final_held_out_loss"].as_f64().is_some());
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let tokenizer = tributary::attribution::Tokenizer::from_file(&out.join("tokenizer.json"))
        .expect("tokenizer");
    let model = files::load(&out, DType::F32, &Device::Cpu).expect("load");
    assert_eq!(model.config.vocab_size, tokenizer.vocab_size() as usize + 1);
    assert_eq!(model.config.eos_token_id, Some(tokenizer.vocab_size()));
    let ids = tokenizer.encode("Salt pasta water").expect("encode");
    let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).expect("ids");
    let logits = model.forward(&ids).expect("forward");
    assert_eq!(logits.dims()[2], model.config.vocab_size);

    let bad = tributary()
        .args(["models", "train", "--jsonl", tips.to_str().expect("utf8")])
        .args([
            "--out",
            out.to_str().expect("utf8"),
            "--hidden",
            "30",
            "--heads",
            "4",
        ])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--hidden"), "{}", stderr(&bad));
}
