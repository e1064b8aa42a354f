//! The decoder as the server runs it: no autograd graph, weights in [`Matrix`]es (q, k and v
//! fused into one product, gate and up into another), a key-value cache per sequence, and
//! one forward step over the rows of many sequences at once, each sequence at its own
//! position and with its own adapter. The linear layers see every row of the step together;
//! attention reads each sequence's own cache.
//!
//! It computes what [`crate::model::Llama`] computes (the same rotary tables, the same
//! normalisation), which the tests check.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::lora::Lora;
use super::matrix::{dot, Delta, Matrix, Precision};
use crate::model::gguf::Blocks;
use crate::model::LlamaConfig;

struct Layer {
    attn_norm: Vec<f32>,
    qkv: Matrix,
    o: Matrix,
    mlp_norm: Vec<f32>,
    gate_up: Matrix,
    down: Matrix,
}

pub struct Decoder {
    pub config: LlamaConfig,
    embed: Matrix,
    /// `None` when the embeddings are tied.
    head: Option<Matrix>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `(positions, head_dim / 2)`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One sequence's keys and values so far: per layer, `(positions, kv_heads · head_dim)`.
#[derive(Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.capacity() * 4).sum()
    }
}

/// Where a builder gets a vector (a norm's weights) by name and shape ...
type VectorSource<'a> = dyn Fn(&str, &[usize]) -> Result<Vec<f32>, DecodeError> + 'a;
/// ... and a matrix by name, rows and columns.
type MatrixSource<'a> = dyn Fn(&str, usize, usize) -> Result<Matrix, DecodeError> + 'a;

/// A sequence's part of a step: the tokens that follow what its cache holds, and the adapter
/// its rows use.
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub adapter: Option<&'a Lora>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} is missing from the weights")]
    Missing(String),
    #[error("{name}: {message}")]
    Tensor { name: String, message: String },
    #[error("token {token} is outside the vocabulary of {vocab}")]
    Token { token: u32, vocab: usize },
    #[error("{have} tokens; the model takes at most {max}")]
    Context { have: usize, max: usize },
    #[error("the adapter does not fit this model: {0}")]
    Adapter(String),
}

/// Rows grouped by the adapter they use, for one step.
struct Groups<'a> {
    groups: Vec<(&'a Lora, Vec<usize>)>,
}

impl<'a> Groups<'a> {
    fn new(segments: &[Segment<'a>]) -> Self {
        let mut groups: Vec<(&'a Lora, Vec<usize>)> = Vec::new();
        let mut row = 0;
        for s in segments {
            let rows = row..row + s.tokens.len();
            row = rows.end;
            let Some(lora) = s.adapter else { continue };
            match groups.iter_mut().find(|(l, _)| std::ptr::eq(*l, lora)) {
                Some((_, r)) => r.extend(rows),
                None => groups.push((lora, rows.collect())),
            }
        }
        Self { groups }
    }

    /// The deltas of layer `layer`'s `targets` (indexes into `LORA_TARGETS`, each with its
    /// offset in the fused product).
    fn deltas(&self, layer: usize, targets: &[(usize, usize)]) -> Vec<Delta<'_>> {
        let mut out = Vec::new();
        for (lora, rows) in &self.groups {
            for &(t, offset) in targets {
                if let Some(p) = &lora.layers[layer][t] {
                    out.push(Delta {
                        a: &p.a,
                        b: &p.b,
                        r: lora.rank,
                        scale: lora.scale,
                        offset,
                        rows,
                    });
                }
            }
        }
        out
    }
}

/// The serving decoder for a base: a GGUF file's weights read as their blocks (open it with
/// [`Base::open_meta`](crate::model::base::Base::open_meta) to skip dequantising them first;
/// any dequantised tensors are dropped), the base's tensors otherwise.
pub fn for_base(
    base: &mut crate::model::base::Base,
    precision: Precision,
) -> Result<Decoder, DecodeError> {
    let is_gguf = base.source.is_file();
    if !is_gguf {
        return Decoder::new(&base.config, &base.tensors, precision);
    }
    base.tensors.clear();
    let (_, blocks) =
        crate::model::gguf::read_blocks(&base.source).map_err(|e| DecodeError::Tensor {
            name: base.source.display().to_string(),
            message: e.to_string(),
        })?;
    Decoder::from_gguf(&base.config, &blocks, precision)
}

fn f32_of(name: &str, t: &Tensor, shape: &[usize]) -> Result<Vec<f32>, DecodeError> {
    if t.dims() != shape {
        return Err(DecodeError::Tensor {
            name: name.into(),
            message: format!("is {:?}; the config needs {shape:?}", t.dims()),
        });
    }
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| DecodeError::Tensor {
            name: name.into(),
            message: e.to_string(),
        })
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let h = w.len();
    let mut y = vec![0f32; x.len()];
    for (row, out) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
            *o = v * inv * g;
        }
    }
    y
}

/// Rotates each head of `row` (`heads · d` values) by position `pos`, pairing `i` with
/// `i + d/2` as `transformers`' `rotate_half` does.
fn rope(row: &mut [f32], d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    for head in row.chunks_exact_mut(d) {
        for k in 0..half {
            let (x1, x2) = (head[k], head[k + half]);
            head[k] = x1 * cos[k] - x2 * sin[k];
            head[k + half] = x2 * cos[k] + x1 * sin[k];
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Decoder {
    /// The decoder over `tensors` (Hugging Face names, any float dtype), its linear layers
    /// at `precision`.
    pub fn new(
        config: &LlamaConfig,
        tensors: &HashMap<String, Tensor>,
        precision: Precision,
    ) -> Result<Self, DecodeError> {
        let source = |name: &str, shape: &[usize]| -> Result<Vec<f32>, DecodeError> {
            let t = tensors
                .get(name)
                .ok_or_else(|| DecodeError::Missing(name.into()))?;
            f32_of(name, t, shape)
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix, DecodeError> {
            Ok(Matrix::new(
                rows,
                cols,
                source(name, &[rows, cols])?,
                precision,
            ))
        };
        Self::build(config, &source, &matrix, precision)
    }

    /// The decoder over a GGUF file's weights: Q8_0 matrices keep their blocks (exactly),
    /// Q4_1 ones too at [`Precision::Gguf`] (0.75 bytes a weight, no second rounding) and
    /// are widened to Q8 otherwise (faster here: decoding is bound by unpacking, not by
    /// memory); other types are put in `precision`.
    pub fn from_gguf(
        config: &LlamaConfig,
        blocks: &HashMap<String, Blocks>,
        precision: Precision,
    ) -> Result<Self, DecodeError> {
        let source = |name: &str, shape: &[usize]| -> Result<Vec<f32>, DecodeError> {
            match blocks.get(name) {
                Some(Blocks::F32(t)) => f32_of(name, t, shape),
                Some(_) => Err(DecodeError::Tensor {
                    name: name.into(),
                    message: "is quantised where f32 is needed".into(),
                }),
                None => Err(DecodeError::Missing(name.into())),
            }
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix, DecodeError> {
            let (data, q4) = match blocks.get(name) {
                None => return Err(DecodeError::Missing(name.into())),
                Some(Blocks::F32(t)) => {
                    let w = f32_of(name, t, &[rows, cols])?;
                    return Ok(Matrix::new(rows, cols, w, precision));
                }
                Some(Blocks::Q4_1 {
                    rows: r,
                    cols: c,
                    data,
                })
                | Some(Blocks::Q8_0 {
                    rows: r,
                    cols: c,
                    data,
                }) if (*r, *c) != (rows, cols) => {
                    return Err(DecodeError::Tensor {
                        name: name.into(),
                        message: format!("is [{r}, {c}]; the config needs [{rows}, {cols}]"),
                    })
                }
                Some(Blocks::Q4_1 { data, .. }) => (data, true),
                Some(Blocks::Q8_0 { data, .. }) => (data, false),
            };
            let kept = if q4 {
                Matrix::from_q4_1(rows, cols, data)
            } else {
                Matrix::from_q8_0(rows, cols, data)
            };
            // Blocks stay as the file has them where the precision allows.
            let keep = match precision {
                Precision::Gguf => true,
                Precision::Q8 => !q4,
                Precision::F32 => false,
            };
            Ok(if keep {
                kept
            } else {
                Matrix::new(rows, cols, kept.to_f32(), precision)
            })
        };
        Self::build(config, &source, &matrix, precision)
    }

    fn build(
        config: &LlamaConfig,
        get: &VectorSource,
        matrix: &MatrixSource,
        precision: Precision,
    ) -> Result<Self, DecodeError> {
        config.check().map_err(|m| DecodeError::Tensor {
            name: "config".into(),
            message: m,
        })?;
        let (h, inter, d) = (
            config.hidden_size,
            config.intermediate_size,
            config.head_dim(),
        );
        let (q, kv) = (
            config.num_attention_heads * d,
            config.num_key_value_heads * d,
        );
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = |n: &str| format!("model.layers.{i}.{n}");
            let qkv = Matrix::stack(
                vec![
                    matrix(&p("self_attn.q_proj.weight"), q, h)?,
                    matrix(&p("self_attn.k_proj.weight"), kv, h)?,
                    matrix(&p("self_attn.v_proj.weight"), kv, h)?,
                ],
                precision,
            );
            let gate_up = Matrix::stack(
                vec![
                    matrix(&p("mlp.gate_proj.weight"), inter, h)?,
                    matrix(&p("mlp.up_proj.weight"), inter, h)?,
                ],
                precision,
            );
            layers.push(Layer {
                attn_norm: get(&p("input_layernorm.weight"), &[h])?,
                qkv,
                o: matrix(&p("self_attn.o_proj.weight"), h, q)?,
                mlp_norm: get(&p("post_attention_layernorm.weight"), &[h])?,
                gate_up,
                down: matrix(&p("mlp.down_proj.weight"), h, inter)?,
            });
        }
        let vocab = config.vocab_size;
        let embed = matrix("model.embed_tokens.weight", vocab, h)?;
        let head = if config.tie_word_embeddings {
            None
        } else {
            Some(matrix("lm_head.weight", vocab, h)?)
        };
        // The tables `Llama` builds: inverse frequencies and their products in f32.
        let half = d / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (config.rope_theta as f32).powf(2.0 * i as f32 / d as f32))
            .collect();
        let positions = config.max_position_embeddings;
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions * half),
            Vec::with_capacity(positions * half),
        );
        for p in 0..positions {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            config: config.clone(),
            embed,
            head,
            layers,
            norm: get("model.norm.weight", &[h])?,
            cos,
            sin,
        })
    }

    /// The weights' layouts and how many matrices have each, e.g. `q4_1 ×181, q8 ×1`.
    pub fn layouts(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        let all = self
            .layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down])
            .chain(std::iter::once(self.head.as_ref().unwrap_or(&self.embed)));
        for m in all {
            match counts.iter_mut().find(|(n, _)| *n == m.layout()) {
                Some((_, c)) => *c += 1,
                None => counts.push((m.layout(), 1)),
            }
        }
        counts
            .iter()
            .map(|(n, c)| format!("{n} ×{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Bytes of weights one step reads.
    pub fn bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.bytes()
                    + l.o.bytes()
                    + l.gate_up.bytes()
                    + l.down.bytes()
                    + (l.attn_norm.len() + l.mlp_norm.len()) * 4
            })
            .sum();
        layers + self.head.as_ref().unwrap_or(&self.embed).bytes()
    }

    pub fn precision(&self) -> Precision {
        self.embed.precision()
    }

    /// Checks that `lora` was made for a model of this shape; [`Decoder::step`] takes the
    /// adapters it is given as checked (the engine checks each job's once, on entry).
    pub fn check_adapter(&self, lora: &Lora) -> Result<(), DecodeError> {
        if lora.layers.len() != self.layers.len() {
            return Err(DecodeError::Adapter(format!(
                "it has {} layers, the model {}",
                lora.layers.len(),
                self.layers.len()
            )));
        }
        for layer in &lora.layers {
            for (t, pair) in layer.iter().enumerate() {
                if let Some(p) = pair {
                    let (inp, out) = super::lora::target_shape(&self.config, t);
                    if p.a.len() != lora.rank * inp || p.b.len() != out * lora.rank {
                        return Err(DecodeError::Adapter(format!(
                            "{} has the wrong shape",
                            crate::model::llama::LORA_TARGETS[t]
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs one step over `segments` and returns the logits of each segment's last token
    /// (`vocab` values each). Each cache then also holds its segment's tokens; on an error no
    /// cache has changed.
    pub fn step(&self, segments: &mut [Segment]) -> Result<Vec<Vec<f32>>, DecodeError> {
        let cfg = &self.config;
        let (h, d) = (cfg.hidden_size, cfg.head_dim());
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let (q_dim, kv_dim) = (heads * d, kv_heads * d);
        let eps = cfg.rms_norm_eps as f32;
        for s in segments.iter() {
            let have = s.cache.len + s.tokens.len();
            if have > cfg.max_position_embeddings {
                return Err(DecodeError::Context {
                    have,
                    max: cfg.max_position_embeddings,
                });
            }
            if let Some(&token) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(DecodeError::Token {
                    token,
                    vocab: cfg.vocab_size,
                });
            }
        }
        let n: usize = segments.iter().map(|s| s.tokens.len()).sum();
        if n == 0 {
            return Ok(Vec::new());
        }
        // Row r belongs to segment `owner[r]` at position `pos[r]`.
        let mut owner = Vec::with_capacity(n);
        let mut pos = Vec::with_capacity(n);
        for (i, s) in segments.iter().enumerate() {
            owner.extend(std::iter::repeat_n(i, s.tokens.len()));
            pos.extend(s.cache.len..s.cache.len + s.tokens.len());
        }
        let groups = Groups::new(segments);
        for s in segments.iter_mut() {
            s.cache.k.resize_with(self.layers.len(), Vec::new);
            s.cache.v.resize_with(self.layers.len(), Vec::new);
        }
        let mut x = vec![0f32; n * h];
        for (row, &t) in x
            .chunks_exact_mut(h)
            .zip(segments.iter().flat_map(|s| s.tokens.iter()))
        {
            self.embed.row(t as usize, row);
        }
        let half = d / 2;
        let scale = 1.0 / (d as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            let normed = rms_norm(&x, &layer.attn_norm, eps);
            let deltas = groups.deltas(li, &[(0, 0), (1, q_dim), (2, q_dim + kv_dim)]);
            let mut qkv = layer.qkv.product(&normed, n, &deltas);
            let width = q_dim + 2 * kv_dim;
            for (r, row) in qkv.chunks_exact_mut(width).enumerate() {
                let p = pos[r];
                let (c, s) = (
                    &self.cos[p * half..(p + 1) * half],
                    &self.sin[p * half..(p + 1) * half],
                );
                rope(&mut row[..q_dim + kv_dim], d, c, s);
            }
            // Each segment's new keys and values join its cache before attention reads it.
            for (r, row) in qkv.chunks_exact(width).enumerate() {
                let cache = &mut *segments[owner[r]].cache;
                cache.k[li].extend_from_slice(&row[q_dim..q_dim + kv_dim]);
                cache.v[li].extend_from_slice(&row[q_dim + kv_dim..]);
            }
            let mut att = vec![0f32; n * q_dim];
            let caches: Vec<(&[f32], &[f32])> = segments
                .iter()
                .map(|s| (s.cache.k[li].as_slice(), s.cache.v[li].as_slice()))
                .collect();
            let attend = |(r, out): (usize, &mut [f32])| {
                let (k, v) = caches[owner[r]];
                let q = &qkv[r * width..r * width + q_dim];
                let seen = pos[r] + 1;
                let mut w = vec![0f32; seen];
                for hd in 0..heads {
                    let g = hd / (heads / kv_heads);
                    let qh = &q[hd * d..(hd + 1) * d];
                    let mut max = f32::NEG_INFINITY;
                    for (j, wj) in w.iter_mut().enumerate() {
                        *wj = dot(qh, &k[j * kv_dim + g * d..j * kv_dim + (g + 1) * d]) * scale;
                        max = max.max(*wj);
                    }
                    let mut total = 0f32;
                    for wj in w.iter_mut() {
                        *wj = (*wj - max).exp();
                        total += *wj;
                    }
                    let oh = &mut out[hd * d..(hd + 1) * d];
                    oh.fill(0.0);
                    for (j, &wj) in w.iter().enumerate() {
                        let vj = &v[j * kv_dim + g * d..j * kv_dim + (g + 1) * d];
                        let a = wj / total;
                        for (o, &vv) in oh.iter_mut().zip(vj) {
                            *o = a.mul_add(vv, *o);
                        }
                    }
                }
            };
            if n > 1 && rayon::current_num_threads() > 1 {
                att.par_chunks_mut(q_dim).enumerate().for_each(attend);
            } else {
                att.chunks_mut(q_dim).enumerate().for_each(attend);
            }
            let o = layer.o.product(&att, n, &groups.deltas(li, &[(3, 0)]));
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            let normed = rms_norm(&x, &layer.mlp_norm, eps);
            let inter = cfg.intermediate_size;
            let gu = layer
                .gate_up
                .product(&normed, n, &groups.deltas(li, &[(4, 0), (5, inter)]));
            let mut mid = vec![0f32; n * inter];
            for (m, row) in mid.chunks_exact_mut(inter).zip(gu.chunks_exact(2 * inter)) {
                let (g, u) = row.split_at(inter);
                for ((m, &g), &u) in m.iter_mut().zip(g).zip(u) {
                    *m = silu(g) * u;
                }
            }
            let down = layer.down.product(&mid, n, &groups.deltas(li, &[(6, 0)]));
            for (a, b) in x.iter_mut().zip(&down) {
                *a += b;
            }
        }
        for s in segments.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        // Only each segment's last row needs logits.
        let mut last = Vec::with_capacity(segments.len() * h);
        let mut end = 0;
        for s in segments.iter() {
            end += s.tokens.len();
            if !s.tokens.is_empty() {
                last.extend_from_slice(&x[(end - 1) * h..end * h]);
            }
        }
        let m = last.len() / h;
        let normed = rms_norm(&last, &self.norm, eps);
        let logits = self
            .head
            .as_ref()
            .unwrap_or(&self.embed)
            .product(&normed, m, &[]);
        let vocab = cfg.vocab_size;
        let mut rows = logits.chunks_exact(vocab).map(<[f32]>::to_vec);
        Ok(segments
            .iter()
            .map(|s| {
                if s.tokens.is_empty() {
                    Vec::new()
                } else {
                    rows.next().unwrap_or_default()
                }
            })
            .collect())
    }
}
