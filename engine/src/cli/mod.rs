//! The `tributary` command line: `serve` runs the server; the other commands are a client of
//! its API (at `--url`), signing contributions locally with the contributor's key, which
//! never leaves this machine.

mod client;
mod commands;
mod demo;
mod index;
mod models;
mod plugin;
mod rewards;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use client::{Client, ClientError};

use crate::datanet::BatchStatus;

#[derive(Debug, Parser)]
#[command(
    name = "tributary",
    version,
    about = "Payable AI: Datanets, signed contributions, attribution"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The server to talk to.
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Bearer token for the API.
    #[arg(long, global = true, env = "TRIBUTARY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token (for example `tributary-data/admin-token`).
    #[arg(long, global = true, env = "TRIBUTARY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Threads for model training and inference (candle's CPU kernels). Its thread pool
    /// spin-waits, so on a small or busy machine fewer threads can be much faster; see the
    /// README's benchmark table for what was measured.
    #[arg(long, global = true, env = "TRIBUTARY_THREADS")]
    pub threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the REST server.
    Serve(ServeArgs),
    /// Make and show contributor keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create, list, show and update Datanets.
    #[command(subcommand)]
    Datanets(DatanetsCommand),
    /// Sign and upload a batch of records (JSONL, CSV, Parquet or Arrow IPC).
    Contribute(ContributeArgs),
    /// List, show and review contribution batches.
    #[command(subcommand)]
    Batches(BatchesCommand),
    /// Publish, list and export versions; fetch inclusion proofs.
    #[command(subcommand)]
    Versions(VersionsCommand),
    /// Look up and withdraw records.
    #[command(subcommand)]
    Records(RecordsCommand),
    /// Make API tokens (admin).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Install, list, remove, test and scaffold WASM plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Build and query span indexes over a version's text (on this machine, no server).
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Trace a text to the records of an index it came from, and score them.
    Attribute(index::AttributeArgs),
    /// Train models (on this machine, no server).
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Model terms, accounts, fees and curators' flags.
    #[command(subcommand)]
    Rewards(rewards::RewardsCommand),
    /// Close epochs, settle them, and fetch claims with their proofs.
    #[command(subcommand)]
    Epochs(rewards::EpochsCommand),
    /// Choose the ledger epochs settle on, and check what it recorded.
    #[command(subcommand)]
    Ledger(rewards::LedgerCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where RocksDB and the Parquet segments live.
    #[arg(long, env = "TRIBUTARY_DATA_DIR", default_value = "tributary-data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seed a demo Datanet with a published version, and print a worked example.
    #[arg(long)]
    pub demo: bool,
    /// Largest contribution upload accepted, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    pub max_upload_bytes: u64,
    /// Batches with at least this many new records load their index through an SST file.
    #[arg(long, default_value_t = crate::datanet::contribute::BULK_INDEX_MIN, hide = true)]
    pub bulk_index_min: usize,
    /// With --demo: the folder of the example plugins' components (`./dev demo` builds them
    /// into target/plugins/wasm32-wasip2/plugin); the demo installs two and attaches them.
    #[arg(long, requires = "demo")]
    pub demo_plugins: Option<PathBuf>,
    /// Where pretrained bases (GGUF files) are found for LoRA runs; default `DATA_DIR/bases`.
    /// `./dev` fetches SmolLM2-135M-Instruct into `.cache/bases`.
    #[arg(long, env = "TRIBUTARY_BASES_DIR")]
    pub bases_dir: Option<PathBuf>,
    /// How served models hold their linear layers' weights: q8 (blocks of int8, a quarter
    /// of the memory traffic) or f32.
    #[arg(long, default_value = "q8")]
    pub precision: crate::serve::matrix::Precision,
    /// Requests decoded together per base; more wait for a slot.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Bytes of LoRA adapters held in memory; the least recently used unpinned ones go first.
    #[arg(long, default_value_t = 1 << 30)]
    pub adapter_budget: usize,
    /// The highest LoRA rank an adapter may have to be served.
    #[arg(long, default_value_t = 64)]
    pub max_rank: usize,
}

#[derive(Debug, Args)]
pub struct KeyArg {
    /// The contributor's key file (hex secp256k1 secret key).
    #[arg(long, env = "TRIBUTARY_KEY")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new key and print its address.
    New {
        #[command(flatten)]
        key: KeyArg,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Print the address of a key.
    Address {
        #[command(flatten)]
        key: KeyArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatanetsCommand {
    /// Create a Datanet from a JSON spec (id, name, license, schema, ...).
    Create {
        spec: PathBuf,
    },
    List,
    Get {
        id: String,
    },
    /// Change settings after creation.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, value_parser = ["manual", "auto"])]
        review: Option<String>,
        #[arg(long, value_parser = ["reject", "skip"])]
        invalid_rows: Option<String>,
        #[arg(long, value_parser = ["public", "private"])]
        visibility: Option<String>,
        /// The validator chain, as a JSON array of {"plugin": ID, "config": {...}}; `[]`
        /// detaches every validator.
        #[arg(long)]
        validators: Option<String>,
        #[arg(long, value_parser = ["reject", "hold"])]
        on_validator_failure: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ContributeArgs {
    pub datanet: String,
    pub file: PathBuf,
    /// jsonl, csv, parquet or arrow; by default from the file's extension.
    #[arg(long)]
    pub format: Option<String>,
    #[command(flatten)]
    pub key: KeyArg,
    /// Check, hash and sign, print the signed root and signature, and upload nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum BatchesCommand {
    List {
        datanet: String,
        #[arg(long, value_parser = parse_status)]
        status: Option<BatchStatus>,
        /// Only batches numbered above this one.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (up to 1000).
        #[arg(long)]
        limit: Option<usize>,
    },
    Get {
        datanet: String,
        batch: u64,
    },
    Approve {
        datanet: String,
        batch: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    Reject {
        datanet: String,
        batch: u64,
        #[arg(long)]
        reason: Option<String>,
    },
}

fn parse_status(s: &str) -> Result<BatchStatus, String> {
    match s {
        "pending" => Ok(BatchStatus::Pending),
        "approved" => Ok(BatchStatus::Approved),
        "rejected" => Ok(BatchStatus::Rejected),
        other => Err(format!("{other:?} is not pending, approved or rejected")),
    }
}

#[derive(Debug, Subcommand)]
pub enum VersionsCommand {
    /// Publish a version of every approved batch, minus withdrawn records.
    Publish {
        datanet: String,
    },
    List {
        datanet: String,
    },
    Get {
        datanet: String,
        version: u32,
    },
    /// Download a version as Parquet.
    Export {
        datanet: String,
        version: u32,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// The Merkle inclusion proof of a record in a version.
    Proof {
        datanet: String,
        version: u32,
        record: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    Get {
        datanet: String,
        record: String,
    },
    /// Withdraw records you contributed (signed with your key).
    Withdraw {
        datanet: String,
        #[arg(required = true)]
        records: Vec<String>,
        #[command(flatten)]
        key: KeyArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    Create {
        #[arg(long)]
        subject: String,
        #[arg(long, value_parser = ["admin", "curator", "contributor", "reader"])]
        role: String,
        /// Scope the token to a Datanet (repeatable).
        #[arg(long = "datanet")]
        datanets: Vec<String>,
        /// For contributors: the only address the token may contribute as.
        #[arg(long)]
        address: Option<String>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    crate::model::threads::configure(cli.global.threads);
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
