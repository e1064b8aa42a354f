//! A linear layer without bias that can carry a LoRA delta: `y = x W^T + (alpha / r) x A^T B^T`,
//! with `A` (r × in) and `B` (out × r) as PEFT names and shapes them (`lora_A`, `lora_B`); `B`
//! starts at zero so a fresh adapter leaves the base unchanged.

use candle_core::{CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
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

/// The product `y = x W^T` of a frozen `W`, made differentiable in `x` alone: candle's matmul
/// backward computes the gradient of both operands, and for a frozen base (LoRA) the weight's
/// would be a third of the training step's arithmetic thrown away. The product itself is
/// computed outside the graph; this op hands it on (one copy of `y`) and routes the gradient
/// to `x` as `dy W`.
struct FrozenProduct {
    weight: Tensor,
}

impl CustomOp2 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-product"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _xl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = yl.contiguous_offsets() else {
            candle_core::bail!("frozen-product: the product must be contiguous")
        };
        let out = match y {
            CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
            _ => candle_core::bail!("frozen-product: f32 or f64"),
        };
        Ok((out, yl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&self.weight)?), None))
    }
}

/// `x W^T` for `x` of any rank, as one matrix product over all of `x`'s rows. A batched
/// product against a broadcast weight would compute the weight's gradient batch by batch and
/// then sum the batches; one product over the flattened rows computes it at once. A weight
/// that is not a variable gets no gradient at all.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (k, lead) = match dims.split_last() {
        Some((k, lead)) => (*k, lead),
        None => return x.broadcast_matmul(&w.t()?),
    };
    let rows: usize = lead.iter().product();
    // A reshape is a node of the graph even when it changes nothing, with its own backward
    // pass: two-dimensional inputs (the decoder's residual stream) go straight in.
    let flat = lead.len() != 1;
    let x2 = if flat {
        x.reshape((rows, k))?
    } else {
        x.clone()
    };
    let y = if x2.track_op() && !w.track_op() && x2.device().is_cpu() {
        let y = x2.detach().matmul(&w.t()?)?;
        x2.apply_op2(&y, FrozenProduct { weight: w.clone() })?
    } else {
        x2.matmul(&w.t()?)?
    };
    if !flat {
        return Ok(y);
    }
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn a_frozen_weight_passes_the_gradient_to_x_alone() {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 1., (2, 3, 5), &dev).expect("x");
        let w = Tensor::randn(0f64, 1., (4, 5), &dev).expect("w");
        let r = Tensor::randn(0f64, 1., (2, 3, 4), &dev).expect("r");
        let grad = |w: &Tensor| {
            let y = linear(x.as_tensor(), w).expect("linear");
            let g = (&y * &r)
                .and_then(|p| p.sum_all()?.backward())
                .expect("backward");
            (y, g.get(x.as_tensor()).expect("dx").clone(), g)
        };
        let (y_frozen, dx_frozen, grads) = grad(&w);
        assert!(grads.get(&w).is_none(), "no gradient for a frozen weight");
        let trainable = Var::from_tensor(&w).expect("var");
        let (y, dx, _) = grad(trainable.as_tensor());
        let max = |a: &Tensor, b: &Tensor| {
            (a - b)
                .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>())
                .expect("diff")
        };
        assert!(max(&y_frozen, &y) < 1e-12 && max(&dx_frozen, &dx) < 1e-12);
    }
}
