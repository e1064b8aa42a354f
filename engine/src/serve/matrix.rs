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
    /// A GGUF file's own Q4_1 and Q8_0 blocks as they are; Q8 for anything else.
    Gguf,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "q8" | "q8_0" => Ok(Self::Q8),
            "gguf" => Ok(Self::Gguf),
            _ => Err(format!("{s:?} is not f32, q8 or gguf")),
        }
    }
}

enum Weights {
    F32(Vec<f32>),
    Q8 {
        q: Vec<i8>,
        scales: Vec<f32>,
    },
    /// GGML's Q4_1 as a GGUF file stores it, scales widened: per block, 16 bytes of nibbles
    /// (weight `i` low, weight `16 + i` high) and `d`, `m` with each weight `d · q + m`.
    Q4 {
        nibbles: Vec<u8>,
        d: Vec<f32>,
        m: Vec<f32>,
    },
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
            Weights::Q4 { nibbles, d, m } => nibbles.len() + (d.len() + m.len()) * 4,
        }
    }

    pub fn precision(&self) -> Precision {
        match self.weights {
            Weights::F32(_) => Precision::F32,
            Weights::Q8 { .. } | Weights::Q4 { .. } => Precision::Q8,
        }
    }

    /// The layout's name: `f32`, `q8` or `q4_1`.
    pub fn layout(&self) -> &'static str {
        match self.weights {
            Weights::F32(_) => "f32",
            Weights::Q8 { .. } => "q8",
            Weights::Q4 { .. } => "q4_1",
        }
    }

    /// A GGUF file's Q4_1 blocks, kept as they are (`rows × cols`, 20 bytes per block).
    pub fn from_q4_1(rows: usize, cols: usize, data: &[u8]) -> Self {
        let blocks = rows * cols / BLOCK;
        let mut nibbles = Vec::with_capacity(blocks * 16);
        let (mut d, mut m) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for b in data.chunks_exact(20) {
            d.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            m.push(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
            nibbles.extend_from_slice(&b[4..20]);
        }
        Self {
            rows,
            cols,
            weights: Weights::Q4 { nibbles, d, m },
        }
    }

    /// A GGUF file's Q8_0 blocks (34 bytes each), exactly: the f16 scale widened.
    pub fn from_q8_0(rows: usize, cols: usize, data: &[u8]) -> Self {
        let blocks = rows * cols / BLOCK;
        let mut q = Vec::with_capacity(blocks * BLOCK);
        let mut scales = Vec::with_capacity(blocks);
        for b in data.chunks_exact(34) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            q.extend(b[2..34].iter().map(|&v| v as i8));
        }
        Self {
            rows,
            cols,
            weights: Weights::Q8 { q, scales },
        }
    }

    /// The weights as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row(r, row);
        }
        out
    }

    /// The rows of `parts` one after another, in the layout they share; parts of different
    /// layouts are put in `fallback`.
    pub fn stack(parts: Vec<Matrix>, fallback: Precision) -> Self {
        let cols = parts.first().map_or(0, |p| p.cols);
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let same = parts.windows(2).all(|w| w[0].layout() == w[1].layout());
        if !same || parts.iter().any(|p| p.cols != cols) {
            let data: Vec<f32> = parts.iter().flat_map(|p| p.to_f32()).collect();
            return Self::new(rows, cols, data, fallback);
        }
        let mut it = parts.into_iter();
        let Some(mut first) = it.next() else {
            return Self::f32(0, 0, Vec::new());
        };
        for p in it {
            match (&mut first.weights, p.weights) {
                (Weights::F32(a), Weights::F32(b)) => a.extend(b),
                (Weights::Q8 { q, scales }, Weights::Q8 { q: q2, scales: s2 }) => {
                    q.extend(q2);
                    scales.extend(s2);
                }
                (
                    Weights::Q4 { nibbles, d, m },
                    Weights::Q4 {
                        nibbles: n2,
                        d: d2,
                        m: m2,
                    },
                ) => {
                    nibbles.extend(n2);
                    d.extend(d2);
                    m.extend(m2);
                }
                _ => unreachable!("the layouts were checked to be the same"),
            }
            first.rows += p.rows;
        }
        first
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
            Weights::Q4 { nibbles, d, m } => {
                let blocks = c / BLOCK;
                for (k, o) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let b = r * blocks + k;
                    let qs = &nibbles[b * 16..(b + 1) * 16];
                    for i in 0..16 {
                        o[i] = d[b] * (qs[i] & 15) as f32 + m[b];
                        o[16 + i] = d[b] * (qs[i] >> 4) as f32 + m[b];
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
        // Block sums of each row, for Q4_1's minimum: `Σ (d q + m) x = d Σ q x + m Σ x`.
        let sums: Vec<f32> = if matches!(self.weights, Weights::Q4 { .. }) {
            x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
        } else {
            Vec::new()
        };
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
            let outputs = part.len() / n;
            // Row tiles outside, outputs inside: one tile of activation rows stays in the
            // first-level cache while the chunk's weight rows stream past it (the other way
            // round, 64 rows of activations fell out of it and 256 rows ran at two thirds of
            // 8 rows' speed).
            for t in (0..n).step_by(TILE) {
                let tile = TILE.min(n - t);
                let rows = &x[t * c..(t + tile) * c];
                for k in 0..outputs {
                    let o = first + k;
                    let ys = &mut part[k * n + t..k * n + t + tile];
                    match &self.weights {
                        Weights::F32(w) => {
                            let wr = &w[o * c..(o + 1) * c];
                            for (j, y) in ys.iter_mut().enumerate() {
                                *y = dot(wr, &rows[j * c..(j + 1) * c]);
                            }
                        }
                        Weights::Q8 { q, scales } => {
                            let blocks = c / BLOCK;
                            dot_q8_rows(
                                &q[o * c..(o + 1) * c],
                                &scales[o * blocks..(o + 1) * blocks],
                                rows,
                                ys,
                            );
                        }
                        Weights::Q4 { nibbles, d, m } => {
                            let blocks = c / BLOCK;
                            let m = &m[o * blocks..(o + 1) * blocks];
                            dot_q4_rows(
                                &nibbles[o * blocks * 16..(o + 1) * blocks * 16],
                                &d[o * blocks..(o + 1) * blocks],
                                rows,
                                ys,
                            );
                            // The minimum's part, row by row in block order.
                            for (j, y) in ys.iter_mut().enumerate() {
                                let s = &sums[(t + j) * blocks..(t + j + 1) * blocks];
                                *y += m.iter().zip(s).map(|(m, s)| m * s).sum::<f32>();
                            }
                        }
                    }
                }
            }
            for (k, ys) in part.chunks_exact_mut(n).enumerate() {
                let o = first + k;
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
        // The vector kernel's order: eight lanes, each block's lane sum scaled into the lane.
        let mut acc = [0f32; 8];
        for ((w, xb), &s) in wq.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)).zip(ws) {
            for (lane, a) in acc.iter_mut().enumerate() {
                let mut p = w[lane] as f32 * xb[lane];
                for k in 1..4 {
                    p = (w[8 * k + lane] as f32).mul_add(xb[8 * k + lane], p);
                }
                *a = p.mul_add(s, *a);
            }
        }
        *y = acc.iter().sum();
    }
}

/// `out[j] = Σ_b d[b] · Σ_i q[b,i] · x_j[b,i]` over Q4_1 nibbles (the minimum's part is
/// added by the caller).
#[inline]
fn dot_q4_rows(nibbles: &[u8], d: &[f32], rows: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        return avx2::dot_q4_rows(nibbles, d, rows, out);
    }
    dot_q4_rows_portable(nibbles, d, rows, out)
}

fn dot_q4_rows_portable(nibbles: &[u8], d: &[f32], rows: &[f32], out: &mut [f32]) {
    let c = d.len() * BLOCK;
    for (j, y) in out.iter_mut().enumerate() {
        let x = &rows[j * c..(j + 1) * c];
        let mut acc = [0f32; 8];
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let qs = &nibbles[b * 16..(b + 1) * 16];
            let q = |i: usize| {
                if i < 16 {
                    (qs[i] & 15) as f32
                } else {
                    (qs[i - 16] >> 4) as f32
                }
            };
            for (lane, a) in acc.iter_mut().enumerate() {
                let mut p = q(lane) * xb[lane];
                for k in 1..4 {
                    p = q(8 * k + lane).mul_add(xb[8 * k + lane], p);
                }
                *a = p.mul_add(d[b], *a);
            }
        }
        let h: [f32; 4] = std::array::from_fn(|l| acc[l] + acc[l + 4]);
        *y = (h[0] + h[2]) + (h[1] + h[3]);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{BLOCK, TILE};
    use std::arch::x86_64::*;

    /// Calls `$tile::<N>` for the run-time row count `$n` (1 to [`TILE`]).
    macro_rules! tiled {
        ($tile:ident, $n:expr, ($($arg:expr),*)) => {
            match $n {
                0 => {}
                1 => $tile::<1>($($arg),*),
                2 => $tile::<2>($($arg),*),
                3 => $tile::<3>($($arg),*),
                4 => $tile::<4>($($arg),*),
                5 => $tile::<5>($($arg),*),
                6 => $tile::<6>($($arg),*),
                7 => $tile::<7>($($arg),*),
                _ => $tile::<8>($($arg),*),
            }
        };
    }

    /// As [`dot_q8_rows`], for Q4_1 nibbles: the block's 16 bytes split into low and high
    /// nibbles (weights 0..16 and 16..32), widened to four vectors of f32.
    #[inline]
    pub fn dot_q4_rows(nibbles: &[u8], d: &[f32], rows: &[f32], out: &mut [f32]) {
        tiled!(q4_tile, out.len(), (nibbles, d, rows, out))
    }

    /// One tile of `N` rows: a constant count keeps the accumulators in registers (with a
    /// count known only at run time they lived on the stack, and each block's store and
    /// reload made decoding several times slower).
    #[inline(always)]
    fn q4_tile<const N: usize>(nibbles: &[u8], d: &[f32], rows: &[f32], out: &mut [f32]) {
        let blocks = d.len();
        let c = blocks * BLOCK;
        assert!(N <= TILE && out.len() == N && nibbles.len() >= blocks * 16 && rows.len() >= N * c);
        // SAFETY: compiled only for x86_64 and called only when the crate is built with AVX2
        // and FMA (checked by `cfg!` at the call). Block `b` reads bytes `16b..16b+16` of
        // `nibbles` and floats `jc+32b..jc+32b+32` of `rows` for `j < N`, within the lengths
        // asserted.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            let np = nibbles.as_ptr();
            let xp = rows.as_ptr();
            let low = _mm_set1_epi8(15);
            for b in 0..blocks {
                let scale = _mm256_set1_ps(*d.get_unchecked(b));
                let bytes = _mm_loadu_si128(np.add(b * 16) as *const __m128i);
                let lo = _mm_and_si128(bytes, low);
                let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low);
                let widen = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
                let w = [
                    widen(lo),
                    widen(_mm_srli_si128(lo, 8)),
                    widen(hi),
                    widen(_mm_srli_si128(hi, 8)),
                ];
                let at = b * BLOCK;
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = block_into(&w, xp.add(j * c + at), scale, *a);
                }
            }
            reduce(&acc, out);
        }
    }

    /// `acc + scale · Σ_k w[k] · x[8k..8k+8]`: one block of 32 weights against one row's
    /// block, in a chain of its own so that blocks overlap.
    ///
    /// # Safety
    /// `x` must point at 32 readable floats, and the CPU must have AVX2 and FMA.
    #[inline(always)]
    unsafe fn block_into(w: &[__m256; 4], x: *const f32, scale: __m256, acc: __m256) -> __m256 {
        let mut p = _mm256_mul_ps(w[0], _mm256_loadu_ps(x));
        p = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x.add(8)), p);
        p = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x.add(16)), p);
        p = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x.add(24)), p);
        _mm256_fmadd_ps(p, scale, acc)
    }

    /// Each accumulator's eight lanes summed: lanes `l` and `l + 4`, then pairs, then the
    /// two halves.
    #[inline]
    unsafe fn reduce(acc: &[__m256], out: &mut [f32]) {
        for (y, a) in out.iter_mut().zip(acc.iter()) {
            let hi = _mm256_extractf128_ps(*a, 1);
            let lo = _mm256_castps256_ps128(*a);
            let s = _mm_add_ps(hi, lo);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            *y = _mm_cvtss_f32(s);
        }
    }

    /// Widens each block of 32 weights to four vectors of f32, sums their products with a
    /// row's block in a short chain of its own, and adds that, scaled, to the row's
    /// accumulator: blocks then depend on each other only through one multiply-add per row,
    /// and out-of-order execution overlaps the rest (a chain of all four multiply-adds per
    /// block into the accumulator made decoding one token three times slower).
    #[inline]
    pub fn dot_q8_rows(wq: &[i8], ws: &[f32], rows: &[f32], out: &mut [f32]) {
        tiled!(q8_tile, out.len(), (wq, ws, rows, out))
    }

    #[inline(always)]
    fn q8_tile<const N: usize>(wq: &[i8], ws: &[f32], rows: &[f32], out: &mut [f32]) {
        let c = wq.len();
        assert!(
            N <= TILE
                && out.len() == N
                && rows.len() >= N * c
                && ws.len() * BLOCK >= c
                && c.is_multiple_of(BLOCK)
        );
        // SAFETY: compiled only for x86_64 and called only when the crate is built with AVX2
        // and FMA (checked by `cfg!` at the call). Every load reads inside the slices: block
        // `b` of the weights is bytes `32b..32b+32` of `wq` (`c` a multiple of 32), and of row
        // `j < N` floats `jc+32b..jc+32b+32` of `rows`, within the lengths asserted above.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            let wp = wq.as_ptr();
            let xp = rows.as_ptr();
            for b in 0..c / BLOCK {
                let scale = _mm256_set1_ps(*ws.get_unchecked(b));
                let at = b * BLOCK;
                let widen = |k: usize| {
                    let bytes = _mm_loadl_epi64(wp.add(at + 8 * k) as *const __m128i);
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
                };
                let w = [widen(0), widen(1), widen(2), widen(3)];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = block_into(&w, xp.add(j * c + at), scale, *a);
                }
            }
            reduce(&acc, out);
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

    /// Random Q4_1 blocks as a GGUF file holds them.
    fn q4_1_blocks(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let v = values(rows * cols / BLOCK * 18, seed);
        let mut out = Vec::new();
        for (k, chunk) in v.chunks_exact(18).enumerate() {
            let d = half::f16::from_f32(0.01 + chunk[0].abs() * 0.1);
            let m = half::f16::from_f32(-chunk[1].abs() * 0.5);
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&m.to_le_bytes());
            out.extend(
                (0..16).map(|i| ((k * 31 + i * 7) % 256) as u8 ^ (chunk[2 + i] * 100.0) as u8),
            );
        }
        out
    }

    #[test]
    fn q4_1_blocks_multiply_as_their_dequantised_weights() {
        let (rows, cols, n) = (24, 96, 3);
        let m = Matrix::from_q4_1(rows, cols, &q4_1_blocks(rows, cols, 9));
        assert_eq!(m.layout(), "q4_1");
        assert_eq!(m.bytes(), rows * cols / BLOCK * 24);
        let w = m.to_f32();
        // Weight 0 of block 0 is d · (low nibble of byte 0) + m.
        let raw = q4_1_blocks(rows, cols, 9);
        let d = half::f16::from_le_bytes([raw[0], raw[1]]).to_f32();
        let mn = half::f16::from_le_bytes([raw[2], raw[3]]).to_f32();
        assert_eq!(w[0], d * (raw[4] & 15) as f32 + mn);
        assert_eq!(w[16], d * (raw[4] >> 4) as f32 + mn);
        let x = values(n * cols, 10);
        let want = reference(&w, &x, rows, cols, n);
        let y = m.product(&x, n, &[]);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
        let alone = m.product(&x[cols..2 * cols], 1, &[]);
        assert_eq!(alone, y[rows..2 * rows].to_vec());
        // The vector kernel and the portable one agree to the bit.
        let Weights::Q4 { nibbles, d, .. } = &m.weights else {
            unreachable!("built as Q4_1")
        };
        let blocks = cols / BLOCK;
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        dot_q4_rows(&nibbles[..blocks * 16], &d[..blocks], &x, &mut a);
        dot_q4_rows_portable(&nibbles[..blocks * 16], &d[..blocks], &x, &mut b);
        assert_eq!(a, b);
        // Q8_0 blocks read exactly: scale and bytes.
        let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let m8 = Matrix::from_q8_0(1, 32, &q8);
        assert_eq!(
            m8.to_f32(),
            (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect::<Vec<_>>()
        );
        // Stacking keeps a shared layout, and falls back when layouts differ.
        let stacked = Matrix::stack(
            vec![
                Matrix::from_q4_1(rows, cols, &raw),
                Matrix::from_q4_1(rows, cols, &raw),
            ],
            Precision::Q8,
        );
        assert_eq!((stacked.layout(), stacked.rows), ("q4_1", 2 * rows));
        let mixed = Matrix::stack(
            vec![
                Matrix::from_q4_1(rows, cols, &raw),
                Matrix::f32(rows, cols, w.clone()),
            ],
            Precision::Q8,
        );
        assert_eq!((mixed.layout(), mixed.rows), ("q8", 2 * rows));
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
