//! Models: a Llama-style decoder on candle whose every linear layer can carry a LoRA delta,
//! with a config that mirrors Hugging Face's `config.json` and weights under Hugging Face's
//! names, so that what we save, `transformers` loads.

pub mod config;
pub mod factory;
pub mod files;
pub mod llama;
pub mod lora;
pub mod train;

pub use config::LlamaConfig;
pub use llama::Llama;
