//! `tributary models`: train a decoder from scratch or a LoRA adapter over a base, on this
//! machine, from a version's Parquet export or a JSONL file, with a progress bar; convert a
//! GGUF base to Hugging Face's layout; generate; and write logits for cross-checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::base::Base;
use crate::model::chat::{ChatTemplate, Message};
use crate::model::data::{self, TextSource};
use crate::model::factory::{self, LoraRun, Outcome};
use crate::model::generate::Sampling;
use crate::model::llama::LORA_TARGETS;
use crate::model::lora::LoraSpec;
use crate::model::train::{StepReport, TrainConfig};
use crate::model::{adapter, Llama, LlamaConfig};
use crate::serve::decoder::for_base;
use crate::serve::engine::{Engine, EngineConfig, Event, Job};
use crate::serve::lora::Lora;
use crate::serve::matrix::Precision;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Train a decoder from scratch on a corpus.
    Train(TrainArgs),
    /// Train a LoRA adapter over a frozen base (a .gguf file or a model directory).
    Finetune(FinetuneArgs),
    /// Write a GGUF base in Hugging Face's layout (dequantised safetensors, tokenizer.json).
    Convert {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Continue a prompt, or answer a chat message.
    Generate(GenerateArgs),
    /// Write the logits of a text or of token ids to a safetensors file (`ids`, `logits`).
    Logits(LogitsArgs),
}

/// The training data and the fields to learn from.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// A version's Parquet export or a JSONL file.
    #[arg(long)]
    pub data: PathBuf,
    /// The text field (ignored with --prompt-field).
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Chat data: the field of the user's turn (with --response-field).
    #[arg(long, requires = "response_field")]
    pub prompt_field: Option<String>,
    /// Chat data: the field of the assistant's answer.
    #[arg(long, requires = "prompt_field")]
    pub response_field: Option<String>,
}

impl DataArgs {
    fn source(&self) -> TextSource {
        match (&self.prompt_field, &self.response_field) {
            (Some(p), Some(r)) => TextSource::Chat {
                prompt: p.clone(),
                response: r.clone(),
            },
            _ => TextSource::Field(self.text_field.clone()),
        }
    }

    fn texts(&self, template: &ChatTemplate) -> Result<Vec<String>> {
        let texts = data::read_texts(&self.data, &self.source(), template)?;
        if texts.is_empty() {
            bail!("{}: no records to train on", self.data.display());
        }
        Ok(texts)
    }
}

/// Hyperparameters both kinds of run share.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The output directory.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Save the trainable weights every this many steps, under OUT/checkpoints/.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Held-out loss every this many steps (default: a fifth of the steps; 0: never).
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl RunArgs {
    fn config(&self, default_lr: f64) -> Result<TrainConfig> {
        if self.seq_len == 0 || self.batch_size == 0 || self.steps == 0 {
            bail!("--seq-len, --batch-size and --steps must be at least 1");
        }
        let lr = self.lr.unwrap_or(default_lr);
        if !(lr.is_finite() && lr > 0.0 && lr < 1.0) {
            bail!("--lr must be a number in (0, 1)");
        }
        Ok(TrainConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            lr,
            warmup_steps: (self.steps / 10).max(1),
            eval_every: self.eval_every.unwrap_or((self.steps / 5).max(1)),
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            ..TrainConfig::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// `bytes`, `bpe:VOCAB` (train a byte-level BPE on the data) or a tokenizer.json.
    #[arg(long, default_value = "bytes")]
    pub tokenizer: String,
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
}

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// The base: a .gguf file or a model directory.
    #[arg(long)]
    pub base: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub r: usize,
    /// LoRA alpha; the delta is scaled by alpha / r.
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// The layers that get an adapter, comma-separated.
    #[arg(long, default_value = "q_proj,v_proj", value_delimiter = ',')]
    pub targets: Vec<String>,
}

/// A model to run: a base, and optionally an adapter over it.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A .gguf file or a model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT adapter directory to put on the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl ModelArgs {
    fn load(&self) -> Result<(Base, Llama)> {
        let device = crate::model::device();
        let base = Base::open(&self.model, &device)?;
        let mut model = base.model(&device)?;
        if let Some(dir) = &self.adapter {
            adapter::apply(&mut model, dir, candle_core::DType::F32)?;
        }
        Ok((base, model))
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to continue as it is.
    #[arg(long, conflicts_with = "chat")]
    pub prompt: Option<String>,
    /// A user message, put through the model's chat template.
    #[arg(long)]
    pub chat: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How the linear layers hold their weights: q8 (blocks of int8) or f32.
    #[arg(long, default_value = "q8")]
    pub precision: Precision,
    /// Generate this many answers to the prompt at once (seeds `seed`, `seed + 1`, ...),
    /// batched, and report the aggregate speed.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Keep going past the end-of-text token, to `--max-tokens` (for measuring).
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, conflicts_with = "ids")]
    pub text: Option<String>,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    /// The safetensors file to write.
    #[arg(long)]
    pub out: PathBuf,
}

fn progress_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("training [{bar:40}] {pos}/{len} steps {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn show(bar: &ProgressBar) -> impl FnMut(&StepReport) + '_ {
    move |s: &StepReport| {
        bar.set_position(s.step as u64);
        bar.set_message(format!(
            "loss {:.3} {:.0} tokens/s",
            s.loss, s.tokens_per_second
        ));
    }
}

fn finish(bar: ProgressBar, outcome: &Outcome, out: &Path) -> Result<()> {
    bar.finish_and_clear();
    eprintln!(
        "trained {} steps at {:.0} tokens/s; held-out loss {}; written to {}",
        outcome.report.steps.len(),
        outcome.report.tokens_per_second,
        outcome
            .report
            .final_held_out_loss
            .map_or("none".into(), |l| format!("{l:.3}")),
        out.display()
    );
    super::commands::print_json(outcome)
}

fn train(args: TrainArgs) -> Result<()> {
    if args.heads == 0 || !args.hidden.is_multiple_of(2 * args.heads) {
        bail!("--hidden must be a multiple of twice --heads (rotary positions need an even head size)");
    }
    let texts = args.data.texts(&ChatTemplate::chatml())?;
    let tokenizer = super::index::tokenizer_from_spec(&args.tokenizer, || Ok(texts.iter()))?;
    let model = LlamaConfig {
        hidden_size: args.hidden,
        intermediate_size: args.hidden * 8 / 3 / 8 * 8 + 8,
        num_hidden_layers: args.layers,
        num_attention_heads: args.heads,
        num_key_value_heads: args.heads,
        // Rotary positions have no weights: a longer context than the training windows costs
        // only the table, and lets the model read (if not master) longer texts.
        max_position_embeddings: (args.run.seq_len + 1).max(2048),
        ..LlamaConfig::tiny(0)
    };
    let cfg = args.run.config(3e-3)?;
    let bar = progress_bar(cfg.steps);
    let outcome = factory::train_from_scratch(
        &texts,
        &tokenizer,
        model,
        &cfg,
        &args.run.out,
        &mut show(&bar),
    )?;
    finish(bar, &outcome, &args.run.out)
}

fn finetune(args: FinetuneArgs) -> Result<()> {
    if let Some(t) = args
        .targets
        .iter()
        .find(|t| !LORA_TARGETS.contains(&t.as_str()))
    {
        bail!("--targets: {t:?} is not one of {}", LORA_TARGETS.join(", "));
    }
    if args.r == 0 {
        bail!("--r must be at least 1");
    }
    if !(args.alpha.is_finite() && args.alpha > 0.0 && args.alpha <= 1e4) {
        bail!("--alpha must be a number in (0, 10000]");
    }
    eprintln!("loading the base {}", args.base.display());
    let base = Base::open(&args.base, &crate::model::device())?;
    let texts = args.data.texts(&base.template()?)?;
    let cfg = args.run.config(1e-3)?;
    let run = LoraRun {
        spec: LoraSpec {
            r: args.r,
            alpha: args.alpha,
        },
        targets: args.targets.clone(),
    };
    let bar = progress_bar(cfg.steps);
    let outcome = factory::fine_tune(&texts, &base, &run, &cfg, &args.run.out, &mut show(&bar))?;
    finish(bar, &outcome, &args.run.out)
}

fn convert(gguf: &Path, out: &Path) -> Result<()> {
    let base = Base::open(gguf, &candle_core::Device::Cpu)?;
    base.save(out)?;
    eprintln!("{} written to {}", base.name, out.display());
    super::commands::print_json(&serde_json::json!({
        "name": base.name,
        "config": base.config,
        "gguf_hash": base.weights_hash,
    }))
}

fn generate(args: GenerateArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut base = Base::open_meta(&args.model.model, &candle_core::Device::Cpu)?;
    let decoder = Arc::new(for_base(&mut base, args.precision)?);
    let adapter = match &args.model.adapter {
        Some(dir) => Some(Arc::new(Lora::read(dir, &base.config)?)),
        None => None,
    };
    let text = match (&args.prompt, &args.chat) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => base.template()?.render(&[Message::new("user", c)], true)?,
        (None, None) => bail!("give --prompt TEXT or --chat MESSAGE"),
    };
    let prompt = base.tokenizer.encode(&text)?;
    let sampling = Sampling {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop: if args.ignore_eos {
            vec![]
        } else {
            vec![base.eos()]
        },
    };
    let engine = Engine::start(
        decoder,
        EngineConfig {
            max_batch: args.batch,
            ..EngineConfig::default()
        },
    )?;
    let started = std::time::Instant::now();
    let receivers: Vec<_> = (0..args.batch)
        .map(|i| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            engine.submit(Job {
                prompt: prompt.clone(),
                sampling: Sampling {
                    seed: args.seed + i as u64,
                    ..sampling.clone()
                },
                adapter: adapter.clone(),
                events: tx,
            });
            rx
        })
        .collect();
    let mut outputs = Vec::new();
    for mut rx in receivers {
        let mut tokens = Vec::new();
        let summary = loop {
            match rx.blocking_recv() {
                Some(Event::Token(t)) => tokens.push(t),
                Some(Event::Done(s)) => break s,
                Some(Event::Failed(e)) => bail!("generation failed: {e}"),
                None => bail!("generation stopped"),
            }
        };
        outputs.push((tokens, summary));
    }
    let secs = started.elapsed().as_secs_f64();
    let (tokens, first) = &outputs[0];
    println!("{}", base.tokenizer.decode(tokens)?);
    let total: usize = outputs.iter().map(|(t, _)| t.len()).sum();
    let decode = outputs.iter().map(|(_, s)| s.decode_s).fold(0.0, f64::max);
    eprintln!(
        "{} prompt tokens, {total} generated in {secs:.2} s ({:.1} tokens/s; decoding {:.1} tokens/s after a {:.3} s prefill), batch {}, weights {} ({} MB), finish: {:?}",
        prompt.len(),
        total as f64 / secs.max(1e-9),
        (total - outputs.len()) as f64 / decode.max(1e-9),
        first.prefill_s,
        args.batch,
        engine.decoder.layouts(),
        engine.decoder.bytes() / 1_000_000,
        first.finish,
    );
    Ok(())
}

fn logits(args: LogitsArgs) -> Result<()> {
    let (base, model) = args.model.load()?;
    let ids = match (&args.ids, &args.text) {
        (Some(ids), _) => ids.clone(),
        (None, Some(t)) => base.tokenizer.encode(t)?,
        (None, None) => bail!("give --text TEXT or --ids 1,2,3"),
    };
    if ids.is_empty() {
        bail!("no tokens to score");
    }
    let device = crate::model::device();
    let input = candle_core::Tensor::from_slice(&ids, (1, ids.len()), &device)?;
    let logits = model.forward(&input)?.squeeze(0)?;
    let ids_tensor = candle_core::Tensor::from_slice(
        &ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        ids.len(),
        &device,
    )?;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([
            ("ids".to_string(), ids_tensor),
            ("logits".to_string(), logits),
        ]),
        &args.out,
    )?;
    eprintln!("{} tokens scored into {}", ids.len(), args.out.display());
    Ok(())
}

pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::Train(args) => train(args),
        ModelsCommand::Finetune(args) => finetune(args),
        ModelsCommand::Convert { gguf, out } => convert(&gguf, &out),
        ModelsCommand::Generate(args) => generate(args),
        ModelsCommand::Logits(args) => logits(args),
    }
}
