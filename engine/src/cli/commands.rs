//! What each command does. Data goes to stdout as JSON; progress and notes go to stderr.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde::Serialize;

use super::client::Client;
use super::{
    BatchesCommand, Cli, Command, ContributeArgs, DatanetsCommand, KeyArg, KeysCommand,
    RecordsCommand, ServeArgs, TokensCommand, VersionsCommand,
};
use crate::api::datanets::{BatchQuery, HEADER_CONTRIBUTOR, HEADER_SIGNATURE};
use crate::api::{self, AppState, Limits};
use crate::auth::{IssuedToken, Role, TokenRequest};
use crate::datanet::ingest::{Input, InputFormat};
use crate::datanet::service::Datanets;
use crate::datanet::{
    hex32, withdrawal_message, Batch, Datanet, DatanetSpec, DatanetUpdate, InclusionProof,
    InvalidRows, OnValidatorFailure, RecordInfo, ReviewMode, ValidatorAttachment, Version,
    Visibility, WithdrawalReceipt, WithdrawalRequest,
};
use crate::identity::{Address, Key};
use crate::merkle;
use crate::plugin::Plugins;

pub fn run(cli: Cli) -> Result<()> {
    let token = match (&cli.global.token, &cli.global.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let client = Client::new(&cli.global.url, token);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Keys(cmd) => keys(cmd),
        Command::Datanets(cmd) => datanets(&client, cmd),
        Command::Contribute(args) => contribute(&client, args),
        Command::Batches(cmd) => batches(&client, cmd),
        Command::Versions(cmd) => versions(&client, cmd),
        Command::Records(cmd) => records(&client, cmd),
        Command::Tokens(cmd) => tokens(&client, cmd),
        Command::Plugin(cmd) => super::plugin::run(&client, cmd),
        Command::Index(cmd) => super::index::run(cmd),
        Command::Attribute(args) => super::index::attribute(args),
        Command::Models(cmd) => super::models::run(cmd),
        Command::Rewards(cmd) => super::rewards::rewards(&client, cmd),
        Command::Epochs(cmd) => super::rewards::epochs(&client, cmd),
        Command::Ledger(cmd) => super::rewards::ledger(&client, cmd),
    }
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tributary=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let datanets = Datanets::open(&args.data_dir)
        .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?
        .with_bulk_index_min(args.bulk_index_min);
    let plugins = Arc::new(
        Plugins::open(&args.data_dir, datanets.store().clone())
            .context("starting the plugin runtime")?,
    );
    let datanets = Arc::new(datanets.with_plugins(plugins.clone()));
    if let Some(path) = api::ensure_admin_token(&datanets)? {
        eprintln!(
            "First start: the admin token is in {} (readable by you alone).",
            path.display()
        );
    }
    let attributions = Arc::new(crate::attribution::service::Attributions::new(
        &args.data_dir,
        datanets.store().clone(),
    ));
    if args.demo {
        super::demo::seed(&datanets, &plugins, &attributions, &args)?;
    }
    let bases = args
        .bases_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("bases"));
    let models = Arc::new(crate::model::registry::Registry::open(
        &args.data_dir,
        &bases,
        datanets.store().clone(),
    ));
    let (jobs, queued) =
        crate::jobs::Jobs::open(datanets.store().clone()).context("reading the saved jobs")?;
    let jobs = Arc::new(jobs);
    api::models::resume(&jobs, queued, &models, &datanets, &attributions);
    if args.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    let serving = Arc::new(crate::serve::service::Serving::new(
        models.clone(),
        attributions.clone(),
        datanets.store().clone(),
        crate::serve::service::ServeConfig {
            precision: args.precision,
            engine: crate::serve::engine::EngineConfig {
                max_batch: args.max_batch,
                ..Default::default()
            },
            adapter_budget: args.adapter_budget,
            max_rank: args.max_rank,
        },
    ));
    let rewards = Arc::new(crate::rewards::Rewards::new(
        datanets.store().clone(),
        attributions.clone(),
        datanets.clone(),
        Some(plugins.clone()),
    ));
    let state = AppState {
        serving,
        rewards,
        data_dir: args.data_dir.clone(),
        attributions,
        jobs,
        models,
        datanets,
        limits: Limits {
            max_upload_bytes: args.max_upload_bytes,
            ..Limits::default()
        },
        metrics: Arc::default(),
        plugins: Some(plugins),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(api::serve(state, args.listen))
}

pub fn default_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tributary").join("key")
}

fn key_path(arg: &KeyArg) -> PathBuf {
    arg.key.clone().unwrap_or_else(default_key_path)
}

fn load_key(arg: &KeyArg) -> Result<Key> {
    let path = key_path(arg);
    if !path.exists() {
        bail!(
            "no key at {}: make one with `tributary keys new`, or pass --key",
            path.display()
        );
    }
    Ok(Key::load(&path)?)
}

fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::New { key, force } => {
            let path = key_path(&key);
            if path.exists() && !force {
                bail!(
                    "{} already exists; pass --force to replace it",
                    path.display()
                );
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let new = Key::generate();
            api::write_private(&path, &new.to_hex())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("Wrote a new key to {} (keep it secret).", path.display());
            println!("{}", new.address());
        }
        KeysCommand::Address { key } => println!("{}", load_key(&key)?.address()),
    }
    Ok(())
}

fn datanets(client: &Client, cmd: DatanetsCommand) -> Result<()> {
    match cmd {
        DatanetsCommand::Create { spec } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("reading {}", spec.display()))?;
            let mut de = serde_json::Deserializer::from_str(&text);
            let parsed: DatanetSpec = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| anyhow::anyhow!("{}: {}: {}", spec.display(), e.path(), e.inner()))?;
            print_json(&client.post::<_, Datanet>("/v1/datanets", &parsed)?)
        }
        DatanetsCommand::List => print_json(&client.get::<Vec<Datanet>>("/v1/datanets")?),
        DatanetsCommand::Get { id } => {
            print_json(&client.get::<Datanet>(&format!("/v1/datanets/{id}"))?)
        }
        DatanetsCommand::Update {
            id,
            name,
            description,
            review,
            invalid_rows,
            visibility,
            validators,
            on_validator_failure,
        } => {
            let validators = validators
                .map(|json| {
                    serde_json::from_str::<Vec<ValidatorAttachment>>(&json)
                        .map_err(|e| anyhow::anyhow!("--validators: {e}"))
                })
                .transpose()?;
            let update = DatanetUpdate {
                validators,
                on_validator_failure: on_validator_failure.map(|f| {
                    if f == "hold" {
                        OnValidatorFailure::Hold
                    } else {
                        OnValidatorFailure::Reject
                    }
                }),
                name,
                description,
                tags: None,
                review: review.map(|r| {
                    if r == "auto" {
                        ReviewMode::Auto
                    } else {
                        ReviewMode::Manual
                    }
                }),
                invalid_rows: invalid_rows.map(|r| {
                    if r == "skip" {
                        InvalidRows::Skip
                    } else {
                        InvalidRows::Reject
                    }
                }),
                visibility: visibility.map(|v| {
                    if v == "private" {
                        Visibility::Private
                    } else {
                        Visibility::Public
                    }
                }),
            };
            print_json(&client.patch::<_, Datanet>(&format!("/v1/datanets/{id}"), &update)?)
        }
    }
}

fn bytes_bar(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

fn contribute(client: &Client, args: ContributeArgs) -> Result<()> {
    let key = load_key(&args.key)?;
    let format = match &args.format {
        Some(f) => InputFormat::parse(f)
            .with_context(|| format!("--format {f:?} is not one of jsonl, csv, parquet, arrow"))?,
        None => InputFormat::from_path(&args.file).with_context(|| {
            format!(
                "cannot tell the format of {} from its extension; pass --format",
                args.file.display()
            )
        })?,
    };
    let datanet: Datanet = client.get(&format!("/v1/datanets/{}", args.datanet))?;
    let open =
        |path: &Path| File::open(path).with_context(|| format!("opening {}", path.display()));
    let length = open(&args.file)?.metadata()?.len();

    let hashing = bytes_bar(length, "hashing");
    let commitment = if format == InputFormat::Jsonl {
        // Lines are independent: the file is read in parts on every core.
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bar = hashing.clone();
        let progress = std::sync::Arc::new(move |n| bar.inc(n));
        Datanets::commitment_of_jsonl_file(&datanet, &args.file, parts, progress)
            .with_context(|| format!("reading {}", args.file.display()))?
    } else {
        let input = if format.needs_seek() {
            Input::File(open(&args.file)?)
        } else {
            Input::Stream(Box::new(hashing.wrap_read(open(&args.file)?)))
        };
        Datanets::commitment(&datanet, format, input)?
    };
    hashing.finish_and_clear();
    if !commitment.errors.is_empty() {
        let listed: Vec<String> = commitment
            .errors
            .errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect();
        if datanet.spec.invalid_rows == InvalidRows::Reject {
            bail!(
                "{} row problem(s); Datanet {:?} refuses batches with bad rows, so nothing was sent:\n{}",
                commitment.errors.total,
                datanet.spec.id,
                listed.join("\n")
            );
        }
        eprintln!(
            "{} bad row(s) will be skipped:\n{}",
            commitment.errors.total,
            listed.join("\n")
        );
    }
    let signature = key.sign_personal(&commitment.root);
    eprintln!(
        "{} valid rows, Merkle root {}, signed by {}",
        commitment.ids.len(),
        hex32(&commitment.root),
        key.address()
    );
    if args.dry_run {
        return print_json(&serde_json::json!({
            "contributor": key.address(),
            "merkle_root": hex32(&commitment.root),
            "signature": signature.to_hex(),
            "rows": commitment.ids.len(),
            "invalid": commitment.errors.total,
        }));
    }
    let uploading = bytes_bar(length, "uploading");
    let request = client
        .request(
            Method::POST,
            &format!("/v1/datanets/{}/contributions", args.datanet),
        )
        .query(&[("format", format.name())])
        .header(reqwest::header::CONTENT_TYPE, format.media_type())
        .header(HEADER_CONTRIBUTOR, key.address().to_string())
        .header(HEADER_SIGNATURE, signature.to_hex());
    let batch: Batch = client.upload(request, uploading.wrap_read(open(&args.file)?), length)?;
    uploading.finish_and_clear();
    eprintln!(
        "batch {}: {} new, {} duplicate, {} skipped; {:?}",
        batch.id, batch.accepted, batch.duplicates, batch.invalid, batch.status
    );
    print_json(&batch)
}

fn batches(client: &Client, cmd: BatchesCommand) -> Result<()> {
    match cmd {
        BatchesCommand::List {
            datanet,
            status,
            after,
            limit,
        } => {
            let query = BatchQuery {
                status,
                after,
                limit,
            };
            let path = format!("/v1/datanets/{datanet}/contributions");
            print_json(&client.get_query::<_, Vec<Batch>>(&path, &query)?)
        }
        BatchesCommand::Get { datanet, batch } => print_json(
            &client.get::<Batch>(&format!("/v1/datanets/{datanet}/contributions/{batch}"))?,
        ),
        BatchesCommand::Approve {
            datanet,
            batch,
            reason,
        } => review(client, &datanet, batch, "approve", reason),
        BatchesCommand::Reject {
            datanet,
            batch,
            reason,
        } => review(client, &datanet, batch, "reject", reason),
    }
}

fn review(
    client: &Client,
    datanet: &str,
    batch: u64,
    decision: &str,
    reason: Option<String>,
) -> Result<()> {
    let body = serde_json::json!({ "decision": decision, "reason": reason });
    print_json(&client.post::<_, Batch>(
        &format!("/v1/datanets/{datanet}/contributions/{batch}/review"),
        &body,
    )?)
}

fn versions(client: &Client, cmd: VersionsCommand) -> Result<()> {
    match cmd {
        VersionsCommand::Publish { datanet } => {
            print_json(&client.post_empty::<Version>(&format!("/v1/datanets/{datanet}/versions"))?)
        }
        VersionsCommand::List { datanet } => {
            print_json(&client.get::<Vec<Version>>(&format!("/v1/datanets/{datanet}/versions"))?)
        }
        VersionsCommand::Get { datanet, version } => print_json(
            &client.get::<Version>(&format!("/v1/datanets/{datanet}/versions/{version}"))?,
        ),
        VersionsCommand::Proof {
            datanet,
            version,
            record,
        } => print_json(&client.get::<InclusionProof>(&format!(
            "/v1/datanets/{datanet}/versions/{version}/proofs/{record}"
        ))?),
        VersionsCommand::Export {
            datanet,
            version,
            out,
        } => {
            let mut response = client.send(client.request(
                Method::GET,
                &format!("/v1/datanets/{datanet}/versions/{version}/export"),
            ))?;
            let length = response.content_length().unwrap_or(0);
            let bar = bytes_bar(length, "exporting");
            let tmp = out.with_extension("parquet.part");
            let mut file = bar.wrap_write(
                File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
            );
            response
                .copy_to(&mut file)
                .context("downloading the export")?;
            bar.finish_and_clear();
            std::fs::rename(&tmp, &out)?;
            eprintln!("wrote {} ({length} bytes)", out.display());
            Ok(())
        }
    }
}

fn records(client: &Client, cmd: RecordsCommand) -> Result<()> {
    match cmd {
        RecordsCommand::Get { datanet, record } => print_json(
            &client.get::<RecordInfo>(&format!("/v1/datanets/{datanet}/records/{record}"))?,
        ),
        RecordsCommand::Withdraw {
            datanet,
            records,
            key,
        } => {
            let key = load_key(&key)?;
            let ids = records
                .iter()
                .map(|r| {
                    crate::datanet::parse_hex32(r)
                        .with_context(|| format!("{r:?} is not a record id"))
                })
                .collect::<Result<Vec<_>>>()?;
            let root = merkle::root_of_bytes32(&ids);
            let signature = key.sign_personal(withdrawal_message(&datanet, &root).as_bytes());
            let request = WithdrawalRequest {
                record_ids: records,
                contributor: key.address(),
                signature: signature.to_hex(),
            };
            print_json(&client.post::<_, WithdrawalReceipt>(
                &format!("/v1/datanets/{datanet}/withdrawals"),
                &request,
            )?)
        }
    }
}

fn tokens(client: &Client, cmd: TokensCommand) -> Result<()> {
    match cmd {
        TokensCommand::Create {
            subject,
            role,
            datanets,
            address,
        } => {
            let role = match role.as_str() {
                "admin" => Role::Admin,
                "curator" => Role::Curator,
                "contributor" => Role::Contributor,
                _ => Role::Reader,
            };
            let address = address.map(|a| a.parse::<Address>()).transpose()?;
            let request = TokenRequest {
                subject,
                role,
                datanets,
                address,
            };
            print_json(&client.post::<_, IssuedToken>("/v1/tokens", &request)?)
        }
    }
}
