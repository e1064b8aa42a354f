//! A linear layer without bias that can carry a LoRA delta: `y = x W^T + (alpha / r) x A^T B^T`,
//! with `A` (r × in) and `B` (out × r) as PEFT names and shapes them (`lora_A`, `lora_B`); `B`
//! starts at zero so a fresh adapter leaves the base unchanged.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// What an adapter adds to one layer.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    pub a: Tensor,
    pub b: Tensor,
    /// `lora_alpha / r`.
    pub scale: f64,
}

#[derive(Debug, Clone)]
pub struct LoraLinear {
    pub weight: Tensor,
    pub lora: Option<LoraDelta>,
}

/// How a LoRA adapter is shaped.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
}

impl LoraLinear {
    /// The base weight at `vb` (`weight`, out × in), initialised N(0, 0.02) when new.
    pub fn new(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        Ok(Self { weight, lora: None })
    }

    /// Adds an adapter whose tensors live in `vb` (the adapter's own variables).
    pub fn with_lora(mut self, vb: &VarBuilder, spec: &LoraSpec) -> Result<Self> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = vb.get_with_hints(
            (spec.r, in_dim),
            "lora_A.weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = vb.get_with_hints((out_dim, spec.r), "lora_B.weight", Init::Const(0.0))?;
        self.lora = Some(LoraDelta {
            a,
            b,
            scale: spec.alpha / spec.r as f64,
        });
        Ok(self)
    }
}

/// `x W^T` for `x` of any rank, as one matrix product over all of `x`'s rows. A batched
/// product against a broadcast weight would compute the weight's gradient batch by batch and
/// then sum the batches; one product over the flattened rows computes it at once.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (k, lead) = match dims.split_last() {
        Some((k, lead)) => (*k, lead),
        None => return x.broadcast_matmul(&w.t()?),
    };
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, k))?.matmul(&w.t()?)?;
    let mut out = lead.to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}

impl Module for LoraLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = linear(x, &self.weight)?;
        match &self.lora {
            None => Ok(y),
            Some(d) => {
                let delta = linear(&linear(x, &d.a)?, &d.b)?;
                y + (delta * d.scale)?
            }
        }
    }
}
