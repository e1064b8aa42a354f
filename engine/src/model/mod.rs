//! Models: a Llama-style decoder on candle whose every linear layer can carry a LoRA delta,
//! with a config that mirrors Hugging Face's `config.json` and weights under Hugging Face's
//! names, so that what we save, `transformers` loads; bases read from GGUF or from our own
//! files; adapters in PEFT's layout; training, generation and chat templates.

pub mod adapter;
pub mod base;
pub mod chat;
pub mod config;
pub mod data;
pub mod factory;
pub mod files;
mod fused;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod lora;
pub mod optim;
pub mod registry;
pub mod threads;
pub mod train;

pub use config::LlamaConfig;
pub use llama::Llama;

/// Where models run: the first CUDA GPU when the binary is built with the `cuda` feature and
/// one is present, the CPU otherwise. The fused kernels, the one-pass optimizer and the frozen
/// products are CPU code; on a GPU the decoder takes candle's composed ops (which have CUDA
/// kernels) and candle's `AdamW`.
pub fn device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = candle_core::Device::cuda_if_available(0) {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| tracing::info!(device = ?d, "models run on the GPU"));
            return d;
        }
    }
    candle_core::Device::Cpu
}
