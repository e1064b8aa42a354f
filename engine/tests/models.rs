//! `tributary models` end to end: a byte-level BPE trained on the quickstart tips, a small
//! decoder trained from scratch on them, a LoRA adapter fine-tuned over it in PEFT's layout,
//! and, where set-up installed it, SmolLM2-135M-Instruct read from GGUF answering a question.

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
        .args(["models", "train", "--data", tips.to_str().expect("utf8")])
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
            "--checkpoint-every",
            "20",
        ])
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("report");
    let steps = report["report"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 40);
    let loss = |i: usize| steps[i]["loss"].as_f64().expect("loss");
    assert!(loss(39) < loss(0), "{} -> {}", loss(0), loss(39));
    assert!(report["report"]["final_held_out_loss"].as_f64().is_some());
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training.json",
        "checkpoints/step-000020/model.safetensors",
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
        .args(["models", "train", "--data", tips.to_str().expect("utf8")])
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

#[test]
fn fine_tunes_a_lora_adapter_in_peft_layout_over_a_frozen_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base");
    let tips = example("tips.jsonl");
    let tips = tips.to_str().expect("utf8");
    let run = tributary()
        .args(["models", "train", "--data", tips, "--tokenizer", "bpe:300"])
        .args(["--out", base.to_str().expect("utf8"), "--steps", "10"])
        .args(["--seq-len", "16", "--batch-size", "4"])
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", stderr(&run));
    let base_weights = std::fs::read(base.join("model.safetensors")).expect("weights");

    let adapter = dir.path().join("adapter");
    let run = tributary()
        .args(["models", "finetune", "--base", base.to_str().expect("utf8")])
        .args(["--data", tips, "--out", adapter.to_str().expect("utf8")])
        .args(["--steps", "30", "--seq-len", "16", "--batch-size", "4"])
        .args(["--lr", "0.02", "--r", "4", "--alpha", "8"])
        .args(["--targets", "q_proj,v_proj,down_proj"])
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", stderr(&run));
    let outcome: serde_json::Value = serde_json::from_slice(&run.stdout).expect("outcome");
    let steps = outcome["report"]["steps"].as_array().expect("steps");
    let held = |i: usize| steps[i]["held_out_loss"].as_f64();
    let (first, last) = (held(5).expect("held-out"), held(29).expect("held-out"));
    assert!(last < first, "held-out loss {first} -> {last}");
    assert_eq!(
        std::fs::read(base.join("model.safetensors")).expect("weights"),
        base_weights,
        "the base is frozen"
    );

    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(adapter.join("adapter_config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    let tensors =
        candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu)
            .expect("adapter");
    // Two layers, three targets, A and B each.
    assert_eq!(tensors.len(), 2 * 3 * 2);
    let a = &tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!(a.dims()[0], 4);
    assert_eq!(b.dims()[1], 4);
    assert!(adapter.join("tokenizer.json").exists());

    // The adapter moves the logits of the base it was trained on.
    let logits = |with_adapter: bool, name: &str| {
        let out = dir.path().join(name);
        let mut cmd = tributary();
        cmd.args(["models", "logits", "--model", base.to_str().expect("utf8")])
            .args(["--text", "Salt the pasta water", "--out"])
            .arg(&out);
        if with_adapter {
            cmd.args(["--adapter", adapter.to_str().expect("utf8")]);
        }
        let run = cmd.output().expect("run");
        assert!(run.status.success(), "{}", stderr(&run));
        candle_core::safetensors::load(&out, &Device::Cpu).expect("logits")["logits"].clone()
    };
    let moved = (logits(true, "with.safetensors") - logits(false, "without.safetensors"))
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("diff");
    assert!(moved > 1e-3, "{moved}");

    let bad = tributary()
        .args(["models", "finetune", "--base", base.to_str().expect("utf8")])
        .args(["--data", tips, "--out", adapter.to_str().expect("utf8")])
        .args(["--targets", "wq"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("\"wq\" is not one of"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn smollm2_from_gguf_answers_a_chat_prompt() {
    let Some(gguf) = common::smollm2("smollm2_from_gguf_answers_a_chat_prompt") else {
        return;
    };
    let run = tributary()
        .args(["--threads", "1", "models", "generate", "--model"])
        .arg(&gguf)
        .args([
            "--chat",
            "What is the capital of France?",
            "--max-tokens",
            "12",
        ])
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", stderr(&run));
    let answer = String::from_utf8_lossy(&run.stdout);
    assert!(answer.contains("Paris"), "{answer}");
}
