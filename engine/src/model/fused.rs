//! Fused CPU kernels with their backward passes, for the three places where the decoder spends
//! its time outside matrix products: causal softmax over attention scores, RMSNorm, rotary
//! positions, SwiGLU's gate and the cross-entropy loss. Built from candle's elementwise ops, each of these is five to eight passes over a
//! tensor forward and more backward, every pass a fresh allocation; fused, it is one pass each
//! way. candle's own fused versions (`softmax_last_dim`, `rms_norm`, `rope`) have no backward
//! pass, so gradients would stop at them: these are custom ops whose `bwd` computes the exact
//! gradient (checked against finite differences by the decoder's tests, in f64).
//!
//! Inputs must be contiguous; the decoder makes them so. Rows are independent, so each kernel
//! splits its rows over the thread pool when there are enough of them.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use num_traits::Float;
use rayon::prelude::*;

/// Rows handed to one task: enough work to be worth a thread.
const ROWS_PER_TASK: usize = 64;

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Runs `f` over rows of `width` elements of `out` (and the matching rows of the inputs),
/// in parallel when there are many rows and more than one thread.
fn for_rows<T: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if width == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / width;
    if threads() > 1 && rows >= 2 * ROWS_PER_TASK {
        out.par_chunks_mut(width * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (k, row) in chunk.chunks_mut(width).enumerate() {
                    f(c * ROWS_PER_TASK + k, row)
                }
            });
    } else {
        for (r, row) in out.chunks_mut(width).enumerate() {
            f(r, row)
        }
    }
}

/// Runs `$body` over the contiguous values of storages that are all f32 or all f64, naming
/// each one, and wraps the resulting vector in the same dtype:
/// `floats!("rms-norm", [x = s1, l1; w = s2, l2], rms_fwd(x, w, eps))`.
macro_rules! floats {
    ($what:expr, [$($x:ident = $s:expr, $l:expr);+], $body:expr) => {
        match ($($s,)+) {
            ($(CpuStorage::F32($x),)+) => {
                $(let $x = contiguous($x, $l, $what)?;)+
                CpuStorage::F32($body)
            }
            ($(CpuStorage::F64($x),)+) => {
                $(let $x = contiguous($x, $l, $what)?;)+
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: f32 or f64 inputs, all the same", $what),
        }
    };
}

/// Softmax over the last dimension of `(…, t, s)` scores scaled by `scale`, where row `i` of
/// each `t` block may attend only to the first `offset + i + 1` columns (causal, after
/// `offset` cached positions); masked columns get probability zero.
struct CausalSoftmax {
    scale: f64,
    offset: usize,
}

fn softmax_fwd<T: Float + Send + Sync>(
    x: &[T],
    t: usize,
    s: usize,
    scale: f64,
    offset: usize,
) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    let scale = T::from(scale).unwrap_or_else(T::one);
    for_rows(&mut y, s, |r, out| {
        let valid = (offset + r % t + 1).min(s);
        let row = &x[r * s..r * s + valid];
        let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v * scale));
        let mut sum = T::zero();
        for (o, &v) in out[..valid].iter_mut().zip(row) {
            *o = (v * scale - max).exp();
            sum = sum + *o;
        }
        let inv = T::one() / sum;
        for o in &mut out[..valid] {
            *o = *o * inv;
        }
    });
    y
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let (t, s) = match dims {
            [.., t, s] => (*t, *s),
            _ => candle_core::bail!("causal-softmax: scores need at least two dimensions"),
        };
        let out = floats!(
            "causal-softmax",
            [x = storage, layout],
            softmax_fwd(x, t, s, self.scale, self.offset)
        );
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(
            &grad,
            &SoftmaxBackward { scale: self.scale },
        )?))
    }
}

/// `dx = scale * y ⊙ (dy − Σ dy ⊙ y)` per row, from the softmax output `y`.
struct SoftmaxBackward {
    scale: f64,
}

fn softmax_bwd<T: Float + Send + Sync>(y: &[T], dy: &[T], s: usize, scale: f64) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    let scale = T::from(scale).unwrap_or_else(T::one);
    for_rows(&mut dx, s, |r, out| {
        let (y, dy) = (&y[r * s..(r + 1) * s], &dy[r * s..(r + 1) * s]);
        let dot = y.iter().zip(dy).fold(T::zero(), |a, (&y, &g)| a + y * g);
        for ((o, &y), &g) in out.iter_mut().zip(y).zip(dy) {
            *o = scale * y * (g - dot);
        }
    });
    dx
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "causal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = l1.shape().dims().last().copied().unwrap_or(1);
        let out = floats!(
            "softmax backward",
            [y = s1, l1; g = s2, l2],
            softmax_bwd(y, g, s, self.scale)
        );
        Ok((out, l1.shape().clone()))
    }
}

/// Softmax of `scores * scale` over the last dimension, causal after `offset` positions.
pub fn causal_softmax(scores: &Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    scores
        .contiguous()?
        .apply_op1(CausalSoftmax { scale, offset })
}

/// RMSNorm over the last dimension: `y = x / sqrt(mean(x²) + eps) ⊙ w`.
struct RmsNorm {
    eps: f64,
}

fn rms_fwd<T: Float + Send + Sync>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let mut y = vec![T::zero(); x.len()];
    let (eps, len) = (
        T::from(eps).unwrap_or_else(T::zero),
        T::from(n).unwrap_or_else(T::one),
    );
    for_rows(&mut y, n, |r, out| {
        let row = &x[r * n..(r + 1) * n];
        let ms = row.iter().fold(T::zero(), |a, &v| a + v * v) / len;
        let inv = T::one() / (ms + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(w) {
            *o = v * inv * w;
        }
    });
    y
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = floats!(
            "rms-norm",
            [x = s1, l1; w = s2, l2],
            rms_fwd(x, w, self.eps)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = w.dim(0)?;
        let rows = x.elem_count() / n;
        let both =
            x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBackward { eps: self.eps })?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(n)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The gradients of RMSNorm, as one `(rows + 1, n)` tensor: the rows of `dx`, then `dw`.
struct RmsNormBackward {
    eps: f64,
}

fn rms_bwd<T: Float + Send + Sync>(x: &[T], w: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let rows = x.len() / n;
    let (eps, len) = (
        T::from(eps).unwrap_or_else(T::zero),
        T::from(n).unwrap_or_else(T::one),
    );
    let mut out = vec![T::zero(); (rows + 1) * n];
    let (dx, dw) = out.split_at_mut(rows * n);
    // dx row by row: r·(w⊙dy) − x·(r³/n)·Σ(w⊙dy⊙x).
    for_rows(dx, n, |r, o| {
        let (x, dy) = (&x[r * n..(r + 1) * n], &dy[r * n..(r + 1) * n]);
        let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / len;
        let inv = T::one() / (ms + eps).sqrt();
        let dot = x
            .iter()
            .zip(dy)
            .zip(w)
            .fold(T::zero(), |a, ((&x, &g), &w)| a + g * w * x);
        let k = inv * inv * inv / len * dot;
        for (((o, &x), &g), &w) in o.iter_mut().zip(x).zip(dy).zip(w) {
            *o = inv * g * w - x * k;
        }
    });
    // dw: Σ over rows of dy ⊙ x·r.
    for r in 0..rows {
        let (x, dy) = (&x[r * n..(r + 1) * n], &dy[r * n..(r + 1) * n]);
        let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / len;
        let inv = T::one() / (ms + eps).sqrt();
        for ((o, &x), &g) in dw.iter_mut().zip(x).zip(dy) {
            *o = *o + g * x * inv;
        }
    }
    out
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = l2.shape().elem_count();
        let rows = l1.shape().elem_count() / n.max(1);
        let out = floats!(
            "rms-norm backward",
            [x = s1, l1; w = s2, l2; g = s3, l3],
            rms_bwd(x, w, g, self.eps)
        );
        Ok((out, Shape::from((rows + 1, n))))
    }
}

/// RMSNorm of `x` over its last dimension with weight `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(w, RmsNorm { eps })
}

/// Rotary positions on `(b, h, t, d)`, rotating the two halves of each head as `transformers`
/// does, with tables `cos`, `sin` of `(t, d / 2)`; `inverse` rotates back (the backward pass:
/// a rotation's gradient is the opposite rotation).
struct Rope {
    inverse: bool,
}

fn rope_apply<T: Float + Send + Sync>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    t: usize,
    d: usize,
    inverse: bool,
) -> Vec<T> {
    let half = d / 2;
    let mut y = vec![T::zero(); x.len()];
    for_rows(&mut y, d, |r, out| {
        let p = r % t;
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        let row = &x[r * d..(r + 1) * d];
        for k in 0..half {
            let (x1, x2) = (row[k], row[k + half]);
            let s = if inverse { -s[k] } else { s[k] };
            out[k] = x1 * c[k] - x2 * s;
            out[k + half] = x2 * c[k] + x1 * s;
        }
    });
    y
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (t, d) = match l1.shape().dims() {
            [_, _, t, d] => (*t, *d),
            _ => candle_core::bail!("rope: the input must be (batch, heads, time, head_dim)"),
        };
        if l2.shape().dims() != [t, d / 2] || l3.shape().dims() != [t, d / 2] {
            candle_core::bail!("rope: the tables must be (time, head_dim / 2)");
        }
        let out = floats!(
            "rope",
            [x = s1, l1; c = s2, l2; sn = s3, l3],
            rope_apply(x, c, sn, t, d, self.inverse)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rope {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// Rotary positions on `x` `(b, h, t, d)` with `cos`, `sin` `(t, d / 2)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    x.contiguous()?
        .apply_op3(&cos, &sin, Rope { inverse: false })
}

/// SwiGLU's gate: `silu(g) ⊙ u`, elementwise.
struct SwiGlu;

fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

fn swiglu_fwd<T: Float + Send + Sync>(g: &[T], u: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); g.len()];
    let width = CHUNK_ELEMS.min(g.len().max(1));
    for_rows(&mut y, width, |r, out| {
        let at = r * width;
        for (i, o) in out.iter_mut().enumerate() {
            let x = g[at + i];
            *o = x * sigmoid(x) * u[at + i];
        }
    });
    y
}

/// Elements per task for elementwise kernels.
const CHUNK_ELEMS: usize = 1 << 10;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate and up differ in shape");
        }
        let out = floats!(
            "swiglu",
            [g = s1, l1; u = s2, l2],
            swiglu_fwd(g, u)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &grad.contiguous()?, &SwiGluBackward)?;
        let n = g.elem_count();
        let flat = both.flatten_all()?;
        Ok((
            Some(flat.narrow(0, 0, n)?.reshape(g.shape())?),
            Some(flat.narrow(0, n, n)?.reshape(u.shape())?),
        ))
    }
}

/// The gradients of SwiGLU's gate as one tensor: `d_gate` then `d_up`.
struct SwiGluBackward;

fn swiglu_bwd<T: Float + Send + Sync>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = vec![T::zero(); 2 * n];
    let (dg, du) = out.split_at_mut(n);
    let width = CHUNK_ELEMS.min(n.max(1));
    for_rows(dg, width, |r, o| {
        let at = r * width;
        for (i, o) in o.iter_mut().enumerate() {
            let (x, s) = (g[at + i], sigmoid(g[at + i]));
            *o = dy[at + i] * u[at + i] * s * (T::one() + x * (T::one() - s));
        }
    });
    for_rows(du, width, |r, o| {
        let at = r * width;
        for (i, o) in o.iter_mut().enumerate() {
            let x = g[at + i];
            *o = dy[at + i] * x * sigmoid(x);
        }
    });
    out
}

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = l1.shape().elem_count();
        let out = floats!(
            "swiglu backward",
            [g = s1, l1; u = s2, l2; d = s3, l3],
            swiglu_bwd(g, u, d)
        );
        Ok((out, Shape::from(2 * n)))
    }
}

/// `silu(gate) ⊙ up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// Cross-entropy of each row of `logits` `(n, vocab)` against its target id: the per-row loss
/// `logsumexp(row) − row[target]`, `(n,)`. One pass forward; backward `softmax(row) − onehot`,
/// one pass, instead of the seven tensor ops of a composed log-softmax and gather.
struct CrossEntropy;

fn ce_fwd<T: Float + Send + Sync>(x: &[T], targets: &[u32], v: usize) -> Result<Vec<T>> {
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross-entropy: target {t} is outside the vocabulary of {v}");
    }
    let mut loss = vec![T::zero(); targets.len()];
    for_rows(&mut loss, 1, |r, out| {
        let row = &x[r * v..(r + 1) * v];
        let max = row.iter().fold(T::neg_infinity(), |m, &a| m.max(a));
        let sum = row.iter().fold(T::zero(), |s, &a| s + (a - max).exp());
        out[0] = max + sum.ln() - row[targets[r] as usize];
    });
    Ok(loss)
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match s {
        CpuStorage::U32(t) => contiguous(t, l, "cross-entropy targets"),
        _ => candle_core::bail!("cross-entropy: targets must be u32"),
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let targets = u32s(s2, l2)?;
        if targets.len() != n {
            candle_core::bail!("cross-entropy: {} targets for {n} rows", targets.len());
        }
        let out = floats!("cross-entropy", [x = s1, l1], ce_fwd(x, targets, v)?);
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(targets, &grad.contiguous()?, &CrossEntropyBackward)?;
        Ok((Some(dx), None))
    }
}

/// `(softmax(row) − onehot(target)) · grad[row]` for each row.
struct CrossEntropyBackward;

fn ce_bwd<T: Float + Send + Sync>(x: &[T], targets: &[u32], g: &[T], v: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    for_rows(&mut dx, v, |r, out| {
        let row = &x[r * v..(r + 1) * v];
        let max = row.iter().fold(T::neg_infinity(), |m, &a| m.max(a));
        let mut sum = T::zero();
        for (o, &a) in out.iter_mut().zip(row) {
            *o = (a - max).exp();
            sum = sum + *o;
        }
        let k = g[r] / sum;
        for o in out.iter_mut() {
            *o = *o * k;
        }
        let t = targets[r] as usize;
        out[t] = out[t] - g[r];
    });
    dx
}

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, v) = l1.shape().dims2()?;
        let targets = u32s(s2, l2)?;
        let out = floats!(
            "cross-entropy backward",
            [x = s1, l1; g = s3, l3],
            ce_bwd(x, targets, g, v)
        );
        Ok((out, l1.shape().clone()))
    }
}

/// Mean cross-entropy of `logits` `(n, vocab)` against `targets` `(n,)` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, CrossEntropy)?
        .mean_all()
}

/// Whether a dtype has fused kernels; others take the composed ops.
pub fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};
    use candle_nn::ops::{rms_norm_slow, softmax};
    use candle_nn::rotary_emb::rope_slow;

    use super::*;

    fn close(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>())
            .expect("diff")
    }

    /// Value and gradient of `Σ f(x) ⊙ r` for a fixed random `r`.
    fn value_and_grad(x: &Var, r: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
        let y = f(x.as_tensor());
        let loss = (&y * r).and_then(|p| p.sum_all()).expect("loss");
        let grads = loss.backward().expect("backward");
        (y, grads.get(x.as_tensor()).expect("grad").clone())
    }

    #[test]
    fn fused_kernels_match_candles_composed_ops_in_value_and_gradient() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 5, 8);
        let x = Var::randn(0f64, 1., (b, h, t, t), &dev).expect("x");
        let r = Tensor::randn(0f64, 1., (b, h, t, t), &dev).expect("r");
        let mask: Vec<f64> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f64::NEG_INFINITY } else { 0. }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).expect("mask");
        let (y1, g1) = value_and_grad(&x, &r, |x| causal_softmax(x, 0.5, 0).expect("fused"));
        let (y2, g2) = value_and_grad(&x, &r, |x| {
            softmax(
                &(x * 0.5).and_then(|s| s.broadcast_add(&mask)).expect("s"),
                D::Minus1,
            )
            .expect("softmax")
        });
        assert!(close(&y1, &y2) < 1e-12 && close(&g1, &g2) < 1e-12);

        let x = Var::randn(0f64, 1., (b, t, d), &dev).expect("x");
        let w = Var::randn(0f64, 1., d, &dev).expect("w");
        let r = Tensor::randn(0f64, 1., (b, t, d), &dev).expect("r");
        let norm = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
            let y = f(x.as_tensor(), w.as_tensor());
            let grads = (&y * &r)
                .and_then(|p| p.sum_all())
                .expect("loss")
                .backward()
                .expect("bwd");
            (
                y,
                grads.get(x.as_tensor()).expect("dx").clone(),
                grads.get(w.as_tensor()).expect("dw").clone(),
            )
        };
        let (y1, dx1, dw1) = norm(&|x, w| rms_norm(x, w, 1e-5f32 as f64).expect("fused"));
        let (y2, dx2, dw2) = norm(&|x, w| rms_norm_slow(x, w, 1e-5).expect("slow"));
        let diffs = (close(&y1, &y2), close(&dx1, &dx2), close(&dw1, &dw2));
        assert!(
            diffs.0 < 1e-12 && diffs.1 < 1e-12 && diffs.2 < 1e-12,
            "{diffs:?}"
        );

        let x = Var::randn(0f64, 1., (b, h, t, d), &dev).expect("x");
        let r = Tensor::randn(0f64, 1., (b, h, t, d), &dev).expect("r");
        let cos = Tensor::randn(0f64, 1., (t, d / 2), &dev).expect("cos");
        let sin = Tensor::randn(0f64, 1., (t, d / 2), &dev).expect("sin");
        let (y1, g1) = value_and_grad(&x, &r, |x| rope(x, &cos, &sin).expect("fused"));
        let (y2, g2) = value_and_grad(&x, &r, |x| rope_slow(x, &cos, &sin).expect("slow"));
        assert!(close(&y1, &y2) < 1e-12 && close(&g1, &g2) < 1e-12);

        let up = Tensor::randn(0f64, 1., (b, h, t, d), &dev).expect("up");
        let (y1, g1) = value_and_grad(&x, &r, |x| swiglu(x, &up).expect("fused"));
        let (y2, g2) = value_and_grad(&x, &r, |x| (x.silu().expect("silu") * &up).expect("mul"));
        assert!(close(&y1, &y2) < 1e-12 && close(&g1, &g2) < 1e-12);
        let u = Var::from_tensor(&up).expect("var");
        let grads = swiglu(x.as_tensor(), u.as_tensor())
            .and_then(|y| (y * &r)?.sum_all()?.backward())
            .expect("grads");
        let slow = (x.as_tensor().silu().expect("silu") * u.as_tensor())
            .and_then(|y| (y * &r)?.sum_all()?.backward())
            .expect("grads");
        let du = |g: &candle_core::backprop::GradStore| g.get(u.as_tensor()).expect("du").clone();
        assert!(close(&du(&grads), &du(&slow)) < 1e-12);

        let logits = Var::randn(0f64, 3., (7, 11), &dev).expect("logits");
        let targets = Tensor::new(&[0u32, 3, 10, 5, 5, 1, 9], &dev).expect("targets");
        let ce = |f: &dyn Fn(&Tensor) -> Tensor| {
            let loss = f(logits.as_tensor());
            let g = loss.backward().expect("bwd");
            (loss, g.get(logits.as_tensor()).expect("grad").clone())
        };
        let (l1, g1) = ce(&|x| cross_entropy(x, &targets).expect("fused"));
        let (l2, g2) = ce(&|x| candle_nn::loss::cross_entropy(x, &targets).expect("candle"));
        assert!(close(&l1, &l2) < 1e-12 && close(&g1, &g2) < 1e-12);
        let outside = Tensor::new(&[11u32, 0, 0, 0, 0, 0, 0], &dev).expect("targets");
        assert!(cross_entropy(logits.as_tensor(), &outside).is_err());
    }
}
