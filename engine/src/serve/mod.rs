//! Serving: one copy of each base in memory (quantised to Q8 by default), adapters in a
//! budgeted cache, and continuous batching in which requests for different adapters share
//! every forward step, each adapter's delta added to its own rows inside the base's products.
//! The API layer (`api::completions`) speaks OpenAI's protocol over it.

pub mod cache;
pub mod decoder;
pub mod engine;
pub mod lora;
pub mod matrix;
pub mod service;

#[cfg(test)]
mod tests;
