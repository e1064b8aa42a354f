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
//!
//! The library works without the server. A Datanet, one signed batch and a published
//! version, end to end:
//!
//! ```
//! use std::io::Cursor;
//! use tributary::datanet::ingest::{Input, InputFormat};
//! use tributary::{Contribution, Datanets, Key};
//!
//! let dir = tempfile::tempdir()?;
//! let datanets = Datanets::open(dir.path())?;
//! datanets.create(
//!     serde_json::from_str(r#"{"id": "tips", "name": "Tips", "license": "CC0-1.0",
//!         "review": "auto",
//!         "schema": {"fields": [{"name": "text", "type": "string", "required": true}],
//!                    "text_field": "text"}}"#)?,
//!     "carol",
//! )?;
//!
//! // The contributor hashes and signs what they send; the key never leaves them.
//! let rows = b"{\"text\": \"Salt the pasta water.\"}\n{\"text\": \"Rest the steak.\"}\n";
//! let input = || Input::Stream(Box::new(Cursor::new(rows.to_vec())));
//! let key = Key::generate();
//! let commitment = Datanets::commitment(&datanets.get("tips")?, InputFormat::Jsonl, input())?;
//! let signature = key.sign_personal(&commitment.root);
//!
//! let batch = datanets.contribute(
//!     "tips",
//!     Contribution { format: InputFormat::Jsonl, contributor: key.address(), signature },
//!     input(),
//! )?;
//! assert_eq!(batch.accepted, 2);
//!
//! let version = datanets.publish("tips")?;
//! assert_eq!(version.records, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod api;
pub mod attribution;
pub mod auth;
pub mod cli;
pub mod datanet;
pub mod identity;
pub mod jobs;
pub mod ledger;
pub mod merkle;
pub mod model;
pub mod plugin;
pub mod rewards;
pub mod serve;
pub mod store;
pub mod tuning;

pub use datanet::contribute::Contribution;
pub use datanet::service::{DatanetError, Datanets};
pub use datanet::{Batch, BatchStatus, Datanet, DatanetSpec, Version};
pub use identity::{Address, Key, Signature};
