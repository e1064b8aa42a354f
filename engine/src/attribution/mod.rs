//! Attribution: which training records an output came from. The span method finds the parts
//! of an output that occur verbatim in a version's text, through a suffix-array index over
//! its tokens, and scores the records and contributors they occur in.

pub mod corpus;
pub mod error;
pub mod index;
pub mod query;
pub mod record;
pub mod service;
pub mod tokenizer;
pub mod trace;

pub use error::AttributionError;
pub use index::Index;
pub use tokenizer::Tokenizer;
