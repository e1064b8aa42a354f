//! The decoder's configuration, field for field as Hugging Face's `LlamaConfig` writes
//! `config.json`.

use serde::{Deserialize, Serialize};

fn architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".into()]
}

fn model_type() -> String {
    "llama".into()
}

fn hidden_act() -> String {
    "silu".into()
}

fn rope_theta() -> f64 {
    10_000.0
}

fn rms_norm_eps() -> f64 {
    1e-5
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Fewer than the attention heads: grouped-query attention.
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// A model small enough to train in seconds on a CPU, for tests.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            architectures: architectures(),
            model_type: model_type(),
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 64,
            rms_norm_eps: rms_norm_eps(),
            rope_theta: rope_theta(),
            tie_word_embeddings: false,
            hidden_act: hidden_act(),
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the shape constraints a forward pass relies on.
    pub fn check(&self) -> Result<(), String> {
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err("hidden_size must be a multiple of num_attention_heads".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err("the head dimension must be even for rotary positions".into());
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} is not supported (silu is)",
                self.hidden_act
            ));
        }
        Ok(())
    }
}
