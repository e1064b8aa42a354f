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
pub mod train;

pub use config::LlamaConfig;
pub use llama::Llama;
