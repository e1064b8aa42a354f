//! Weight matrices for inference and their products with a batch of activation rows, each
//! product with the low-rank deltas of the adapters its rows use added in the same pass.
//!
//! Weights are f32, or quantised in blocks of 32 int8 values with one f32 scale per block
//! (GGML's Q8_0 layout with the scale widened): decoding one token reads every weight once,
//! so a quarter of the bytes is close to four times the speed on a machine whose memory
//! bandwidth is the limit. Activations stay f32. Quantising them too (llama.cpp's Q8 dot
//! products) broke SmolLM2-135M: its MLP has single channels near 3,000 where the rest of the
//! block is near 0.06, and with them quantised it answered "What is the capital of France?"
//! with "L'Étoile, la Cité"; with f32 activations, "The capital of France is Paris." Each
//! block of weights is widened to f32 once per step and used for every row of the batch, so
//! a batch of 16 reads the weights once.
//!
//! Every output element is computed by the same instructions in the same order whatever else
//! is in the batch: a request gets the same tokens alone or batched with others.

use rayon::prelude::*;

/// Weights per quantisation block.
pub const BLOCK: usize = 32;

/// How a matrix holds its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Q8,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "q8" | "q8_0" => Ok(Self::Q8),
            _ => Err(format!("{s:?} is not f32 or q8")),
        }
    }
}

enum Weights {
    F32(Vec<f32>),
    Q8 { q: Vec<i8>, scales: Vec<f32> },
}

/// A `rows × cols` matrix (`rows` outputs of `cols` inputs), row-major.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    weights: Weights,
}

/// A low-rank delta on some rows of a product: each row `x` listed in `rows` gets
/// `scale · B (A x)` added to the outputs `offset .. offset + B's rows`.
pub struct Delta<'a> {
    /// `r × cols`.
    pub a: &'a [f32],
    /// `out × r`.
    pub b: &'a [f32],
    pub r: usize,
    pub scale: f32,
    pub offset: usize,
    /// Indexes of the batch's rows the delta applies to.
    pub rows: &'a [usize],
}

/// Quantises `x` in blocks of [`BLOCK`]: each block's largest magnitude maps to 127.
fn quantise_blocks(x: &[f32], q: &mut Vec<i8>, scales: &mut Vec<f32>) {
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        scales.push(scale);
        q.extend(block.iter().map(|v| (v * inv).round() as i8));
    }
}

impl Matrix {
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self {
            rows,
            cols,
            weights: Weights::F32(data),
        }
    }

    /// The matrix at `precision`; Q8 needs whole blocks per row, so a matrix whose rows are
    /// not a multiple of [`BLOCK`] stays f32.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>, precision: Precision) -> Self {
        if precision == Precision::F32 || !cols.is_multiple_of(BLOCK) {
            return Self::f32(rows, cols, data);
        }
        let mut q = Vec::with_capacity(data.len());
        let mut scales = Vec::with_capacity(data.len() / BLOCK);
        quantise_blocks(&data, &mut q, &mut scales);
        Self {
            rows,
            cols,
            weights: Weights::Q8 { q, scales },
        }
    }

    /// Bytes the weights take in memory (what decoding one token reads).
    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(w) => w.len() * 4,
            Weights::Q8 { q, scales } => q.len() + scales.len() * 4,
        }
    }

    pub fn precision(&self) -> Precision {
        match self.weights {
            Weights::F32(_) => Precision::F32,
            Weights::Q8 { .. } => Precision::Q8,
        }
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.weights {
            Weights::F32(w) => out.copy_from_slice(&w[r * c..(r + 1) * c]),
            Weights::Q8 { q, scales } => {
                let blocks = c / BLOCK;
                for (b, (chunk, o)) in q[r * c..(r + 1) * c]
                    .chunks_exact(BLOCK)
                    .zip(out.chunks_exact_mut(BLOCK))
                    .enumerate()
                {
                    let s = scales[r * blocks + b];
                    for (o, &v) in o.iter_mut().zip(chunk) {
                        *o = v as f32 * s;
                    }
                }
            }
        }
    }

    /// `y = x Wᵀ` plus each delta on its rows, for `n` rows of `x` (`n × cols`); `y` is
    /// `n × rows`.
    pub fn product(&self, x: &[f32], n: usize, deltas: &[Delta]) -> Vec<f32> {
        let (out, c) = (self.rows, self.cols);
        debug_assert_eq!(x.len(), n * c);
        // The adapters' first factor, `A x`, for each row each delta covers.
        let low: Vec<Vec<f32>> = deltas
            .iter()
            .map(|d| {
                let mut u = Vec::with_capacity(d.rows.len() * d.r);
                for &row in d.rows {
                    let xr = &x[row * c..(row + 1) * c];
                    u.extend(d.a.chunks_exact(c).map(|a| dot(a, xr)));
                }
                u
            })
            .collect();
        // Outputs in chunks; each chunk holds its outputs' values for every row, so that a
        // weight row is read once for the whole batch.
        let mut transposed = vec![0f32; out * n];
        let chunk = chunk_rows(out, n * c);
        let fill = |(ci, part): (usize, &mut [f32])| {
            let first = ci * chunk;
            for (k, ys) in part.chunks_exact_mut(n).enumerate() {
                let o = first + k;
                match &self.weights {
                    Weights::F32(w) => {
                        let wr = &w[o * c..(o + 1) * c];
                        for (j, y) in ys.iter_mut().enumerate() {
                            *y = dot(wr, &x[j * c..(j + 1) * c]);
                        }
                    }
                    Weights::Q8 { q, scales } => {
                        let blocks = c / BLOCK;
                        let (wq, ws) = (
                            &q[o * c..(o + 1) * c],
                            &scales[o * blocks..(o + 1) * blocks],
                        );
                        for (t, tile) in ys.chunks_mut(TILE).enumerate() {
                            let rows = &x[t * TILE * c..(t * TILE + tile.len()) * c];
                            dot_q8_rows(wq, ws, rows, tile);
                        }
                    }
                }
                for (d, u) in deltas.iter().zip(&low) {
                    if o < d.offset || o >= d.offset + d.b.len() / d.r {
                        continue;
                    }
                    let b = &d.b[(o - d.offset) * d.r..(o - d.offset + 1) * d.r];
                    for (k, &row) in d.rows.iter().enumerate() {
                        ys[row] += d.scale * dot(b, &u[k * d.r..(k + 1) * d.r]);
                    }
                }
            }
        };
        if chunk >= out {
            fill((0, &mut transposed));
        } else {
            transposed
                .par_chunks_mut(chunk * n)
                .enumerate()
                .for_each(fill);
        }
        if n == 1 {
            return transposed;
        }
        let mut y = vec![0f32; n * out];
        for (o, ys) in transposed.chunks_exact(n).enumerate() {
            for (j, &v) in ys.iter().enumerate() {
                y[j * out + o] = v;
            }
        }
        y
    }
}

/// Output rows per parallel task: enough work per task (about 64K multiply-adds) that
/// scheduling costs little, and enough tasks to spread over the pool.
fn chunk_rows(out: usize, work_per_row: usize) -> usize {
    const MIN_WORK: usize = 1 << 16;
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || out * work_per_row < 2 * MIN_WORK {
        return out.max(1);
    }
    let by_work = MIN_WORK.div_ceil(work_per_row.max(1));
    let by_tasks = out.div_ceil(threads * 4);
    by_work.max(by_tasks).clamp(1, out)
}

/// Dot product in f32, in 16 lanes so that the compiler keeps them in vector registers.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows of activations one widened weight block serves before the next block is read: their
/// accumulators and the block's four vectors fit in the sixteen AVX2 registers.
const TILE: usize = 8;

/// `out[j] = Σ_b ws[b] · Σ_i wq[b,i] · x_j[b,i]` for the rows `x_j` of `rows` (at most
/// [`TILE`]), each row summed in the same order whatever the other rows are.
#[inline]
fn dot_q8_rows(wq: &[i8], ws: &[f32], rows: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        return avx2::dot_q8_rows(wq, ws, rows, out);
    }
    dot_q8_rows_portable(wq, ws, rows, out)
}

fn dot_q8_rows_portable(wq: &[i8], ws: &[f32], rows: &[f32], out: &mut [f32]) {
    let c = wq.len();
    for (j, y) in out.iter_mut().enumerate() {
        let x = &rows[j * c..(j + 1) * c];
        let mut acc = [0f32; 8];
        for ((w, xb), &s) in wq.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)).zip(ws) {
            for i in 0..BLOCK {
                acc[i % 8] = (w[i] as f32 * s).mul_add(xb[i], acc[i % 8]);
            }
        }
        *y = acc.iter().sum();
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{BLOCK, TILE};
    use std::arch::x86_64::*;

    /// Widens each block of 32 weights to four vectors of f32 scaled by the block's scale,
    /// then adds their products with each row into that row's accumulator.
    #[inline]
    pub fn dot_q8_rows(wq: &[i8], ws: &[f32], rows: &[f32], out: &mut [f32]) {
        let c = wq.len();
        let n = out.len();
        assert!(
            n <= TILE && rows.len() >= n * c && ws.len() * BLOCK >= c && c.is_multiple_of(BLOCK)
        );
        // SAFETY: compiled only for x86_64 and called only when the crate is built with AVX2
        // and FMA (checked by `cfg!` at the call). Every load reads inside the slices: block
        // `b` of the weights is bytes `32b..32b+32` of `wq` (`c` a multiple of 32), and of row
        // `j` floats `jc+32b..jc+32b+32` of `rows`, both within the lengths asserted above.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); TILE];
            let wp = wq.as_ptr();
            let xp = rows.as_ptr();
            for b in 0..c / BLOCK {
                let scale = _mm256_set1_ps(*ws.get_unchecked(b));
                let at = b * BLOCK;
                let widen = |k: usize| {
                    let bytes = _mm_loadl_epi64(wp.add(at + 8 * k) as *const __m128i);
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), scale)
                };
                let w = [widen(0), widen(1), widen(2), widen(3)];
                for (j, a) in acc.iter_mut().enumerate().take(n) {
                    let x = xp.add(j * c + at);
                    let mut s = *a;
                    for (k, wk) in w.iter().enumerate() {
                        s = _mm256_fmadd_ps(*wk, _mm256_loadu_ps(x.add(8 * k)), s);
                    }
                    *a = s;
                }
            }
            for (y, a) in out.iter_mut().zip(acc.iter()) {
                let hi = _mm256_extractf128_ps(*a, 1);
                let lo = _mm256_castps256_ps128(*a);
                let s = _mm_add_ps(hi, lo);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                *y = _mm_cvtss_f32(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator: tests need varied values, not random ones.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * rows];
        for j in 0..n {
            for o in 0..rows {
                y[j * rows + o] = (0..cols)
                    .map(|k| w[o * cols + k] as f64 * x[j * cols + k] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn products_match_the_definition_and_each_row_is_independent_of_the_batch() {
        let (rows, cols, n) = (70, 96, 5);
        let w = values(rows * cols, 1);
        let x = values(n * cols, 2);
        let want = reference(&w, &x, rows, cols, n);
        for precision in [Precision::F32, Precision::Q8] {
            let m = Matrix::new(rows, cols, w.clone(), precision);
            let y = m.product(&x, n, &[]);
            let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                let (j, o) = (i / rows, i % rows);
                // Q8 rounds each value by up to half a step of 1/127 of its block's largest.
                let scale = norm(&w[o * cols..(o + 1) * cols]) * norm(&x[j * cols..(j + 1) * cols]);
                let tol = if precision == Precision::F32 {
                    1e-6
                } else {
                    1e-2
                } * scale;
                assert!((a - b).abs() < tol, "{precision:?}: {a} vs {b}");
            }
            // Row 3 alone gives the bits it gave in the batch.
            let alone = m.product(&x[3 * cols..4 * cols], 1, &[]);
            assert_eq!(alone, y[3 * rows..4 * rows].to_vec());
        }
    }

    #[test]
    fn the_vector_kernel_equals_the_portable_one() {
        let cols = 256;
        let mut wq = Vec::new();
        let mut ws = Vec::new();
        quantise_blocks(&values(cols, 3), &mut wq, &mut ws);
        wq[..BLOCK].fill(-127);
        let rows = values(5 * cols, 4);
        let (mut a, mut b) = (vec![0f32; 5], vec![0f32; 5]);
        dot_q8_rows(&wq, &ws, &rows, &mut a);
        dot_q8_rows_portable(&wq, &ws, &rows, &mut b);
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn deltas_add_to_their_rows_and_outputs_only() {
        let (rows, cols, n, r) = (12, 32, 3, 2);
        let w = values(rows * cols, 5);
        let x = values(n * cols, 6);
        let a = values(r * cols, 7);
        let b = values(4 * r, 8);
        let m = Matrix::f32(rows, cols, w.clone());
        let plain = m.product(&x, n, &[]);
        let delta = Delta {
            a: &a,
            b: &b,
            r,
            scale: 0.5,
            offset: 6,
            rows: &[1],
        };
        let y = m.product(&x, n, &[delta]);
        for j in 0..n {
            for o in 0..rows {
                let (got, base) = (y[j * rows + o], plain[j * rows + o]);
                if j == 1 && (6..10).contains(&o) {
                    let u: Vec<f32> = (0..r)
                        .map(|k| dot(&a[k * cols..(k + 1) * cols], &x[cols..2 * cols]))
                        .collect();
                    let add = 0.5 * dot(&b[(o - 6) * r..(o - 5) * r], &u);
                    assert!((got - base - add).abs() < 1e-5);
                } else {
                    assert_eq!(got, base, "row {j} output {o}");
                }
            }
        }
    }
}
