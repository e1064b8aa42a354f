//! BLAKE3-256 of many short messages at once, eight side by side where the CPU can.
//!
//! A record id hashes the record's canonical encoding, a few hundred bytes: a single BLAKE3
//! chunk of a few 64-byte blocks. The `blake3` crate's SIMD runs the chunks of one long
//! input in parallel, so such a message goes block after block through its one-lane
//! compression. Here the messages of a batch are independent: on x86-64 with AVX2, eight of
//! them run in the eight 32-bit lanes of 256-bit vectors, one block of each per step. A lane
//! whose message has fewer blocks than the longest of its group keeps its chaining value
//! through the steps it sits out. Messages longer than a chunk (1,024 bytes), and every
//! message where AVX2 is missing, go to the `blake3` crate one at a time; the results are
//! the same bytes either way.

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
    if x8::available() {
        for (group, hashes) in messages.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            let group: &[&[u8]; 8] = group.try_into().unwrap_or_else(|_| unreachable!());
            let hashes: &mut [Hash; 8] = hashes.try_into().unwrap_or_else(|_| unreachable!());
            if group.iter().all(|m| m.len() <= CHUNK_LEN) {
                x8::hash8(group, hashes);
            } else {
                for (message, hash) in group.iter().zip(hashes) {
                    *hash = *blake3::hash(message).as_bytes();
                }
            }
        }
        done = messages.len() / 8 * 8;
    }
    for (message, hash) in messages.iter().zip(out.iter_mut()).skip(done) {
        *hash = *blake3::hash(message).as_bytes();
    }
}

#[cfg(target_arch = "x86_64")]
mod x8 {
    //! Eight single-chunk BLAKE3 hashes in the lanes of AVX2 vectors.
    #![allow(unsafe_code)]

    use std::arch::x86_64::*;

    use super::{Hash, CHUNK_LEN};

    const IV: [u32; 8] = [
        0x6A09_E667,
        0xBB67_AE85,
        0x3C6E_F372,
        0xA54F_F53A,
        0x510E_527F,
        0x9B05_688C,
        0x1F83_D9AB,
        0x5BE0_CD19,
    ];
    const CHUNK_START: u32 = 1;
    const CHUNK_END: u32 = 2;
    const ROOT: u32 = 8;
    const BLOCK_LEN: usize = 64;

    /// Which message word each of a round's sixteen G inputs takes: round `r + 1` permutes
    /// round `r`'s order by BLAKE3's fixed message permutation.
    const SCHEDULE: [[usize; 16]; 7] = {
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
        // A message's last block when it is partial, zero-padded as BLAKE3 requires.
        let mut tails = [[0u8; BLOCK_LEN]; 8];
        let blocks_of = messages.map(|m| m.len().div_ceil(BLOCK_LEN).max(1));
        let steps = blocks_of.iter().copied().max().unwrap_or(1);
        for (tail, message) in tails.iter_mut().zip(messages) {
            let last = message.len().saturating_sub(1) / BLOCK_LEN * BLOCK_LEN;
            tail[..message.len() - last].copy_from_slice(&message[last..]);
        }
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
                let (message, n) = (messages[lane], blocks_of[lane]);
                if step >= n {
                    return &zero_block;
                }
                let last = step + 1 == n;
                block_len[lane] = if last {
                    (message.len() - step * BLOCK_LEN) as u32
                } else {
                    BLOCK_LEN as u32
                };
                flags[lane] = if step == 0 { CHUNK_START } else { 0 }
                    | if last { CHUNK_END | ROOT } else { 0 };
                if last {
                    &tails[lane]
                } else {
                    message[step * BLOCK_LEN..][..BLOCK_LEN]
                        .try_into()
                        .unwrap_or_else(|_| unreachable!())
                }
            });
            let low = load_words(&blocks, 0);
            let high = load_words(&blocks, 32);
            let m: [__m256i; 16] =
                std::array::from_fn(|i| if i < 8 { low[i] } else { high[i - 8] });
            let zero = _mm256_setzero_si256();
            let mut v = [
                h[0],
                h[1],
                h[2],
                h[3],
                h[4],
                h[5],
                h[6],
                h[7],
                _mm256_set1_epi32(IV[0] as i32),
                _mm256_set1_epi32(IV[1] as i32),
                _mm256_set1_epi32(IV[2] as i32),
                _mm256_set1_epi32(IV[3] as i32),
                // Every message is chunk 0 of its own input: the counter is zero.
                zero,
                zero,
                as_i32(block_len),
                as_i32(flags),
            ];
            for s in &SCHEDULE {
                g(&mut v, [0, 4, 8, 12], m[s[0]], m[s[1]]);
                g(&mut v, [1, 5, 9, 13], m[s[2]], m[s[3]]);
                g(&mut v, [2, 6, 10, 14], m[s[4]], m[s[5]]);
                g(&mut v, [3, 7, 11, 15], m[s[6]], m[s[7]]);
                g(&mut v, [0, 5, 10, 15], m[s[8]], m[s[9]]);
                g(&mut v, [1, 6, 11, 12], m[s[10]], m[s[11]]);
                g(&mut v, [2, 7, 8, 13], m[s[12]], m[s[13]]);
                g(&mut v, [3, 4, 9, 14], m[s[14]], m[s[15]]);
            }
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
