//! LoRA adapters as the server holds them: for each layer and target, `A` and `B` as plain
//! f32 rows, ready to be added to a product as a [`Delta`](super::matrix::Delta). Read from
//! PEFT's layout, so an adapter trained here or by PEFT serves the same way.

use std::path::Path;

use candle_core::{DType, Device};

use crate::model::adapter;
use crate::model::files::ModelFileError;
use crate::model::llama::LORA_TARGETS;
use crate::model::LlamaConfig;

/// One layer's delta for one target: `scale · B A`.
#[derive(Debug, Clone)]
pub struct Pair {
    /// `r × in`.
    pub a: Vec<f32>,
    /// `out × r`.
    pub b: Vec<f32>,
}

/// An adapter in memory.
#[derive(Debug)]
pub struct Lora {
    pub rank: usize,
    pub scale: f32,
    /// `layers[i][t]`: layer `i`, target `LORA_TARGETS[t]`.
    pub layers: Vec<[Option<Pair>; 7]>,
    pub targets: Vec<String>,
}

/// A target's `(in, out)` sizes in a model of this shape.
pub fn target_shape(config: &LlamaConfig, target: usize) -> (usize, usize) {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let (q, kv) = (
        config.num_attention_heads * config.head_dim(),
        config.num_key_value_heads * config.head_dim(),
    );
    match target {
        0 => (h, q),
        1 | 2 => (h, kv),
        3 => (q, h),
        4 | 5 => (h, i),
        _ => (i, h),
    }
}

fn file_error(path: &Path, message: impl Into<String>) -> ModelFileError {
    ModelFileError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl Lora {
    /// Reads the PEFT adapter in `dir` for a base of this shape. Every target layer must be
    /// in the file with the shape the base gives it.
    pub fn read(dir: &Path, config: &LlamaConfig) -> Result<Self, ModelFileError> {
        let (peft, tensors) = adapter::load(dir, &Device::Cpu)?;
        let weights = dir.join(adapter::ADAPTER_WEIGHTS_FILE);
        let rank = peft.r;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let mut layer: [Option<Pair>; 7] = Default::default();
            for (t, name) in LORA_TARGETS.iter().enumerate() {
                if !peft.target_modules.iter().any(|m| m == name) {
                    continue;
                }
                let group = if t < 4 { "self_attn" } else { "mlp" };
                let (inp, out) = target_shape(config, t);
                let read = |factor: &str, shape: (usize, usize)| {
                    let key = format!(
                        "base_model.model.model.layers.{i}.{group}.{name}.lora_{factor}.weight"
                    );
                    let t = tensors
                        .get(&key)
                        .ok_or_else(|| file_error(&weights, format!("{key} is missing")))?;
                    if t.dims() != [shape.0, shape.1] {
                        return Err(file_error(
                            &weights,
                            format!("{key} is {:?}; the base needs {shape:?}", t.dims()),
                        ));
                    }
                    t.to_dtype(DType::F32)
                        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                        .map_err(|e| file_error(&weights, e.to_string()))
                };
                let a = read("A", (rank, inp))?;
                let b = read("B", (out, rank))?;
                layer[t] = Some(Pair { a, b });
            }
            layers.push(layer);
        }
        Ok(Self {
            rank,
            scale: (peft.lora_alpha / rank as f64) as f32,
            layers,
            targets: peft.target_modules.clone(),
        })
    }

    /// Bytes its tensors take.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|p| (p.a.len() + p.b.len()) * 4)
            .sum()
    }
}
