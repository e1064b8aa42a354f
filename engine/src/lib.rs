//! Tributary: an attribution engine for payable AI.
//!
//! People contribute records to curated datasets (Datanets); models are trained on published
//! versions; outputs are attributed to the records that shaped them and fees flow back to the
//! contributors. This crate is the host: the library behind the REST API and the `tributary`
//! binary (CLI and server).
//!
//! Modules, one concern each:
//! - [`datanet`]: schemas, ingest (JSONL, CSV, Parquet, Arrow), Parquet segments, review,
//!   versions with Merkle roots, withdrawals, export;
//! - [`store`]: RocksDB, the only module that touches it;
//! - [`identity`]: addresses, EIP-191 signatures and keys;
//! - [`merkle`]: OpenZeppelin-compatible keccak256 Merkle trees;
//! - [`auth`]: bearer tokens and roles;
//! - [`api`]: the axum server, errors as problem+json, OpenAPI;
//! - [`cli`]: the command line, a typed client of the API.

pub mod api;
pub mod auth;
pub mod cli;
pub mod datanet;
pub mod identity;
pub mod merkle;
pub mod store;

pub use datanet::contribute::Contribution;
pub use datanet::service::{DatanetError, Datanets};
pub use datanet::{Batch, BatchStatus, Datanet, DatanetSpec, Version};
pub use identity::{Address, Key, Signature};
