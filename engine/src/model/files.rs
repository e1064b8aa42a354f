//! A model on disk as Hugging Face lays one out: `config.json` and `model.safetensors`, the
//! tensors under the names `transformers` expects.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use super::{Llama, LlamaConfig};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// What can go wrong reading or writing model files.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ModelFileError {
    ModelFileError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `config.json` into `dir`, creating it.
pub fn write_config(dir: &Path, config: &LlamaConfig) -> Result<(), ModelFileError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let config_path = dir.join(CONFIG_FILE);
    let json = serde_json::to_vec_pretty(config).map_err(|e| file_error(&config_path, e))?;
    std::fs::write(&config_path, json).map_err(|e| file_error(&config_path, e))
}

/// Reads and checks `config.json` in `dir`.
pub fn read_config(dir: &Path) -> Result<LlamaConfig, ModelFileError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, e))?;
    let config: LlamaConfig =
        serde_json::from_str(&text).map_err(|e| file_error(&config_path, e))?;
    config.check().map_err(|e| file_error(&config_path, e))?;
    Ok(config)
}

/// Writes `config.json` and the variables of `vars` as `model.safetensors` into `dir`.
pub fn save(dir: &Path, config: &LlamaConfig, vars: &VarMap) -> Result<(), ModelFileError> {
    write_config(dir, config)?;
    vars.save(dir.join(WEIGHTS_FILE))?;
    Ok(())
}

/// Reads a model from `dir` onto `device`, in `dtype`.
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Llama, ModelFileError> {
    let config = read_config(dir)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&weights_path, device)
        .map_err(|e| file_error(&weights_path, e))?;
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    Ok(Llama::load(vb, &config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_models_load_with_the_same_logits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LlamaConfig::tiny(19);
        let vars = VarMap::new();
        let model = Llama::load(
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
            &config,
        )
        .expect("model");
        save(dir.path(), &config, &vars).expect("save");
        let loaded = load(dir.path(), DType::F32, &Device::Cpu).expect("load");
        assert_eq!(loaded.config, config);
        let ids = candle_core::Tensor::new(&[[3u32, 1, 4, 1, 5]], &Device::Cpu).expect("ids");
        let diff = (model.forward(&ids).expect("a") - loaded.forward(&ids).expect("b"))
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert_eq!(diff, 0.0);
        let names = candle_core::safetensors::load(dir.path().join(WEIGHTS_FILE), &Device::Cpu)
            .expect("read");
        for name in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.norm.weight",
            "lm_head.weight",
        ] {
            assert!(names.contains_key(name), "{name}");
        }
        std::fs::write(dir.path().join(CONFIG_FILE), "{}").expect("write");
        let err = load(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .expect("refused");
        assert!(err.to_string().contains(CONFIG_FILE), "{err}");
    }
}
