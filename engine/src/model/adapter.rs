//! LoRA adapters on disk in PEFT's layout: `adapter_config.json` (`peft_type: LORA`, `r`,
//! `lora_alpha`, `target_modules`) and `adapter_model.safetensors` with PEFT's key names
//! (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`), so that
//! `PeftModel.from_pretrained` loads what we train, and we load what PEFT trains.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::files::ModelFileError;
use super::llama::LORA_TARGETS;
use super::lora::LoraSpec;
use super::Llama;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn lora() -> String {
    "LORA".into()
}

fn causal_lm() -> String {
    "CAUSAL_LM".into()
}

fn none() -> String {
    "none".into()
}

/// The fields of PEFT's `LoraConfig` that shape an adapter; others PEFT fills with defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    #[serde(default = "lora")]
    pub peft_type: String,
    #[serde(default = "causal_lm")]
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub inference_mode: bool,
    /// What the adapter was trained on top of, for people reading the file.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
}

impl AdapterConfig {
    pub fn new(spec: &LoraSpec, targets: &[&str], base: Option<String>) -> Self {
        Self {
            peft_type: lora(),
            task_type: causal_lm(),
            r: spec.r,
            lora_alpha: spec.alpha,
            target_modules: targets.iter().map(|t| t.to_string()).collect(),
            lora_dropout: 0.0,
            bias: none(),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            inference_mode: true,
            base_model_name_or_path: base,
        }
    }

    pub fn spec(&self) -> LoraSpec {
        LoraSpec {
            r: self.r,
            alpha: self.lora_alpha,
        }
    }

    /// Refuses what our layers do not compute, rather than computing something else.
    pub fn check(&self) -> Result<(), String> {
        if self.peft_type != "LORA" {
            return Err(format!("peft_type {:?} is not LORA", self.peft_type));
        }
        if self.r == 0 {
            return Err("r must be at least 1".into());
        }
        if self.use_rslora || self.use_dora || self.fan_in_fan_out || self.bias != "none" {
            return Err(
                "rsLoRA, DoRA, fan_in_fan_out and LoRA biases are not supported".to_string(),
            );
        }
        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !LORA_TARGETS.contains(&t.as_str()))
        {
            return Err(format!(
                "target module {t:?} is not one of {}",
                LORA_TARGETS.join(", ")
            ));
        }
        Ok(())
    }

    pub fn targets(&self) -> Vec<&str> {
        self.target_modules.iter().map(String::as_str).collect()
    }
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ModelFileError {
    ModelFileError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes the adapter's config and its variables (named as [`Llama::add_lora`] names them).
pub fn save(dir: &Path, config: &AdapterConfig, vars: &VarMap) -> Result<(), ModelFileError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let json = serde_json::to_vec_pretty(config).map_err(|e| file_error(&path, e))?;
    std::fs::write(&path, json).map_err(|e| file_error(&path, e))?;
    vars.save(dir.join(ADAPTER_WEIGHTS_FILE))?;
    Ok(())
}

/// Reads an adapter's config and tensors.
pub fn load(
    dir: &Path,
    device: &Device,
) -> Result<(AdapterConfig, HashMap<String, Tensor>), ModelFileError> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| file_error(&path, e))?;
    config.check().map_err(|e| file_error(&path, e))?;
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let tensors =
        candle_core::safetensors::load(&weights, device).map_err(|e| file_error(&weights, e))?;
    Ok((config, tensors))
}

/// Puts the adapter in `dir` on `model`. Every tensor the adapter's layers need must be in the
/// file, with the shape the base's layers give it.
pub fn apply(model: &mut Llama, dir: &Path, dtype: DType) -> Result<AdapterConfig, ModelFileError> {
    let device = model.device().clone();
    let (config, tensors) = load(dir, &device)?;
    let vb = VarBuilder::from_tensors(tensors, dtype, &device);
    model
        .add_lora(&vb, &config.spec(), &config.targets())
        .map_err(|e| file_error(&dir.join(ADAPTER_WEIGHTS_FILE), e))?;
    Ok(config)
}
