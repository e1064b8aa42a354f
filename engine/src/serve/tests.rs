//! The serving decoder against the training decoder, and batching against running alone.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::decoder::{Decoder, KvCache, Segment};
use super::engine::{Engine, EngineConfig, Event, Job};
use super::lora::{target_shape, Lora, Pair};
use super::matrix::Precision;
use crate::model::generate::Sampling;
use crate::model::llama::LORA_TARGETS;
use crate::model::lora::LoraSpec;
use crate::model::{adapter, Llama, LlamaConfig};

fn config() -> LlamaConfig {
    LlamaConfig {
        tie_word_embeddings: true,
        ..LlamaConfig::tiny(50)
    }
}

/// A random model's tensors under Hugging Face names.
fn weights(cfg: &LlamaConfig) -> HashMap<String, Tensor> {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    Llama::load(vb, cfg).expect("model");
    // Norm weights start at one; vary them so that a mix-up of norms would show.
    let data = vars.data().lock().expect("vars");
    data.iter()
        .map(|(k, v)| {
            let t = v.as_tensor().clone();
            let t = if k.ends_with("norm.weight") {
                Tensor::rand(0.5f32, 1.5, t.shape(), &Device::Cpu).expect("rand")
            } else {
                (t * 3.0).expect("scale")
            };
            (k.clone(), t)
        })
        .collect()
}

fn random_lora(cfg: &LlamaConfig, rank: usize, targets: &[usize], seed: u64) -> Lora {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = |n: usize| {
        (0..n)
            .map(|_| rng.gen_range(-0.3f32..0.3))
            .collect::<Vec<_>>()
    };
    let layers = (0..cfg.num_hidden_layers)
        .map(|_| {
            let mut layer: [Option<Pair>; 7] = Default::default();
            for &t in targets {
                let (inp, out) = target_shape(cfg, t);
                layer[t] = Some(Pair {
                    a: v(rank * inp),
                    b: v(out * rank),
                });
            }
            layer
        })
        .collect();
    Lora {
        rank,
        scale: 2.0,
        layers,
        targets: targets
            .iter()
            .map(|&t| LORA_TARGETS[t].to_string())
            .collect(),
    }
}

fn logits_alone(d: &Decoder, tokens: &[u32], lora: Option<&Lora>) -> Vec<f32> {
    let mut cache = KvCache::default();
    let mut seg = [Segment {
        tokens,
        cache: &mut cache,
        adapter: lora,
    }];
    d.step(&mut seg).expect("step").remove(0)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn f32_logits_are_the_training_decoders() {
    let cfg = config();
    let w = weights(&cfg);
    let d = Decoder::new(&cfg, &w, Precision::F32).expect("decoder");
    let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
    let llama = Llama::load(vb, &cfg).expect("llama");
    let seq = [3u32, 14, 15, 9, 26, 5, 35, 8];
    let ids = Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu).expect("ids");
    let want = llama.forward(&ids).expect("forward");
    // Prefill in two segments of one sequence, then one token at a time.
    let mut cache = KvCache::default();
    for (at, part) in [
        (0, &seq[..5]),
        (5, &seq[5..6]),
        (6, &seq[6..7]),
        (7, &seq[7..]),
    ] {
        let mut seg = [Segment {
            tokens: part,
            cache: &mut cache,
            adapter: None,
        }];
        let got = d.step(&mut seg).expect("step").remove(0);
        let end = at + part.len() - 1;
        let row: Vec<f32> = want
            .narrow(1, end, 1)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .expect("row");
        let diff = max_diff(&got, &row);
        assert!(diff < 1e-4, "position {end}: {diff}");
    }
    assert_eq!(cache.len(), seq.len());
    let q8 = Decoder::new(&cfg, &weights(&cfg), Precision::Q8).expect("q8");
    assert!(
        q8.bytes() * 3 < d.bytes(),
        "{} vs {}",
        q8.bytes(),
        d.bytes()
    );
}

#[test]
fn a_zero_initialised_adapter_read_from_peft_files_gives_the_bases_output() {
    let cfg = config();
    let w = weights(&cfg);
    let mut llama = Llama::load(
        VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu),
        &cfg,
    )
    .expect("llama");
    let vars = VarMap::new();
    let spec = LoraSpec { r: 4, alpha: 8.0 };
    let targets = ["q_proj", "v_proj", "down_proj"];
    llama
        .add_lora(
            &VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
            &spec,
            &targets,
        )
        .expect("lora");
    let dir = tempfile::tempdir().expect("dir");
    adapter::save(
        dir.path(),
        &adapter::AdapterConfig::new(&spec, &targets, None),
        &vars,
    )
    .expect("save");
    let lora = Lora::read(dir.path(), &cfg).expect("read");
    assert_eq!((lora.rank, lora.scale), (4, 2.0));
    assert!(lora.bytes() > 0);
    for precision in [Precision::F32, Precision::Q8] {
        let d = Decoder::new(&cfg, &w, precision).expect("decoder");
        let seq = [1u32, 2, 3, 4, 5];
        assert_eq!(
            logits_alone(&d, &seq, Some(&lora)),
            logits_alone(&d, &seq, None)
        );
    }
    // An adapter for another shape is refused with the tensor at fault.
    let other = LlamaConfig {
        hidden_size: 64,
        ..cfg.clone()
    };
    let err = Lora::read(dir.path(), &other).expect_err("wrong shape");
    assert!(err.to_string().contains("lora_A"), "{err}");
}

#[test]
fn a_merged_adapter_equals_the_unmerged_one() {
    let cfg = config();
    let w = weights(&cfg);
    let lora = random_lora(&cfg, 3, &[0, 2, 3, 4, 5, 6], 7);
    let mut merged = w.clone();
    for (i, layer) in lora.layers.iter().enumerate() {
        for (t, pair) in layer.iter().enumerate() {
            let Some(p) = pair else { continue };
            let group = if t < 4 { "self_attn" } else { "mlp" };
            let name = format!("model.layers.{i}.{group}.{}.weight", LORA_TARGETS[t]);
            let (inp, out) = target_shape(&cfg, t);
            let a = Tensor::from_slice(&p.a, (lora.rank, inp), &Device::Cpu).expect("a");
            let b = Tensor::from_slice(&p.b, (out, lora.rank), &Device::Cpu).expect("b");
            let delta = (b.matmul(&a).expect("ba") * lora.scale as f64).expect("scale");
            let base = merged.get(&name).expect("weight").clone();
            merged.insert(name, (base + delta).expect("merge"));
        }
    }
    let unmerged = Decoder::new(&cfg, &w, Precision::F32).expect("decoder");
    let merged = Decoder::new(&cfg, &merged, Precision::F32).expect("merged");
    let seq = [7u32, 3, 9, 12, 40, 2];
    let a = logits_alone(&unmerged, &seq, Some(&lora));
    let b = logits_alone(&merged, &seq, None);
    let base = logits_alone(&unmerged, &seq, None);
    assert!(max_diff(&a, &b) < 1e-4, "{}", max_diff(&a, &b));
    assert!(max_diff(&a, &base) > 1e-2, "the adapter changes the output");
}

/// Runs each job through the engine and collects its tokens.
fn run(engine: &Engine, jobs: Vec<(Vec<u32>, Sampling, Option<Arc<Lora>>)>) -> Vec<Vec<u32>> {
    let receivers: Vec<_> = jobs
        .into_iter()
        .map(|(prompt, sampling, adapter)| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            engine.submit(Job {
                prompt,
                sampling,
                adapter,
                events: tx,
            });
            rx
        })
        .collect();
    receivers
        .into_iter()
        .map(|mut rx| {
            let mut out = Vec::new();
            loop {
                match rx.blocking_recv() {
                    Some(Event::Token(t)) => out.push(t),
                    Some(Event::Done(s)) => {
                        assert_eq!(s.completion_tokens, out.len());
                        return out;
                    }
                    Some(Event::Failed(e)) => panic!("job failed: {e}"),
                    None => panic!("the engine dropped a job"),
                }
            }
        })
        .collect()
}

#[test]
fn a_heterogeneous_batch_gives_each_request_what_it_gets_alone() {
    let cfg = config();
    let d = Arc::new(Decoder::new(&cfg, &weights(&cfg), Precision::Q8).expect("decoder"));
    let loras = [
        Arc::new(random_lora(&cfg, 4, &[0, 2], 1)),
        Arc::new(random_lora(&cfg, 8, &[0, 1, 2, 3, 4, 5, 6], 2)),
    ];
    let jobs: Vec<(Vec<u32>, Sampling, Option<Arc<Lora>>)> = (0..7)
        .map(|i| {
            let prompt: Vec<u32> = (0..3 + 2 * i)
                .map(|k| ((k * 7 + i * 3) % 50) as u32)
                .collect();
            let sampling = Sampling {
                max_tokens: 6 + i as usize,
                temperature: if i % 2 == 0 { 0.0 } else { 0.9 },
                top_k: if i == 3 { 5 } else { 0 },
                seed: 100 + i as u64,
                ..Sampling::default()
            };
            let adapter = match i % 3 {
                0 => None,
                k => Some(loras[k as usize - 1].clone()),
            };
            (prompt, sampling, adapter)
        })
        .collect();
    // Alone: a batch of one, one job at a time.
    let single = Engine::start(
        d.clone(),
        EngineConfig {
            max_batch: 1,
            prefill_chunk: 256,
        },
    )
    .expect("engine");
    let alone: Vec<Vec<u32>> = jobs
        .iter()
        .map(|j| run(&single, vec![j.clone()]).remove(0))
        .collect();
    // Together, prompts fed in chunks of 4 while others decode.
    let batched = Engine::start(
        d,
        EngineConfig {
            max_batch: 8,
            prefill_chunk: 4,
        },
    )
    .expect("engine");
    let together = run(&batched, jobs.clone());
    assert_eq!(together, alone);
    for (out, j) in together.iter().zip(&jobs) {
        assert_eq!(out.len(), j.1.max_tokens);
    }
    // The adapters change what is generated.
    let plain = run(&batched, vec![(jobs[1].0.clone(), jobs[1].1.clone(), None)]);
    assert_ne!(plain[0], together[1]);
}

#[test]
fn a_client_that_leaves_frees_its_slot() {
    let cfg = config();
    let d = Arc::new(Decoder::new(&cfg, &weights(&cfg), Precision::Q8).expect("decoder"));
    let engine = Engine::start(
        d,
        EngineConfig {
            max_batch: 1,
            prefill_chunk: 256,
        },
    )
    .expect("engine");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    engine.submit(Job {
        prompt: vec![1, 2, 3],
        sampling: Sampling {
            max_tokens: 60,
            ..Sampling::default()
        },
        adapter: None,
        events: tx,
    });
    drop(rx);
    // With one slot, this job runs only once the first has been dropped.
    let out = run(
        &engine,
        vec![(
            vec![4, 5],
            Sampling {
                max_tokens: 3,
                ..Sampling::default()
            },
            None,
        )],
    );
    assert_eq!(out[0].len(), 3);
}
