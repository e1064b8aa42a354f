//! AdamW with decoupled weight decay (Loshchilov and Hutter, 2019), the update candle's
//! `AdamW` makes, in one pass over each variable instead of thirteen tensor ops with an
//! allocation each; the moments live in plain vectors, and gradient clipping is folded into
//! the same pass as a scale. A test checks it against candle's `AdamW` step for step.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Result, Storage, Tensor, Var};
use num_traits::Float;
use rayon::prelude::*;

/// Elements per task when the update runs on several threads.
const CHUNK: usize = 1 << 15;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

enum Moments {
    F32(Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>),
}

pub struct AdamW {
    vars: Vec<(Var, Moments)>,
    params: AdamWParams,
    step: i32,
}

/// A contiguous CPU tensor's values, handed to `f`.
fn with_values<R>(
    t: &Tensor,
    f32s: impl FnOnce(&[f32]) -> R,
    f64s: impl FnOnce(&[f64]) -> R,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let start = layout.start_offset();
    let n = layout.shape().elem_count();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f32s(&v[start..start + n])),
        Storage::Cpu(CpuStorage::F64(v)) => Ok(f64s(&v[start..start + n])),
        _ => candle_core::bail!("AdamW: f32 or f64 tensors on the CPU"),
    }
}

fn sum_squares<T: Float + Send + Sync + Into<f64>>(g: &[T]) -> f64 {
    g.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| x.into() * x.into()).sum::<f64>())
        .sum()
}

struct Step {
    lr: f64,
    scale: f64,
    bc1: f64,
    bc2: f64,
}

fn update<T: Float + Send + Sync>(
    theta: &[T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    p: &AdamWParams,
    s: &Step,
) -> Vec<T> {
    let c = |x: f64| T::from(x).unwrap_or_else(T::zero);
    let (b1, b2, nb1, nb2) = (c(p.beta1), c(p.beta2), c(1.0 - p.beta1), c(1.0 - p.beta2));
    let (scale, decay, lr, eps) = (
        c(s.scale),
        c(1.0 - s.lr * p.weight_decay),
        c(s.lr),
        c(p.eps),
    );
    let (sm, sv) = (c(1.0 / s.bc1), c(1.0 / s.bc2));
    let mut out = vec![T::zero(); theta.len()];
    out.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(k, ((o, m), v))| {
            let at = k * CHUNK;
            for i in 0..o.len() {
                let gi = g[at + i] * scale;
                m[i] = b1 * m[i] + nb1 * gi;
                v[i] = b2 * v[i] + nb2 * gi * gi;
                let adjusted = (m[i] * sm) / ((v[i] * sv).sqrt() + eps);
                o[i] = theta[at + i] * decay - adjusted * lr;
            }
        });
    out
}

impl AdamW {
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        let vars = vars
            .into_iter()
            .map(|var| {
                let n = var.elem_count();
                let moments = match var.dtype() {
                    DType::F32 => Moments::F32(vec![0.0; n], vec![0.0; n]),
                    DType::F64 => Moments::F64(vec![0.0; n], vec![0.0; n]),
                    d => candle_core::bail!("AdamW: variables must be f32 or f64, not {d:?}"),
                };
                Ok((var, moments))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            params,
            step: 0,
        })
    }

    /// The global norm of the variables' gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0.0;
        for (var, _) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                sum += with_values(g, sum_squares, sum_squares)?;
            }
        }
        Ok(sum.sqrt())
    }

    /// One update at learning rate `lr`, with the gradients multiplied by `grad_scale`
    /// (clipping). Variables without a gradient are left as they are.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let s = Step {
            lr,
            scale: grad_scale,
            bc1: 1.0 - self.params.beta1.powi(self.step),
            bc2: 1.0 - self.params.beta2.powi(self.step),
        };
        let params = self.params;
        for (var, moments) in &mut self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.contiguous()?;
            let theta = var.as_tensor().contiguous()?;
            let n = var.elem_count();
            // The read guards end with this block, before `set` takes the variable's lock.
            let next = {
                let (gs, gl) = g.storage_and_layout();
                let (ts, tl) = theta.storage_and_layout();
                let (go, to) = (gl.start_offset(), tl.start_offset());
                let out = match (&*gs, &*ts, moments) {
                    (
                        Storage::Cpu(CpuStorage::F32(g)),
                        Storage::Cpu(CpuStorage::F32(t)),
                        Moments::F32(m, v),
                    ) => CpuValues::F32(update(&t[to..to + n], &g[go..go + n], m, v, &params, &s)),
                    (
                        Storage::Cpu(CpuStorage::F64(g)),
                        Storage::Cpu(CpuStorage::F64(t)),
                        Moments::F64(m, v),
                    ) => CpuValues::F64(update(&t[to..to + n], &g[go..go + n], m, v, &params, &s)),
                    _ => {
                        candle_core::bail!("AdamW: a gradient's dtype differs from its variable's")
                    }
                };
                match out {
                    CpuValues::F32(v) => Tensor::from_vec(v, var.shape(), var.device())?,
                    CpuValues::F64(v) => Tensor::from_vec(v, var.shape(), var.device())?,
                }
            };
            var.set(&next)?;
        }
        Ok(())
    }
}

/// The optimizer a run uses: ours on the CPU; candle's `AdamW` (the same update, as tensor
/// ops with GPU kernels) elsewhere.
pub enum Optimizer {
    Cpu(AdamW),
    Tensors {
        inner: candle_nn::AdamW,
        vars: Vec<Var>,
    },
}

impl Optimizer {
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        if vars.iter().all(|v| v.device().is_cpu()) {
            return Ok(Self::Cpu(AdamW::new(vars, params)?));
        }
        let inner = <candle_nn::AdamW as candle_nn::Optimizer>::new(
            vars.clone(),
            candle_nn::ParamsAdamW {
                lr: 0.0,
                beta1: params.beta1,
                beta2: params.beta2,
                eps: params.eps,
                weight_decay: params.weight_decay,
            },
        )?;
        Ok(Self::Tensors { inner, vars })
    }

    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        match self {
            Self::Cpu(o) => o.grad_norm(grads),
            Self::Tensors { vars, .. } => {
                let mut sum = 0.0;
                for v in vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        sum += g
                            .sqr()?
                            .sum_all()?
                            .to_dtype(DType::F64)?
                            .to_scalar::<f64>()?;
                    }
                }
                Ok(sum.sqrt())
            }
        }
    }

    pub fn step(&mut self, grads: &mut GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        match self {
            Self::Cpu(o) => o.step(grads, lr, grad_scale),
            Self::Tensors { inner, vars } => {
                use candle_nn::Optimizer as _;
                if grad_scale != 1.0 {
                    for v in vars.iter() {
                        if let Some(g) = grads.remove(v.as_tensor()) {
                            grads.insert(v.as_tensor(), (g * grad_scale)?);
                        }
                    }
                }
                inner.set_learning_rate(lr);
                inner.step(grads)
            }
        }
    }
}

enum CpuValues {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::{Optimizer, ParamsAdamW};

    use super::*;

    #[test]
    fn steps_as_candles_adamw_does_and_folds_in_clipping() {
        let dev = Device::Cpu;
        let start = Tensor::randn(0f32, 1., (3, 70_000), &dev).expect("start");
        let target = Tensor::randn(0f32, 1., (3, 70_000), &dev).expect("target");
        let ours = Var::from_tensor(&start).expect("var");
        let theirs = Var::from_tensor(&start).expect("var");
        let mut a = AdamW::new(vec![ours.clone()], AdamWParams::default()).expect("ours");
        let mut b = candle_nn::AdamW::new(
            vec![theirs.clone()],
            ParamsAdamW {
                lr: 0.01,
                ..Default::default()
            },
        )
        .expect("candle's");
        let loss = |v: &Var| {
            (v.as_tensor() - &target)
                .and_then(|d| d.sqr()?.sum_all())
                .expect("loss")
        };
        for _ in 0..5 {
            let ga = loss(&ours).backward().expect("grads");
            a.step(&ga, 0.01, 1.0).expect("step");
            b.step(&loss(&theirs).backward().expect("grads"))
                .expect("step");
        }
        let diff = (ours.as_tensor() - theirs.as_tensor())
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("diff");
        assert!(diff < 1e-5, "{diff}");

        // A scale of one half is the update of gradients halved before the step.
        let x = Var::new(&[3.0f64, 4.0], &dev).expect("var");
        let grads = (x.as_tensor().sqr().and_then(|s| s.sum_all()).expect("sq") * 0.5)
            .and_then(|l| l.backward())
            .expect("grads");
        let mut opt = AdamW::new(vec![x.clone()], AdamWParams::default()).expect("opt");
        assert!((opt.grad_norm(&grads).expect("norm") - 5.0).abs() < 1e-12);
        opt.step(&grads, 0.1, 0.5).expect("step");
        // Adam's first step moves each weight by lr in the direction of its gradient's sign
        // whatever the scale; decay shrinks it by lr * weight_decay first.
        let v = x.as_tensor().to_vec1::<f64>().expect("values");
        assert!((v[0] - (3.0 * (1.0 - 0.001) - 0.1)).abs() < 1e-6, "{v:?}");
    }
}
