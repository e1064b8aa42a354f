//! Training: token sequences packed into fixed windows, a seeded split into training and
//! held-out windows, AdamW (`optim`) with linear warm-up and a cosine decay, gradients clipped by their
//! global norm, held-out loss at intervals. The same loop trains a model from scratch or only
//! a LoRA adapter: it updates exactly the variables it is given.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::optim::{AdamWParams, Optimizer};
use super::Llama;

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Tokens a window predicts (each window holds one more, the first token's context).
    pub seq_len: usize,
    /// Peak learning rate, reached after `warmup_steps`, then decayed on a cosine to
    /// `lr * min_lr_ratio` at the last step.
    pub lr: f64,
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Largest global gradient norm; larger gradients are scaled down to it.
    pub grad_clip: f64,
    /// Held-out loss every this many steps (and at the end).
    pub eval_every: usize,
    /// Share of windows held out, at least one window when there are two or more and at most
    /// [`MAX_HELD_OUT`].
    pub holdout: f64,
    pub seed: u64,
    /// Save the trainable variables every this many steps (0: never).
    #[serde(default)]
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 8,
            seq_len: 64,
            lr: 3e-3,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            grad_clip: 1.0,
            eval_every: 25,
            holdout: 0.05,
            seed: 0,
            checkpoint_every: 0,
        }
    }
}

/// One step, as progress reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    pub held_out_loss: Option<f64>,
    /// Since the run started.
    pub seconds: f64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    pub steps: Vec<StepReport>,
    pub final_held_out_loss: Option<f64>,
    pub tokens_per_second: f64,
}

/// Why a run stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cancelled before step {0}")]
    Cancelled(usize),
    #[error(transparent)]
    Model(#[from] candle_core::Error),
}

/// What a run reports to, and asks, as it goes.
pub trait TrainObserver {
    fn step(&mut self, report: &StepReport);

    /// Called every `checkpoint_every` steps after the update: save the trainable variables.
    fn checkpoint(&mut self, _step: usize) -> candle_core::Result<()> {
        Ok(())
    }

    /// Asked before each step; true stops the run with [`TrainError::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

impl<F: FnMut(&StepReport)> TrainObserver for F {
    fn step(&mut self, report: &StepReport) {
        self(report)
    }
}

/// The learning rate at `step` (0-based) of `cfg`.
pub fn lr_at(cfg: &TrainConfig, step: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = cfg.steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
    let floor = cfg.lr * cfg.min_lr_ratio;
    floor + (cfg.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The most windows held out for the held-out loss.
pub const MAX_HELD_OUT: usize = 256;

/// Concatenates documents with `separator` between them and cuts windows of `seq_len + 1`
/// tokens (a window's last token is only a target). A short tail is dropped.
pub fn pack(documents: &[Vec<u32>], separator: u32, seq_len: usize) -> Vec<Vec<u32>> {
    let mut stream = Vec::new();
    for doc in documents {
        stream.extend_from_slice(doc);
        stream.push(separator);
    }
    stream
        .chunks_exact(seq_len + 1)
        .map(|w| w.to_vec())
        .collect()
}

/// Gives every variable of `vars` its initial values from a generator seeded with `seed`, by
/// name, so that a run is reproducible (candle's CPU generator cannot be seeded): norms start
/// at one, LoRA `B` at zero, LoRA `A` uniform in ±1/√in, everything else N(0, 0.02).
pub fn seeded_init(vars: &VarMap, seed: u64) -> candle_core::Result<()> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::msg("the variables are poisoned"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let shape = var.as_tensor().shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.contains("lora_B") {
            vec![0.0; n]
        } else if name.contains("lora_A") {
            let bound = 1.0 / (*shape.dims().last().unwrap_or(&1) as f32).sqrt();
            (0..n).map(|_| rng.gen_range(-bound..=bound)).collect()
        } else {
            // Box-Muller: two uniforms give one standard normal.
            (0..n)
                .map(|_| {
                    let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
                    0.02 * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
                })
                .collect()
        };
        let t = Tensor::from_vec(values, shape, var.as_tensor().device())?
            .to_dtype(var.as_tensor().dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

fn batch(windows: &[&Vec<u32>], device: &Device) -> candle_core::Result<Tensor> {
    let width = windows.first().map_or(0, |w| w.len());
    let flat: Vec<u32> = windows.iter().flat_map(|w| w.iter().copied()).collect();
    Tensor::from_vec(flat, (windows.len(), width), device)
}

/// Mean loss over `windows`, in batches of `batch_size`.
pub fn evaluate(
    model: &Llama,
    windows: &[Vec<u32>],
    batch_size: usize,
    device: &Device,
) -> candle_core::Result<Option<f64>> {
    if windows.is_empty() {
        return Ok(None);
    }
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in windows.chunks(batch_size.max(1)) {
        let refs: Vec<&Vec<u32>> = chunk.iter().collect();
        let loss = model
            .loss(&batch(&refs, device)?)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        total += loss * chunk.len() as f64;
        count += chunk.len();
    }
    Ok(Some(total / count as f64))
}

/// Trains the `trainable` variables of `model` on `windows` (from [`pack`]).
pub fn train(
    model: &Llama,
    trainable: Vec<Var>,
    windows: &[Vec<u32>],
    cfg: &TrainConfig,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<TrainReport, TrainError> {
    if windows.is_empty() || cfg.batch_size == 0 || cfg.steps == 0 {
        return Err(candle_core::Error::msg(
            "nothing to train on: no windows, no batch or no steps",
        )
        .into());
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.shuffle(&mut rng);
    // Bounded, so that the held-out loss of a large version costs a few batches, not a pass
    // over a tenth of it at every evaluation (a one-step LoRA run over 4 MB took minutes).
    let held = if windows.len() >= 2 {
        ((windows.len() as f64 * cfg.holdout).ceil() as usize)
            .clamp(1, windows.len() - 1)
            .min(MAX_HELD_OUT)
    } else {
        0
    };
    let held_out: Vec<Vec<u32>> = order[..held].iter().map(|&i| windows[i].clone()).collect();
    let train_ids: Vec<usize> = order[held..].to_vec();
    let mut opt = Optimizer::new(
        trainable.clone(),
        AdamWParams {
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let started = Instant::now();
    let mut tokens = 0usize;
    let mut cursor = 0usize;
    let mut steps = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        if observer.cancelled() {
            return Err(TrainError::Cancelled(step + 1));
        }
        let picked: Vec<&Vec<u32>> = (0..cfg.batch_size)
            .map(|k| &windows[train_ids[(cursor + k) % train_ids.len()]])
            .collect();
        cursor = (cursor + cfg.batch_size) % train_ids.len();
        let input = batch(&picked, device)?;
        let loss = model.loss(&input)?;
        let loss_value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let mut grads = loss.backward()?;
        let grad_norm = opt.grad_norm(&grads)?;
        if !loss_value.is_finite() || !grad_norm.is_finite() {
            return Err(candle_core::Error::msg(format!(
                "training diverged at step {}: loss {loss_value}, gradient norm {grad_norm}; \
                 a lower learning rate (or LoRA alpha) would help",
                step + 1
            ))
            .into());
        }
        let scale = if grad_norm > cfg.grad_clip && grad_norm > 0.0 {
            cfg.grad_clip / grad_norm
        } else {
            1.0
        };
        let lr = lr_at(cfg, step);
        opt.step(&mut grads, lr, scale)?;
        tokens += picked.len() * (picked[0].len() - 1);
        let last = step + 1 == cfg.steps;
        let held_out_loss = if cfg.eval_every > 0 && ((step + 1) % cfg.eval_every == 0 || last) {
            evaluate(model, &held_out, cfg.batch_size, device)?
        } else {
            None
        };
        let report = StepReport {
            step: step + 1,
            steps: cfg.steps,
            loss: loss_value,
            lr,
            grad_norm,
            tokens_per_second: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            held_out_loss,
            seconds: started.elapsed().as_secs_f64(),
        };
        observer.step(&report);
        steps.push(report);
        if cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0 && !last {
            observer.checkpoint(step + 1)?;
        }
    }
    let final_held_out_loss = steps.iter().rev().find_map(|s| s.held_out_loss);
    Ok(TrainReport {
        tokens_per_second: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
        final_held_out_loss,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::DType;
    use candle_nn::VarBuilder;

    use super::*;
    use crate::model::LlamaConfig;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = TrainConfig {
            steps: 100,
            warmup_steps: 10,
            lr: 1.0,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((lr_at(&cfg, 0) - 0.1).abs() < 1e-12);
        assert!((lr_at(&cfg, 9) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 10) - 1.0).abs() < 1e-12);
        assert!(
            (lr_at(&cfg, 55) - 0.55).abs() < 1e-9,
            "half way down the cosine"
        );
        assert!((lr_at(&cfg, 100) - 0.1).abs() < 1e-12);
        assert!((10..99).all(|s| lr_at(&cfg, s + 1) <= lr_at(&cfg, s)));
    }

    #[test]
    fn packing_joins_documents_and_cuts_whole_windows() {
        let w = pack(&[vec![1, 2, 3], vec![4, 5], vec![6]], 0, 3);
        assert_eq!(w, vec![vec![1, 2, 3, 0], vec![4, 5, 0, 6]]);
    }

    fn run(seed: u64, steps: usize) -> (TrainReport, VarMap) {
        let device = Device::Cpu;
        let cfg_model = LlamaConfig::tiny(20);
        let vars = VarMap::new();
        let model = Llama::load(
            VarBuilder::from_varmap(&vars, DType::F32, &device),
            &cfg_model,
        )
        .expect("model");
        seeded_init(&vars, seed).expect("init");
        let docs: Vec<Vec<u32>> = (0..40)
            .map(|i| (0..12).map(|j| ((i + j) % 19) as u32 + 1).collect())
            .collect();
        let windows = pack(&docs, 0, 16);
        let cfg = TrainConfig {
            steps,
            batch_size: 4,
            seq_len: 16,
            lr: 1e-2,
            warmup_steps: 3,
            eval_every: 10,
            holdout: 0.1,
            seed,
            ..TrainConfig::default()
        };
        let mut seen = 0;
        let report = train(
            &model,
            vars.all_vars(),
            &windows,
            &cfg,
            &device,
            &mut |_: &StepReport| seen += 1,
        )
        .expect("train");
        assert_eq!(seen, steps);
        (report, vars)
    }

    #[test]
    fn training_is_seeded_clipped_and_lowers_held_out_loss() {
        let (a, _) = run(7, 40);
        let (b, _) = run(7, 40);
        let losses = |r: &TrainReport| r.steps.iter().map(|s| s.loss).collect::<Vec<_>>();
        assert_eq!(losses(&a), losses(&b), "same seed, same run");
        let (c, _) = run(8, 40);
        assert_ne!(losses(&a), losses(&c));
        let first = a.steps[9].held_out_loss.expect("held-out at step 10");
        let last = a.final_held_out_loss.expect("held-out at the end");
        assert!(last < first, "{first} -> {last}");
        assert!(a.steps[0].loss > a.steps[39].loss);
        assert!(a.tokens_per_second > 0.0);
        assert!(a.steps.iter().any(|s| s.held_out_loss.is_some()));
    }
}
