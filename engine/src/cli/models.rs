//! `tributary models train`: train a small decoder from scratch on this machine, from a
//! version's Parquet export or a JSONL file, with a progress bar; the model lands in Hugging
//! Face's layout (config.json, model.safetensors, tokenizer.json) with a report of the run.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::train::TrainConfig;
use crate::model::LlamaConfig;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Train a decoder from scratch on a corpus.
    Train(TrainArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub source: super::index::CorpusArgs,
    /// The model's directory.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn train(args: TrainArgs) -> Result<()> {
    let tokenizer = args.source.tokenizer()?;
    if args.heads == 0 || !args.hidden.is_multiple_of(2 * args.heads) {
        bail!("--hidden must be a multiple of twice --heads (rotary positions need an even head size)");
    }
    let model = LlamaConfig {
        hidden_size: args.hidden,
        intermediate_size: args.hidden * 8 / 3 / 8 * 8 + 8,
        num_hidden_layers: args.layers,
        num_attention_heads: args.heads,
        num_key_value_heads: args.heads,
        max_position_embeddings: args.seq_len,
        ..LlamaConfig::tiny(0)
    };
    let cfg = TrainConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lr: args.lr,
        warmup_steps: (args.steps / 10).max(1),
        eval_every: (args.steps / 5).max(1),
        seed: args.seed,
        ..TrainConfig::default()
    };
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("training [{bar:40}] {pos}/{len} steps {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = crate::model::factory::train_from_scratch(
        args.source.corpus()?,
        &tokenizer,
        model,
        &cfg,
        &args.out,
        &mut |s| {
            bar.set_position(s.step as u64);
            bar.set_message(format!(
                "loss {:.3} {:.0} tokens/s",
                s.loss, s.tokens_per_second
            ));
        },
    )?;
    bar.finish_and_clear();
    eprintln!(
        "trained {} steps at {:.0} tokens/s; held-out loss {}; written to {}",
        report.steps.len(),
        report.tokens_per_second,
        report
            .final_held_out_loss
            .map_or("none".into(), |l| format!("{l:.3}")),
        args.out.display()
    );
    super::commands::print_json(&report)
}

pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::Train(args) => train(args),
    }
}
