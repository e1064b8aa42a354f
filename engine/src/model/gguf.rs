//! A pretrained base read from a GGUF file (llama.cpp's format), such as SmolLM2-135M-Instruct:
//! the config from the file's `llama.*` metadata, every tensor dequantised to our dtype under its
//! Hugging Face name, and the BPE tokenizer rebuilt from `tokenizer.ggml.*` as a standard
//! `tokenizer.json`. Training needs the dequantised weights: candle's quantized matmul has no
//! backward pass, and its Q4_1 kernels have no AVX2 path, so dequantised is also faster here.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use super::LlamaConfig;

/// What can go wrong reading a GGUF base.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("GGUF metadata {key}: {message}")]
    Metadata { key: String, message: String },
    #[error("GGUF tensor {name}: {message}")]
    Tensor { name: String, message: String },
    #[error("GGUF tokenizer: {0}")]
    Tokenizer(String),
}

/// A base model as read from GGUF.
pub struct GgufBase {
    pub config: LlamaConfig,
    /// Dequantised weights under Hugging Face names (`model.layers.0.self_attn.q_proj.weight`).
    pub tensors: HashMap<String, Tensor>,
    /// The rebuilt tokenizer, as `tokenizer.json`.
    pub tokenizer_json: String,
    /// The Jinja chat template the file carries, if any.
    pub chat_template: Option<String>,
    /// `general.name`, for the model card.
    pub name: Option<String>,
}

fn meta<'a>(content: &'a Content, key: &str) -> Result<&'a Value, GgufError> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            message: "missing".into(),
        })
}

fn meta_err(key: &str) -> impl Fn(candle_core::Error) -> GgufError + '_ {
    move |e| GgufError::Metadata {
        key: key.into(),
        message: e.to_string(),
    }
}

fn meta_usize(content: &Content, key: &str) -> Result<usize, GgufError> {
    let v = meta(content, key)?;
    // Writers differ in the integer width they use for the same key.
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .or_else(|_| v.to_i32().map(|x| x as usize))
        .map_err(meta_err(key))
}

fn meta_f64(content: &Content, key: &str) -> Result<Option<f64>, GgufError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map(Some)
            .map_err(meta_err(key)),
    }
}

fn meta_u32_opt(content: &Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

fn meta_strings(content: &Content, key: &str) -> Result<Vec<String>, GgufError> {
    meta(content, key)?
        .to_vec()
        .map_err(meta_err(key))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(meta_err(key)))
        .collect()
}

/// The config of a `llama` GGUF file.
fn config(content: &Content) -> Result<LlamaConfig, GgufError> {
    let arch = meta(content, "general.architecture")?
        .to_string()
        .map_err(meta_err("general.architecture"))?;
    if arch != "llama" {
        return Err(GgufError::Metadata {
            key: "general.architecture".into(),
            message: format!("{arch:?} is not supported (llama is)"),
        });
    }
    let vocab_size = meta(content, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(meta_err("tokenizer.ggml.tokens"))?
        .len();
    let heads = meta_usize(content, "llama.attention.head_count")?;
    let config = LlamaConfig {
        vocab_size,
        hidden_size: meta_usize(content, "llama.embedding_length")?,
        intermediate_size: meta_usize(content, "llama.feed_forward_length")?,
        num_hidden_layers: meta_usize(content, "llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: meta_usize(content, "llama.attention.head_count_kv").unwrap_or(heads),
        max_position_embeddings: meta_usize(content, "llama.context_length")?,
        rms_norm_eps: meta_f64(content, "llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: meta_f64(content, "llama.rope.freq_base")?.unwrap_or(10_000.0),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        bos_token_id: meta_u32_opt(content, "tokenizer.ggml.bos_token_id"),
        eos_token_id: meta_u32_opt(content, "tokenizer.ggml.eos_token_id"),
        ..LlamaConfig::tiny(vocab_size)
    };
    config.check().map_err(|message| GgufError::Metadata {
        key: "llama.*".into(),
        message,
    })?;
    Ok(config)
}

/// Hugging Face's name for a GGUF tensor, and whether llama.cpp permuted its rows for
/// interleaved rotary positions (query and key projections: `Some(heads)` to undo it).
fn hf_name(gguf: &str, cfg: &LlamaConfig) -> Option<(String, Option<usize>)> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = top {
        return Some((name.to_string(), None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (hf, permuted) = match part {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(cfg.num_attention_heads)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(cfg.num_key_value_heads)),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), permuted))
}

/// Undoes llama.cpp's row permutation of a query or key projection: it interleaves the two
/// halves of each head for `rope_i`; our decoder rotates halves, as `transformers` does.
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let half = out / heads / 2;
    w.reshape((heads, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// Rebuilds the byte-level BPE of a `gpt2`-model GGUF file: vocabulary and merges from the
/// metadata, control tokens as special added tokens, and the pre-tokenizer its `pre` names.
fn tokenizer(content: &Content) -> Result<String, GgufError> {
    let model = meta(content, "tokenizer.ggml.model")?
        .to_string()
        .map_err(meta_err("tokenizer.ggml.model"))?;
    if model != "gpt2" {
        return Err(GgufError::Tokenizer(format!(
            "tokenizer.ggml.model {model:?} is not supported (gpt2, a byte-level BPE, is)"
        )));
    }
    let tokens = meta_strings(content, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = meta_strings(content, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| GgufError::Tokenizer(format!("merge {m:?} is not two tokens")))
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(meta_err("tokenizer.ggml.token_type"))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| GgufError::Tokenizer(e.to_string()))?;
    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    let byte_level = ByteLevel::new(false, true, true);
    // llama.cpp's `smollm` pre-tokenizer splits every digit before GPT-2's regex.
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "smollm" | "starcoder" | "refact" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "" | "default" | "gpt-2" | "gpt2" => byte_level.into(),
        other => {
            return Err(GgufError::Tokenizer(format!(
                "tokenizer.ggml.pre {other:?} is not supported (smollm, starcoder, gpt-2 are)"
            )))
        }
    };
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    // Type 3 is a control token (`<|im_start|>`): matched whole in text, never split.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(&specials);
    tok.to_string(false)
        .map_err(|e| GgufError::Tokenizer(e.to_string()))
}

/// The config of the GGUF file at `path`, from its metadata alone (no tensor is read).
pub fn read_config(path: &Path) -> Result<LlamaConfig, GgufError> {
    config(&open(path)?.0)
}

/// The file's metadata and tensor table, and the reader positioned after them.
fn open(path: &Path) -> Result<(Content, std::io::BufReader<std::fs::File>), GgufError> {
    let file_err = |e: &dyn std::fmt::Display| GgufError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| file_err(&e))?;
    let mut reader = std::io::BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| file_err(&e))?;
    Ok((content, reader))
}

/// Opens `path` and hands `visit` each tensor that has a Hugging Face name (with whether
/// llama.cpp permuted its rows, and an error maker for it); returns the file's metadata and
/// config.
fn visit_tensors(
    path: &Path,
    device: &Device,
    mut visit: impl FnMut(
        String,
        Option<usize>,
        candle_core::quantized::QTensor,
        &dyn Fn(candle_core::Error) -> GgufError,
    ) -> Result<(), GgufError>,
) -> Result<(Content, LlamaConfig), GgufError> {
    let (content, mut reader) = open(path)?;
    let config = config(&content)?;
    for name in content.tensor_infos.keys() {
        let Some((hf, permuted)) = hf_name(name, &config) else {
            // Tables such as `rope_freqs.weight` are recomputed from the config.
            continue;
        };
        let tensor_err = |e: candle_core::Error| GgufError::Tensor {
            name: name.clone(),
            message: e.to_string(),
        };
        let q = content
            .tensor(&mut reader, name, device)
            .map_err(tensor_err)?;
        visit(hf, permuted, q, &tensor_err)?;
    }
    Ok((content, config))
}

/// A weight matrix as the file stores it, rows in Hugging Face's order.
pub enum Blocks {
    /// GGML's Q4_1: blocks of 32 weights as an f16 scale `d`, an f16 minimum `m` and 16
    /// bytes of nibbles (weight `i` in the low nibble of byte `i`, weight `16 + i` in the high
    /// one), each weight `d · q + m`.
    Q4_1 {
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    },
    /// GGML's Q8_0: blocks of 32 weights as an f16 scale and 32 signed bytes.
    Q8_0 {
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    },
    /// Any other type, dequantised.
    F32(Tensor),
}

/// Bytes of one block of 32 weights.
pub const Q4_1_BLOCK_BYTES: usize = 20;
pub const Q8_0_BLOCK_BYTES: usize = 34;

/// Puts whole rows (`row_bytes` each) in Hugging Face's order: the inverse of llama.cpp's
/// interleaving of each head's two rotary halves (see [`unpermute`]).
fn unpermute_rows(data: &[u8], rows: usize, row_bytes: usize, heads: usize) -> Vec<u8> {
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(data.len());
    for new in 0..rows {
        let (h, rem) = (new / (2 * half), new % (2 * half));
        let (t, j) = (rem / half, rem % half);
        let old = h * 2 * half + j * 2 + t;
        out.extend_from_slice(&data[old * row_bytes..(old + 1) * row_bytes]);
    }
    out
}

/// Reads the weights at `path` as the file stores them: Q4_1 and Q8_0 matrices as their
/// blocks, everything else dequantised to f32; with the config.
pub fn read_blocks(path: &Path) -> Result<(LlamaConfig, HashMap<String, Blocks>), GgufError> {
    let device = Device::Cpu;
    let mut out = HashMap::new();
    let (_, config) = visit_tensors(path, &device, |hf, permuted, q, tensor_err| {
        let dims = q.shape().dims().to_vec();
        let block = match q.dtype() {
            GgmlDType::Q4_1 => Some(Q4_1_BLOCK_BYTES),
            GgmlDType::Q8_0 => Some(Q8_0_BLOCK_BYTES),
            _ => None,
        };
        let blocks = match (block, dims.as_slice()) {
            (Some(bytes), &[rows, cols]) if cols % 32 == 0 => {
                let data = q.data().map_err(tensor_err)?;
                let row_bytes = cols / 32 * bytes;
                if data.len() != rows * row_bytes {
                    return Err(GgufError::Tensor {
                        name: hf.clone(),
                        message: format!("{} bytes for {rows} × {cols}", data.len()),
                    });
                }
                let data = match permuted {
                    Some(heads) => unpermute_rows(&data, rows, row_bytes, heads),
                    None => data.into_owned(),
                };
                if q.dtype() == GgmlDType::Q4_1 {
                    Blocks::Q4_1 { rows, cols, data }
                } else {
                    Blocks::Q8_0 { rows, cols, data }
                }
            }
            _ => {
                let mut w = q.dequantize(&device).map_err(tensor_err)?;
                if let Some(heads) = permuted {
                    w = unpermute(&w, heads).map_err(tensor_err)?;
                }
                Blocks::F32(w.to_dtype(DType::F32).map_err(tensor_err)?)
            }
        };
        out.insert(hf, blocks);
        Ok(())
    })?;
    Ok((config, out))
}

/// Reads the base at `path` onto `device`, its weights dequantised to `dtype`.
pub fn read(path: &Path, dtype: DType, device: &Device) -> Result<GgufBase, GgufError> {
    let mut tensors = HashMap::new();
    let (content, config) = visit_tensors(path, device, |hf, permuted, q, tensor_err| {
        let mut w = q.dequantize(device).map_err(tensor_err)?;
        if let Some(heads) = permuted {
            w = unpermute(&w, heads).map_err(tensor_err)?;
        }
        tensors.insert(hf, w.to_dtype(dtype).map_err(tensor_err)?);
        Ok(())
    })?;
    base_of(&content, config, tensors)
}

/// The base at `path` without its weights: config, tokenizer, chat template and name (for
/// serving, which reads the weights as blocks with [`read_blocks`]).
pub fn read_meta(path: &Path) -> Result<GgufBase, GgufError> {
    let (content, _) = open(path)?;
    let config = config(&content)?;
    base_of(&content, config, HashMap::new())
}

fn base_of(
    content: &Content,
    config: LlamaConfig,
    tensors: HashMap<String, Tensor>,
) -> Result<GgufBase, GgufError> {
    let chat_template = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok().cloned());
    let name = content
        .metadata
        .get("general.name")
        .and_then(|v| v.to_string().ok().cloned());
    Ok(GgufBase {
        tokenizer_json: tokenizer(content)?,
        config,
        tensors,
        chat_template,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuting_restores_halves_from_interleaved_rows() {
        // One head of dimension 4: HF rows [r0, r1, r2, r3] rotate as halves (r0,r2), (r1,r3);
        // llama.cpp stores them interleaved as [r0, r2, r1, r3].
        let gguf = Tensor::new(&[[0f32], [2.], [1.], [3.]], &Device::Cpu).expect("tensor");
        let hf = unpermute(&gguf, 1).expect("unpermute");
        assert_eq!(
            hf.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("vec"),
            vec![0., 1., 2., 3.]
        );
        // Raw rows move the same way: two heads of dimension 4, rows of two bytes.
        let rows: Vec<u8> = [0u8, 2, 1, 3, 4, 6, 5, 7]
            .iter()
            .flat_map(|&r| [r, 100 + r])
            .collect();
        let back = unpermute_rows(&rows, 8, 2, 2);
        let want: Vec<u8> = (0u8..8).flat_map(|r| [r, 100 + r]).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn names_map_to_hugging_face() {
        let cfg = LlamaConfig::tiny(10);
        assert_eq!(
            hf_name("blk.3.attn_k.weight", &cfg),
            Some(("model.layers.3.self_attn.k_proj.weight".into(), Some(2)))
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight", &cfg),
            Some(("model.layers.0.mlp.down_proj.weight".into(), None))
        );
        assert_eq!(hf_name("rope_freqs.weight", &cfg), None);
    }
}
