//! BLAKE3-256 of many short messages at once, sixteen or eight side by side where the CPU can.
//!
//! A record id hashes the record's canonical encoding, a few hundred bytes: a single BLAKE3
//! chunk of a few 64-byte blocks. The `blake3` crate's SIMD runs the chunks of one long
//! input in parallel, so such a message goes block after block through its one-lane
//! compression. Here the messages of a batch are independent: on x86-64 with AVX-512, sixteen
//! of them run in the sixteen 32-bit lanes of 512-bit vectors (with AVX2, eight in 256-bit
//! ones), one block of each per step. A lane whose message has fewer blocks than the longest
//! of its group keeps its chaining value through the steps it sits out. Messages longer than
//! a chunk (1,024 bytes), and every message where neither is present, go to the `blake3`
//! crate one at a time; the results are the same bytes either way.

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// The longest message hashed in the lanes: one chunk.
pub const CHUNK_LEN: usize = 1024;

/// Fills `out[i]` with the BLAKE3-256 hash of `messages[i]`.
///
/// # Panics
/// If `out` and `messages` differ in length.
pub fn hash_many(messages: &[&[u8]], out: &mut [Hash]) {
    assert_eq!(messages.len(), out.len(), "one output per message");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if x16::available() {
            done = in_lanes(messages, out, x16::hash16);
        }
        if x8::available() {
            done += in_lanes(&messages[done..], &mut out[done..], x8::hash8);
        }
    }
    for (message, hash) in messages.iter().zip(out.iter_mut()).skip(done) {
        *hash = *blake3::hash(message).as_bytes();
    }
}

/// Hashes whole groups of `N` messages with `hash` (a group holding a message longer than a
/// chunk one at a time); returns how many messages that covered.
#[cfg(target_arch = "x86_64")]
fn in_lanes<const N: usize>(
    messages: &[&[u8]],
    out: &mut [Hash],
    hash: fn(&[&[u8]; N], &mut [Hash; N]),
) -> usize {
    for (group, hashes) in messages.chunks_exact(N).zip(out.chunks_exact_mut(N)) {
        let group: &[&[u8]; N] = group.try_into().unwrap_or_else(|_| unreachable!());
        let hashes: &mut [Hash; N] = hashes.try_into().unwrap_or_else(|_| unreachable!());
        if group.iter().all(|m| m.len() <= CHUNK_LEN) {
            hash(group, hashes);
        } else {
            for (message, hash) in group.iter().zip(hashes) {
                *hash = *blake3::hash(message).as_bytes();
            }
        }
    }
    messages.len() / N * N
}

/// BLAKE3's seven rounds of a compression over the state whose first eight vectors are the
/// chaining value `h` and last eight `tail`, with the message words `m`, through a lane
/// kind's `g`; gives the final state.
#[cfg(target_arch = "x86_64")]
macro_rules! rounds {
    ($g:ident, $h:expr, $tail:expr, $m:ident) => {{
        let (h, tail) = ($h, $tail);
        let mut v: [_; 16] = std::array::from_fn(|i| if i < 8 { h[i] } else { tail[i - 8] });
        for s in &SCHEDULE {
            $g(&mut v, [0, 4, 8, 12], $m[s[0]], $m[s[1]]);
            $g(&mut v, [1, 5, 9, 13], $m[s[2]], $m[s[3]]);
            $g(&mut v, [2, 6, 10, 14], $m[s[4]], $m[s[5]]);
            $g(&mut v, [3, 7, 11, 15], $m[s[6]], $m[s[7]]);
            $g(&mut v, [0, 5, 10, 15], $m[s[8]], $m[s[9]]);
            $g(&mut v, [1, 6, 11, 12], $m[s[10]], $m[s[11]]);
            $g(&mut v, [2, 7, 8, 13], $m[s[12]], $m[s[13]]);
            $g(&mut v, [3, 4, 9, 14], $m[s[14]], $m[s[15]]);
        }
        v
    }};
}

/// What the lane implementations share: BLAKE3's constants for a single-chunk input.
#[cfg(target_arch = "x86_64")]
mod spec {
    pub const IV: [u32; 8] = [
        0x6A09_E667,
        0xBB67_AE85,
        0x3C6E_F372,
        0xA54F_F53A,
        0x510E_527F,
        0x9B05_688C,
        0x1F83_D9AB,
        0x5BE0_CD19,
    ];
    pub const CHUNK_START: u32 = 1;
    pub const CHUNK_END: u32 = 2;
    pub const ROOT: u32 = 8;
    pub const BLOCK_LEN: usize = 64;

    /// Which message word each of a round's sixteen G inputs takes: round `r + 1` permutes
    /// round `r`'s order by BLAKE3's fixed message permutation.
    pub const SCHEDULE: [[usize; 16]; 7] = {
        const PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
        let mut schedule = [[0usize; 16]; 7];
        let mut i = 0;
        while i < 16 {
            schedule[0][i] = i;
            i += 1;
        }
        let mut r = 1;
        while r < 7 {
            let mut i = 0;
            while i < 16 {
                schedule[r][i] = schedule[r - 1][PERMUTATION[i]];
                i += 1;
            }
            r += 1;
        }
        schedule
    };

    /// Per lane, for step `step` of a group: the block it compresses (its message's, its
    /// zero-padded tail, or a zero block once its message has ended), the block's length and
    /// its flags.
    pub fn lane_block<'a>(
        message: &'a [u8],
        blocks: usize,
        step: usize,
        tail: &'a [u8; BLOCK_LEN],
        zero: &'a [u8; BLOCK_LEN],
    ) -> (&'a [u8; BLOCK_LEN], u32, u32) {
        if step >= blocks {
            return (zero, 0, 0);
        }
        let last = step + 1 == blocks;
        let flags =
            if step == 0 { CHUNK_START } else { 0 } | if last { CHUNK_END | ROOT } else { 0 };
        if last {
            (tail, (message.len() - step * BLOCK_LEN) as u32, flags)
        } else {
            let block = message[step * BLOCK_LEN..][..BLOCK_LEN]
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            (block, BLOCK_LEN as u32, flags)
        }
    }

    /// A message's last block, zero-padded as BLAKE3 requires (all zeros for an empty one).
    pub fn tail(message: &[u8]) -> [u8; BLOCK_LEN] {
        let mut tail = [0u8; BLOCK_LEN];
        let last = message.len().saturating_sub(1) / BLOCK_LEN * BLOCK_LEN;
        tail[..message.len() - last].copy_from_slice(&message[last..]);
        tail
    }
}

#[cfg(target_arch = "x86_64")]
mod x16 {
    //! Sixteen single-chunk BLAKE3 hashes in the lanes of AVX-512 vectors, which also rotate
    //! a word in one instruction where AVX2 takes three.
    #![allow(unsafe_code)]

    use std::arch::x86_64::*;

    use super::spec::{lane_block, tail, BLOCK_LEN, IV, SCHEDULE};
    use super::{Hash, CHUNK_LEN};

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// Hashes sixteen messages of at most [`CHUNK_LEN`] bytes. Callers check [`available`].
    pub fn hash16(messages: &[&[u8]; 16], out: &mut [Hash; 16]) {
        debug_assert!(available());
        debug_assert!(messages.iter().all(|m| m.len() <= CHUNK_LEN));
        // SAFETY: AVX-512F is present (checked by the caller through `available`).
        unsafe { hash16_avx512(messages, out) }
    }

    /// The quarter-round G on columns `a, b, c, d` of the state, mixing in words `x, y`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn g(v: &mut [__m512i; 16], [a, b, c, d]: [usize; 4], x: __m512i, y: __m512i) {
        v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), x);
        v[d] = _mm512_ror_epi32::<16>(_mm512_xor_si512(v[d], v[a]));
        v[c] = _mm512_add_epi32(v[c], v[d]);
        v[b] = _mm512_ror_epi32::<12>(_mm512_xor_si512(v[b], v[c]));
        v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), y);
        v[d] = _mm512_ror_epi32::<8>(_mm512_xor_si512(v[d], v[a]));
        v[c] = _mm512_add_epi32(v[c], v[d]);
        v[b] = _mm512_ror_epi32::<7>(_mm512_xor_si512(v[b], v[c]));
    }

    /// Transposes a 16×16 matrix of 32-bit words held as sixteen rows; its own inverse.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose(r: [__m512i; 16]) -> [__m512i; 16] {
        // Within each 128-bit lane: pairs of rows interleaved by words, then by pairs of
        // words, which leaves word k of each lane's four columns in vector 4j + k.
        let t: [__m512i; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi32(a, b)
            } else {
                _mm512_unpackhi_epi32(a, b)
            }
        });
        let u: [__m512i; 16] = std::array::from_fn(|i| {
            let (j, k) = (i / 4, i % 4);
            let (a, b) = (t[4 * j + k / 2], t[4 * j + k / 2 + 2]);
            if k % 2 == 0 {
                _mm512_unpacklo_epi64(a, b)
            } else {
                _mm512_unpackhi_epi64(a, b)
            }
        });
        // Then the 128-bit lanes of the four vectors of each k, transposed as a 4×4 matrix.
        let mut out = r;
        for k in 0..4 {
            let v0 = _mm512_shuffle_i32x4::<0x44>(u[k], u[4 + k]);
            let v1 = _mm512_shuffle_i32x4::<0xEE>(u[k], u[4 + k]);
            let v2 = _mm512_shuffle_i32x4::<0x44>(u[8 + k], u[12 + k]);
            let v3 = _mm512_shuffle_i32x4::<0xEE>(u[8 + k], u[12 + k]);
            out[k] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
            out[4 + k] = _mm512_shuffle_i32x4::<0xDD>(v0, v2);
            out[8 + k] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
            out[12 + k] = _mm512_shuffle_i32x4::<0xDD>(v1, v3);
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    fn hash16_avx512(messages: &[&[u8]; 16], out: &mut [Hash; 16]) {
        let zero_block = [0u8; BLOCK_LEN];
        let tails = messages.map(tail);
        let blocks_of = messages.map(|m| m.len().div_ceil(BLOCK_LEN).max(1));
        let steps = blocks_of.iter().copied().max().unwrap_or(1);
        let as_vector = |words: [u32; 16]| {
            // SAFETY: sixteen u32 are 64 readable bytes; the load is unaligned.
            unsafe { _mm512_loadu_si512(words.as_ptr().cast()) }
        };
        let blocks_vec = as_vector(blocks_of.map(|n| n as u32));
        let mut h = IV.map(|w| _mm512_set1_epi32(w as i32));
        for step in 0..steps {
            let mut block_len = [0u32; 16];
            let mut flags = [0u32; 16];
            let rows: [__m512i; 16] = std::array::from_fn(|lane| {
                let (block, len, flag) = lane_block(
                    messages[lane],
                    blocks_of[lane],
                    step,
                    &tails[lane],
                    &zero_block,
                );
                block_len[lane] = len;
                flags[lane] = flag;
                // SAFETY: a block is 64 readable bytes; the load is unaligned.
                unsafe { _mm512_loadu_si512(block.as_ptr().cast()) }
            });
            let m = transpose(rows);
            let iv = IV.map(|w| _mm512_set1_epi32(w as i32));
            let zero = _mm512_setzero_si512();
            // Every message is chunk 0 of its own input: the counter is zero.
            let tail = [
                iv[0],
                iv[1],
                iv[2],
                iv[3],
                zero,
                zero,
                as_vector(block_len),
                as_vector(flags),
            ];
            let v = rounds!(g, h, tail, m);
            // Lanes whose message has ended keep their chaining value (the final hash).
            let active = _mm512_cmpgt_epi32_mask(blocks_vec, _mm512_set1_epi32(step as i32));
            for (i, word) in h.iter_mut().enumerate() {
                let next = _mm512_xor_si512(v[i], v[i + 8]);
                *word = _mm512_mask_blend_epi32(active, *word, next);
            }
        }
        // Transposed back, row `lane` starts with that lane's eight hash words.
        let zero = _mm512_setzero_si512();
        let rows = transpose(std::array::from_fn(|i| if i < 8 { h[i] } else { zero }));
        for (hash, row) in out.iter_mut().zip(rows) {
            // SAFETY: a hash is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(hash.as_mut_ptr().cast(), _mm512_castsi512_si256(row)) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x8 {
    //! Eight single-chunk BLAKE3 hashes in the lanes of AVX2 vectors.
    #![allow(unsafe_code)]

    use std::arch::x86_64::*;

    use super::spec::{lane_block, tail, BLOCK_LEN, IV, SCHEDULE};
    use super::{Hash, CHUNK_LEN};

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx2")
    }

    /// Hashes eight messages of at most [`CHUNK_LEN`] bytes. Callers check [`available`].
    pub fn hash8(messages: &[&[u8]; 8], out: &mut [Hash; 8]) {
        debug_assert!(available());
        debug_assert!(messages.iter().all(|m| m.len() <= CHUNK_LEN));
        // SAFETY: AVX2 is present (checked by the caller through `available`).
        unsafe { hash8_avx2(messages, out) }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rot16(x: __m256i) -> __m256i {
        let mask = _mm256_setr_epi8(
            2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11,
            8, 9, 14, 15, 12, 13,
        );
        _mm256_shuffle_epi8(x, mask)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rot8(x: __m256i) -> __m256i {
        let mask = _mm256_setr_epi8(
            1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5, 6, 7, 4, 9, 10,
            11, 8, 13, 14, 15, 12,
        );
        _mm256_shuffle_epi8(x, mask)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rot12(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32::<12>(x), _mm256_slli_epi32::<20>(x))
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rot7(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32::<7>(x), _mm256_slli_epi32::<25>(x))
    }

    /// The quarter-round G on columns `a, b, c, d` of the state, mixing in words `x, y`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn g(v: &mut [__m256i; 16], [a, b, c, d]: [usize; 4], x: __m256i, y: __m256i) {
        v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), x);
        v[d] = rot16(_mm256_xor_si256(v[d], v[a]));
        v[c] = _mm256_add_epi32(v[c], v[d]);
        v[b] = rot12(_mm256_xor_si256(v[b], v[c]));
        v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), y);
        v[d] = rot8(_mm256_xor_si256(v[d], v[a]));
        v[c] = _mm256_add_epi32(v[c], v[d]);
        v[b] = rot7(_mm256_xor_si256(v[b], v[c]));
    }

    /// Transposes an 8×8 matrix of 32-bit words held as eight rows; its own inverse.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    /// Loads 32 bytes at `offset` of each lane's block and transposes them into eight words
    /// across the lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load_words(blocks: &[&[u8; BLOCK_LEN]; 8], offset: usize) -> [__m256i; 8] {
        let rows = blocks.map(|block| {
            // SAFETY: `offset` is 0 or 32, so 32 bytes from it lie inside the 64-byte block;
            // the load is unaligned.
            unsafe { _mm256_loadu_si256(block.as_ptr().add(offset).cast()) }
        });
        transpose(rows)
    }

    #[target_feature(enable = "avx2")]
    fn hash8_avx2(messages: &[&[u8]; 8], out: &mut [Hash; 8]) {
        let zero_block = [0u8; BLOCK_LEN];
        let tails = messages.map(tail);
        let blocks_of = messages.map(|m| m.len().div_ceil(BLOCK_LEN).max(1));
        let steps = blocks_of.iter().copied().max().unwrap_or(1);
        let as_i32 = |words: [u32; 8]| {
            // SAFETY: eight u32 are 32 readable bytes; the load is unaligned.
            unsafe { _mm256_loadu_si256(words.as_ptr().cast()) }
        };
        let blocks_vec = as_i32(blocks_of.map(|n| n as u32));
        let mut h = IV.map(|w| _mm256_set1_epi32(w as i32));
        for step in 0..steps {
            let mut block_len = [0u32; 8];
            let mut flags = [0u32; 8];
            let blocks: [&[u8; BLOCK_LEN]; 8] = std::array::from_fn(|lane| {
                let (block, len, flag) = lane_block(
                    messages[lane],
                    blocks_of[lane],
                    step,
                    &tails[lane],
                    &zero_block,
                );
                block_len[lane] = len;
                flags[lane] = flag;
                block
            });
            let low = load_words(&blocks, 0);
            let high = load_words(&blocks, 32);
            let m: [__m256i; 16] =
                std::array::from_fn(|i| if i < 8 { low[i] } else { high[i - 8] });
            let iv = IV.map(|w| _mm256_set1_epi32(w as i32));
            let zero = _mm256_setzero_si256();
            // Every message is chunk 0 of its own input: the counter is zero.
            let tail = [
                iv[0],
                iv[1],
                iv[2],
                iv[3],
                zero,
                zero,
                as_i32(block_len),
                as_i32(flags),
            ];
            let v = rounds!(g, h, tail, m);
            // Lanes whose message has ended keep their chaining value (the final hash).
            let active = _mm256_cmpgt_epi32(blocks_vec, _mm256_set1_epi32(step as i32));
            for (i, word) in h.iter_mut().enumerate() {
                let next = _mm256_xor_si256(v[i], v[i + 8]);
                *word = _mm256_blendv_epi8(*word, next, active);
            }
        }
        for (hash, row) in out.iter_mut().zip(transpose(h)) {
            // SAFETY: a hash is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(hash.as_mut_ptr().cast(), row) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(131)) as u8)
            .collect()
    }

    #[test]
    fn every_length_of_a_chunk_hashes_as_the_blake3_crate_does() {
        // Every length from empty to past a chunk, each group mixing lengths so that lanes
        // sit out steps.
        let messages: Vec<Vec<u8>> = (0..=CHUNK_LEN + 70)
            .map(|len| message(len, (len * 7) % (CHUNK_LEN + 71)))
            .collect();
        let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let mut out = vec![[0u8; 32]; slices.len()];
        hash_many(&slices, &mut out);
        for (message, hash) in slices.iter().zip(&out) {
            assert_eq!(
                hash,
                blake3::hash(message).as_bytes(),
                "length {}",
                message.len()
            );
        }
    }

    /// `hash_many` takes the widest lanes the CPU has; each narrower kind is checked too.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn eight_lanes_hash_as_sixteen_do() {
        if !x8::available() {
            return;
        }
        let messages: Vec<Vec<u8>> = (0..200).map(|i| message(i, i * 5 % 1000)).collect();
        let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let mut out = vec![[0u8; 32]; slices.len()];
        let done = in_lanes(&slices, &mut out, x8::hash8);
        assert_eq!(done, 200);
        for (message, hash) in slices.iter().zip(&out) {
            assert_eq!(
                hash,
                blake3::hash(message).as_bytes(),
                "length {}",
                message.len()
            );
        }
    }

    #[test]
    fn groups_of_equal_lengths_and_a_ragged_end_match() {
        for len in [0, 1, 63, 64, 65, 127, 128, 200, 250, 511, 1023, 1024] {
            let messages: Vec<Vec<u8>> = (0..19).map(|seed| message(seed, len)).collect();
            let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let mut out = vec![[0u8; 32]; slices.len()];
            hash_many(&slices, &mut out);
            for (message, hash) in slices.iter().zip(&out) {
                assert_eq!(hash, blake3::hash(message).as_bytes(), "length {len}");
            }
        }
    }
}
