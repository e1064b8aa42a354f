//! A Llama-style decoder (Touvron et al., 2023: RMSNorm, rotary positions, SwiGLU, grouped-
//! query attention; tied embeddings as an option) in the shape of candle's model files. The
//! forward pass uses only differentiable ops: our fused kernels with their own backward passes
//! (`fused`) in f32 and f64, or candle's composed ops (`rms_norm_slow`, `rope_slow`,
//! `ops::softmax`) in other dtypes. candle's fused kernels (`rms_norm`, `rope`,
//! `softmax_last_dim`) have no backward pass, and gradients would silently stop at them.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::ops::{rms_norm_slow, softmax};
use candle_nn::rotary_emb::rope_slow;
use candle_nn::{Init, VarBuilder};

use super::config::LlamaConfig;
use super::fused;
use super::lora::{LoraLinear, LoraSpec};

/// Layers a LoRA adapter can target, by their Hugging Face names.
pub const LORA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

fn norm_weight(vb: &VarBuilder, size: usize) -> Result<Tensor> {
    vb.get_with_hints(size, "weight", Init::Const(1.0))
}

struct Attention {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim());
        Ok(Self {
            q_proj: LoraLinear::new(&vb.pp("q_proj"), h, cfg.num_attention_heads * d)?,
            k_proj: LoraLinear::new(&vb.pp("k_proj"), h, cfg.num_key_value_heads * d)?,
            v_proj: LoraLinear::new(&vb.pp("v_proj"), h, cfg.num_key_value_heads * d)?,
            o_proj: LoraLinear::new(&vb.pp("o_proj"), cfg.num_attention_heads * d, h)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        })
    }

    /// Each key-value head serves `heads / kv_heads` query heads, as `repeat_kv` does in
    /// `transformers`.
    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let n_rep = self.heads / self.kv_heads;
        if n_rep == 1 {
            return Ok(x);
        }
        let (b, kvh, t, d) = x.dims4()?;
        x.unsqueeze(2)?
            .expand((b, kvh, n_rep, t, d))?
            .reshape((b, kvh * n_rep, t, d))
    }

    /// Attends `x` (`(b * t, hidden)`, positions `pos..pos + t` of `b` sequences) to itself
    /// and, with a cache, to the keys and values of earlier positions, which it then extends.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        (b, t): (usize, usize),
        rope: &Rope,
        pos: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let split = |y: Tensor, heads: usize| -> Result<Tensor> {
            y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(x)?, self.heads)?;
        let k = split(self.k_proj.forward(x)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(x)?, self.kv_heads)?;
        let (cos, sin) = (rope.cos.narrow(0, pos, t)?, rope.sin.narrow(0, pos, t)?);
        let (q, k) = if rope.fused {
            (fused::rope(&q, &cos, &sin)?, fused::rope(&k, &cos, &sin)?)
        } else {
            (rope_slow(&q, &cos, &sin)?, rope_slow(&k, &cos, &sin)?)
        };
        let (k, v) = match cache {
            None => (k, v),
            Some(cache) => {
                // Extended only once both succeed: an error leaves the cache as it was.
                let (k, v) = match cache.as_ref() {
                    None => (k, v),
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                };
                *cache = Some((k.clone(), v.clone()));
                (k, v)
            }
        };
        let k = self.repeat_kv(k)?;
        let v = self.repeat_kv(v)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let weights = if rope.fused {
            fused::causal_softmax(&q.matmul(&k.t()?)?, scale, pos)?
        } else {
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let scores = match mask {
                Some(mask) => scores.broadcast_add(mask)?,
                None => scores,
            };
            softmax(&scores, D::Minus1)?
        };
        let y = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b * t, self.heads * self.head_dim))?;
        self.o_proj.forward(&y)
    }
}

struct Mlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: LoraLinear::new(&vb.pp("gate_proj"), h, i)?,
            up_proj: LoraLinear::new(&vb.pp("up_proj"), h, i)?,
            down_proj: LoraLinear::new(&vb.pp("down_proj"), i, h)?,
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let h = if fused {
            fused::swiglu(&gate, &up)?
        } else {
            (gate.silu()? * up)?
        };
        self.down_proj.forward(&h)
    }
}

struct Block {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
    eps: f32,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
            input_layernorm: norm_weight(&vb.pp("input_layernorm"), cfg.hidden_size)?,
            post_attention_layernorm: norm_weight(
                &vb.pp("post_attention_layernorm"),
                cfg.hidden_size,
            )?,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    /// `x` is the residual stream, `(b * t, hidden)`.
    fn forward(
        &self,
        x: &Tensor,
        bt: (usize, usize),
        rope: &Rope,
        pos: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let h = (x + self.self_attn.forward(
            &norm(x, &self.input_layernorm, self.eps, rope.fused)?,
            bt,
            rope,
            pos,
            mask,
            cache,
        )?)?;
        let normed = norm(&h, &self.post_attention_layernorm, self.eps, rope.fused)?;
        h + self.mlp.forward(&normed, rope.fused)?
    }

    /// Each linear layer with the module it sits in and its name.
    fn linears(&mut self) -> [(&'static str, &'static str, &mut LoraLinear); 7] {
        [
            ("self_attn", "q_proj", &mut self.self_attn.q_proj),
            ("self_attn", "k_proj", &mut self.self_attn.k_proj),
            ("self_attn", "v_proj", &mut self.self_attn.v_proj),
            ("self_attn", "o_proj", &mut self.self_attn.o_proj),
            ("mlp", "gate_proj", &mut self.mlp.gate_proj),
            ("mlp", "up_proj", &mut self.mlp.up_proj),
            ("mlp", "down_proj", &mut self.mlp.down_proj),
        ]
    }
}

/// One layer's keys and values so far, `(batch, kv_heads, positions, head_dim)` each.
type LayerCache = Option<(Tensor, Tensor)>;

/// The keys and values of the positions a generation has seen, so that each new token costs
/// one position's work instead of the whole prefix's.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    positions: usize,
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.positions
    }

    pub fn is_empty(&self) -> bool {
        self.positions == 0
    }
}

fn norm(x: &Tensor, w: &Tensor, eps: f32, fused: bool) -> Result<Tensor> {
    if fused {
        fused::rms_norm(x, w, eps as f64)
    } else {
        rms_norm_slow(x, w, eps)
    }
}

/// Rotary position tables, `(max_positions, head_dim / 2)`, and whether the fused kernels
/// serve this dtype (the decoder's one switch between them and candle's composed ops).
struct Rope {
    cos: Tensor,
    sin: Tensor,
    fused: bool,
}

impl Rope {
    fn new(cfg: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let d = cfg.head_dim();
        let inv_freq: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / d as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, d / 2), device)?;
        let positions = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = positions.matmul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            fused: fused::supported(dtype) && device.is_cpu(),
        })
    }
}

/// The decoder, with Hugging Face's weight names (`model.embed_tokens.weight`,
/// `model.layers.N.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`).
pub struct Llama {
    pub config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    /// `None` when the embeddings are tied.
    lm_head: Option<LoraLinear>,
    rope: Rope,
    device: Device,
    dtype: DType,
}

impl Llama {
    /// Loads (or, from a `VarMap`, creates) the model's weights at `vb`.
    pub fn load(vb: VarBuilder, config: &LlamaConfig) -> Result<Self> {
        config.check().map_err(candle_core::Error::msg)?;
        let model = vb.pp("model");
        let embed_tokens = model.pp("embed_tokens").get_with_hints(
            (config.vocab_size, config.hidden_size),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Block::load(model.pp("layers").pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        let norm = norm_weight(&model.pp("norm"), config.hidden_size)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(LoraLinear::new(
                &vb.pp("lm_head"),
                config.hidden_size,
                config.vocab_size,
            )?)
        };
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(config, vb.dtype(), vb.device())?,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Gives the `targets` layers of every block a LoRA adapter whose tensors live in `vb`,
    /// under PEFT's names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`).
    pub fn add_lora(&mut self, vb: &VarBuilder, spec: &LoraSpec, targets: &[&str]) -> Result<()> {
        if let Some(t) = targets.iter().find(|t| !LORA_TARGETS.contains(t)) {
            return Err(candle_core::Error::msg(format!(
                "{t} is not a LoRA target (one of {})",
                LORA_TARGETS.join(", ")
            )));
        }
        let root = vb.pp("base_model").pp("model").pp("model").pp("layers");
        for (i, block) in self.layers.iter_mut().enumerate() {
            let at = root.pp(i);
            for (group, name, linear) in block.linears() {
                if targets.contains(&name) {
                    *linear = linear.clone().with_lora(&at.pp(group).pp(name), spec)?;
                }
            }
        }
        Ok(())
    }

    /// Logits `(batch, time, vocab)` for token ids `(batch, time)`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.run(ids, None)?.reshape((b, t, self.config.vocab_size))
    }

    /// Logits for `ids` `(batch, time)` that follow the positions in `cache`, which then holds
    /// them too. An empty cache starts a sequence.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.run(ids, Some(cache))?
            .reshape((b, t, self.config.vocab_size))
    }

    /// Logits `(batch * time, vocab)`: the residual stream stays two-dimensional throughout.
    fn run(&self, ids: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let pos = cache.as_ref().map_or(0, |c| c.positions);
        if pos + t > self.config.max_position_embeddings {
            return Err(candle_core::Error::msg(format!(
                "{} tokens; the model takes at most {}",
                pos + t,
                self.config.max_position_embeddings
            )));
        }
        let mut x = self.embed_tokens.index_select(&ids.flatten_all()?, 0)?;
        // A single new token may see every cached position: no mask. The fused softmax masks
        // by position itself.
        let mask = if t > 1 && !self.rope.fused {
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..pos + t).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(mask, (t, pos + t), &self.device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        for (i, block) in self.layers.iter().enumerate() {
            let layer = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(&x, (b, t), &self.rope, pos, mask.as_ref(), layer)?;
        }
        if let Some(c) = cache {
            c.positions += t;
        }
        let x = norm(
            &x,
            &self.norm,
            self.config.rms_norm_eps as f32,
            self.rope.fused,
        )?;
        match &self.lm_head {
            Some(head) => head.forward(&x),
            None => super::lora::linear(&x, &self.embed_tokens),
        }
    }

    /// Mean next-token cross-entropy of `ids` `(batch, time)`: position `i` predicts `i + 1`.
    pub fn loss(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if t < 2 {
            return Err(candle_core::Error::msg(
                "a window needs at least two tokens: one to read and one to predict",
            ));
        }
        let logits = self.run(&ids.narrow(1, 0, t - 1)?, None)?;
        let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
        if self.rope.fused {
            fused::cross_entropy(&logits, &targets)
        } else {
            candle_nn::loss::cross_entropy(&logits, &targets)
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

    use super::*;

    fn small() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 16,
            ..LlamaConfig::tiny(11)
        }
    }

    fn model(cfg: &LlamaConfig, dtype: DType) -> (VarMap, Llama) {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, dtype, &Device::Cpu);
        let m = Llama::load(vb, cfg).expect("model");
        (vars, m)
    }

    fn ids(v: &[u32]) -> Tensor {
        Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).expect("ids")
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64)
            .and_then(|t| t.to_scalar::<f64>())
            .expect("scalar")
    }

    #[test]
    fn logits_have_the_shape_and_are_causal() {
        let cfg = LlamaConfig::tiny(17);
        let (_, m) = model(&cfg, DType::F32);
        let a = m.forward(&ids(&[1, 2, 3, 4, 5])).expect("forward");
        assert_eq!(a.dims(), &[1, 5, 17]);
        // Changing the last token changes nothing before it.
        let b = m.forward(&ids(&[1, 2, 3, 4, 9])).expect("forward");
        let diff = (a.narrow(1, 0, 4).expect("n") - b.narrow(1, 0, 4).expect("n"))
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff < 1e-6, "{diff}");
        let last = (a.narrow(1, 4, 1).expect("n") - b.narrow(1, 4, 1).expect("n"))
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(last > 1e-6);
        assert!(m.forward(&ids(&[1; 65])).is_err(), "past max positions");
    }

    #[test]
    fn cached_decoding_gives_the_logits_of_the_whole_sequence() {
        let cfg = LlamaConfig::tiny(17);
        let (_, m) = model(&cfg, DType::F32);
        let seq = [3u32, 1, 4, 1, 5, 9, 2, 6];
        let whole = m.forward(&ids(&seq)).expect("forward");
        let mut cache = KvCache::default();
        let mut parts = vec![m
            .forward_cached(&ids(&seq[..5]), &mut cache)
            .expect("prefix")];
        for &t in &seq[5..] {
            parts.push(m.forward_cached(&ids(&[t]), &mut cache).expect("step"));
        }
        assert_eq!(cache.len(), seq.len());
        let stepped = Tensor::cat(&parts, 1).expect("cat");
        let diff = (whole - stepped)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff < 1e-5, "{diff}");
    }

    /// Perturbs one element of `var` and returns the loss.
    fn loss_with(m: &Llama, var: &Var, at: usize, delta: f64, x: &Tensor) -> f64 {
        let original = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f64>())
            .expect("values");
        let shape = var.as_tensor().shape().clone();
        let mut values = original.clone();
        values[at] += delta;
        var.set(&Tensor::from_vec(values, shape.clone(), &Device::Cpu).expect("t"))
            .expect("set");
        let loss = scalar(&m.loss(x).expect("loss"));
        var.set(&Tensor::from_vec(original, shape, &Device::Cpu).expect("t"))
            .expect("restore");
        loss
    }

    #[test]
    fn gradients_match_finite_differences_and_reach_every_tensor() {
        let cfg = small();
        let (vars, m) = model(&cfg, DType::F64);
        let x = ids(&[1, 4, 2, 7, 3, 9, 2, 5]);
        let loss = m.loss(&x).expect("loss");
        let grads = loss.backward().expect("backward");
        let data = vars.data().lock().expect("vars");
        assert_eq!(data.len(), 2 + 9 * cfg.num_hidden_layers + 1);
        for (name, var) in data.iter() {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let g = grad
                .flatten_all()
                .and_then(|g| g.to_vec1::<f64>())
                .expect("grad");
            assert!(g.iter().any(|v| v.abs() > 0.0), "zero gradient for {name}");
            // Central differences on a few elements of every tensor.
            for at in [0, g.len() / 2, g.len() - 1] {
                let eps = 1e-5;
                let numeric = (loss_with(&m, var, at, eps, &x) - loss_with(&m, var, at, -eps, &x))
                    / (2.0 * eps);
                let err = (numeric - g[at]).abs();
                assert!(
                    err < 1e-6 + 1e-4 * numeric.abs(),
                    "{name}[{at}]: analytic {} numeric {numeric}",
                    g[at]
                );
            }
        }
    }

    #[test]
    fn training_lowers_the_loss_and_lora_leaves_the_base_alone() {
        let cfg = LlamaConfig::tiny(13);
        let (vars, mut m) = model(&cfg, DType::F32);
        let x = ids(&[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        let mut opt = AdamW::new(
            vars.all_vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .expect("optimizer");
        let first = scalar(&m.loss(&x).expect("loss"));
        for _ in 0..30 {
            opt.backward_step(&m.loss(&x).expect("loss")).expect("step");
        }
        let trained = scalar(&m.loss(&x).expect("loss"));
        assert!(trained < first * 0.5, "{first} -> {trained}");

        // A fresh adapter changes nothing; training it moves the loss and only the adapter.
        let before = m.forward(&x).expect("forward");
        let adapter = VarMap::new();
        let avb = VarBuilder::from_varmap(&adapter, DType::F32, &Device::Cpu);
        m.add_lora(&avb, &LoraSpec { r: 4, alpha: 8.0 }, &["q_proj", "v_proj"])
            .expect("lora");
        let same = (m.forward(&x).expect("forward") - &before)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("diff");
        assert_eq!(same, 0.0);
        assert_eq!(adapter.all_vars().len(), 2 * 2 * cfg.num_hidden_layers);
        assert!(adapter
            .data()
            .lock()
            .expect("vars")
            .contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
        let base: Vec<Tensor> = vars
            .all_vars()
            .iter()
            .map(|v| v.as_tensor().copy().expect("copy"))
            .collect();
        let y = ids(&[8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1]);
        let mut lora_opt = AdamW::new(
            adapter.all_vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .expect("optimizer");
        let start = scalar(&m.loss(&y).expect("loss"));
        for _ in 0..20 {
            lora_opt
                .backward_step(&m.loss(&y).expect("loss"))
                .expect("step");
        }
        assert!(scalar(&m.loss(&y).expect("loss")) < start);
        for (v, b) in vars.all_vars().iter().zip(&base) {
            let d = (v.as_tensor() - b)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            assert_eq!(d, 0.0, "the base moved");
        }
        assert!(m
            .add_lora(&avb, &LoraSpec { r: 4, alpha: 8.0 }, &["wq"])
            .is_err());
    }
}
