//! `tributary index` and `tributary attribute`: build and query span indexes on this
//! machine, through the library (an index is files; no server is needed to read one).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::commands::print_json;
use crate::attribution::corpus::{self, Corpus};
use crate::attribution::index::{self, BuildInput, BuildProgress};
use crate::attribution::trace::TraceParams;
use crate::attribution::{Index, Tokenizer};

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Build an index over a version's Parquet export or a JSONL file; prints its metadata.
    Build(BuildArgs),
    /// Print an index's metadata.
    Info {
        /// The index's directory.
        #[arg(long)]
        index: PathBuf,
        /// Re-hash the files and check that they match the index's name.
        #[arg(long)]
        verify: bool,
    },
    /// Count occurrences of an n-gram, or of each n-gram of a file (one per line).
    Count {
        #[arg(long)]
        index: PathBuf,
        #[command(flatten)]
        query: QueryArg,
        /// A file of queries, one per line as comma-separated token ids; prints one count a line.
        #[arg(long, conflicts_with_all = ["text", "ids"])]
        queries: Option<PathBuf>,
    },
    /// Count an n-gram, list where it occurs (records and contributors) and what follows it.
    Query {
        #[arg(long)]
        index: PathBuf,
        #[command(flatten)]
        query: QueryArg,
        /// How many occurrences to list.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// The next-token distribution after a context (with its longest matching suffix).
    Next {
        #[arg(long)]
        index: PathBuf,
        #[command(flatten)]
        query: QueryArg,
    },
}

/// Where records come from and how they are tokenized: what index builds and training share.
#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// A Parquet file with the text field, `_record_id` and `_contributor` (a version export).
    #[arg(long, conflicts_with = "jsonl")]
    pub parquet: Option<PathBuf>,
    /// A JSONL file of objects with the text field.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// The field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// `bytes`, `bpe:VOCAB` (train a byte-level BPE on the corpus) or a tokenizer.json.
    #[arg(long, default_value = "bytes")]
    pub tokenizer: String,
}

impl CorpusArgs {
    pub fn corpus(&self) -> Result<Corpus> {
        Ok(match (&self.parquet, &self.jsonl) {
            (Some(p), _) => corpus::parquet(p, &self.text_field)?,
            (None, Some(j)) => corpus::jsonl(j, &self.text_field)?,
            (None, None) => bail!("give the corpus as --parquet FILE or --jsonl FILE"),
        })
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        tokenizer_from_spec(&self.tokenizer, || {
            Ok(self
                .corpus()?
                .documents
                .map_while(|d| d.ok())
                .map(|d| d.text))
        })
    }
}

/// `bytes`, `bpe:VOCAB` (a byte-level BPE trained on `texts`, read only then) or the path of a
/// tokenizer.json: what `--tokenizer` names.
pub fn tokenizer_from_spec<I, S>(spec: &str, texts: impl FnOnce() -> Result<I>) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    if spec == "bytes" {
        return Ok(Tokenizer::Bytes);
    }
    if let Some(vocab) = spec.strip_prefix("bpe:") {
        let vocab: u32 = vocab
            .parse()
            .with_context(|| format!("--tokenizer {spec}: {vocab:?} is not a number"))?;
        eprintln!("training a byte-level BPE of {vocab} tokens on the corpus");
        return Ok(Tokenizer::train_bpe(texts()?, vocab)?);
    }
    let path = Path::new(spec);
    if !path.exists() {
        bail!("--tokenizer {spec:?} is not bytes, bpe:VOCAB or an existing tokenizer.json");
    }
    Ok(Tokenizer::from_file(path)?)
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub source: CorpusArgs,
    /// Where indexes live; the new one is `OUT/<hash>`.
    #[arg(long)]
    pub out: PathBuf,
    /// The Datanet and version the corpus is, recorded in the index.
    #[arg(long)]
    pub datanet: Option<String>,
    #[arg(long)]
    pub version: Option<u32>,
}

/// What to look up: text (tokenized with the index's tokenizer) or token ids.
#[derive(Debug, Args)]
pub struct QueryArg {
    #[arg(long, conflicts_with = "ids")]
    pub text: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
}

#[derive(Debug, Args)]
pub struct AttributeArgs {
    /// The index's directory.
    #[arg(long)]
    pub index: PathBuf,
    #[command(flatten)]
    pub query: QueryArg,
    /// Shortest span, in tokens.
    #[arg(long, default_value_t = TraceParams::default().min_len)]
    pub min_len: usize,
    /// Longest list of occurrences a span may have.
    #[arg(long, default_value_t = TraceParams::default().max_count)]
    pub max_count: u64,
    /// Keep only the rarest this many spans.
    #[arg(long)]
    pub max_spans: Option<usize>,
    /// Token ids a span may end with but not cross.
    #[arg(long, value_delimiter = ',')]
    pub delimiters: Vec<u32>,
}

fn open(dir: &Path) -> Result<Index> {
    Index::open(dir).with_context(|| format!("opening the index at {}", dir.display()))
}

fn ids(index: &Index, query: &QueryArg) -> Result<Vec<u32>> {
    match (&query.text, &query.ids) {
        (Some(text), _) => Ok(index.tokenizer()?.encode(text)?),
        (None, Some(ids)) => Ok(ids.clone()),
        (None, None) => bail!("give the query as --text or --ids"),
    }
}

fn build(args: BuildArgs) -> Result<()> {
    let tokenizer = args.source.tokenizer()?;
    let corpus = args.source.corpus()?;
    let bar = ProgressBar::new(corpus.total.unwrap_or(0));
    let style = |t: &str| {
        ProgressStyle::with_template(t)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    };
    bar.set_style(style(
        "{msg:>10} [{bar:40}] {pos}/{len} records {per_sec} eta {eta}",
    ));
    bar.set_message("tokenizing");
    let started = std::time::Instant::now();
    let progress = |p: BuildProgress| match p {
        BuildProgress::Tokenizing { records, total } => {
            if let Some(t) = total {
                bar.set_length(t);
            } else if bar.length() < Some(records) {
                bar.set_length(records);
            }
            bar.set_position(records);
        }
        BuildProgress::Sorting { tokens } => {
            bar.set_style(style("{msg:>10} {spinner} {elapsed}"));
            bar.set_message(format!("sorting {tokens} suffixes"));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
        }
        BuildProgress::Writing { done, total } => {
            if bar.length() != Some(total) {
                bar.disable_steady_tick();
                bar.set_style(style("{msg:>10} [{bar:40}] {percent}% eta {eta}"));
                bar.set_message("writing");
                bar.set_length(total);
            }
            bar.set_position(done);
        }
    };
    let meta = index::build(
        BuildInput {
            documents: corpus.documents,
            total: corpus.total,
            tokenizer: &tokenizer,
            datanet: args.datanet.clone(),
            version: args.version,
        },
        &args.out,
        &progress,
    )?;
    bar.finish_and_clear();
    eprintln!(
        "built {} in {:.1} s: {} records, {} tokens, {} bytes a token",
        args.out.join(&meta.hash).display(),
        started.elapsed().as_secs_f64(),
        meta.records,
        meta.tokens,
        meta.bytes_per_token()
    );
    print_json(&meta)
}

pub fn run(cmd: IndexCommand) -> Result<()> {
    match cmd {
        IndexCommand::Build(args) => build(args),
        IndexCommand::Info { index, verify } => {
            let index = open(&index)?;
            if verify {
                index.verify()?;
                eprintln!("verified: the files hash to {}", index.meta.hash);
            }
            print_json(&index.meta)
        }
        IndexCommand::Count {
            index,
            query,
            queries,
        } => {
            let index = open(&index)?;
            let Some(path) = queries else {
                println!("{}", index.count(&ids(&index, &query)?));
                return Ok(());
            };
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line?;
                let q: Vec<u32> = line
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| {
                        format!("{} line {}: not comma-separated ids", path.display(), n + 1)
                    })?;
                writeln!(out, "{}", index.count(&q))?;
            }
            Ok(())
        }
        IndexCommand::Query {
            index,
            query,
            limit,
        } => {
            let index = open(&index)?;
            print_json(&index.query(&ids(&index, &query)?, limit, true))
        }
        IndexCommand::Next { index, query } => {
            let index = open(&index)?;
            print_json(&index.next_tokens(&ids(&index, &query)?))
        }
    }
}

pub fn attribute(args: AttributeArgs) -> Result<()> {
    let index = open(&args.index)?;
    let tokenizer = index.tokenizer()?;
    let output = ids(&index, &args.query)?;
    let params = TraceParams {
        min_len: args.min_len,
        max_count: args.max_count,
        delimiters: args.delimiters,
        max_spans: args.max_spans,
    };
    let trace = index.trace(&output, &params)?;
    print_json(&trace.report(&index, &output, &tokenizer))
}
