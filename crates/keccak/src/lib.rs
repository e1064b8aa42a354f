//! keccak256 of the one-block messages Merkle trees hash, four at a time where the CPU can.
//!
//! A crate of its own so that debug builds of the engine still get it optimised: the
//! intrinsics are slow beyond use without inlining.
//!
//! A tree over a million records costs three million keccak256s: each leaf is
//! `keccak256(keccak256(value))` of 32 bytes and each inner node `keccak256(lo || hi)` of 64.
//! The hashes of one level are independent, so on x86-64 they run side by side, one state in
//! each 64-bit lane of 25 registers' worth of vectors: eight at a time with AVX-512, four
//! with AVX2; elsewhere one at a time on the `keccak` crate's permutation. Both paths skip the
//! sponge's buffering: a message shorter than the rate (136 bytes) is a single block.

/// A 32-byte keccak256 digest.
pub type Hash = [u8; 32];

/// A Keccak-f[1600] state: 25 lanes of 64 bits, lane `x + 5y` at (x, y).
type State = [u64; 25];

/// Lanes a keccak256 block covers (136 bytes).
const RATE_LANES: usize = 17;

/// The state after absorbing `block` as a whole message: the original Keccak padding
/// (0x01 after the message, 0x80 in the block's last byte), not SHA-3's.
fn absorb<const N: usize>(block: &[u8; N]) -> State {
    const { assert!(N.is_multiple_of(8) && N < RATE_LANES * 8) };
    let mut state = [0u64; 25];
    for (lane, word) in state.iter_mut().zip(block.chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        *lane = u64::from_le_bytes(bytes);
    }
    state[N / 8] ^= 0x01;
    state[RATE_LANES - 1] ^= 0x80 << 56;
    state
}

fn squeeze(state: &State) -> Hash {
    let mut out = [0u8; 32];
    for (bytes, lane) in out.chunks_exact_mut(8).zip(state) {
        bytes.copy_from_slice(&lane.to_le_bytes());
    }
    out
}

/// keccak256 of a message of `N` bytes, `N` a multiple of 8 below 136.
pub fn hash<const N: usize>(message: &[u8; N]) -> Hash {
    let mut state = absorb(message);
    keccak::f1600(&mut state);
    squeeze(&state)
}

/// Fills `out[i]` with the hash of `block(i)`, hashed twice over (`keccak256(keccak256(..))`)
/// when `twice`.
pub fn hash_many<const N: usize>(out: &mut [Hash], twice: bool, block: impl Fn(usize) -> [u8; N]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if x8::available() {
            done = hash_groups_x8(out, twice, &block);
        }
        if x4::available() {
            let start = done;
            done += hash_groups_x4(&mut out[start..], twice, |i| block(start + i));
        }
    }
    for (i, hash) in out.iter_mut().enumerate().skip(done) {
        let once = self::hash(&block(i));
        *hash = if twice { self::hash(&once) } else { once };
    }
}

/// Hashes the whole groups of eight at the start of `out` with AVX-512; returns how many.
#[cfg(target_arch = "x86_64")]
fn hash_groups_x8<const N: usize>(
    out: &mut [Hash],
    twice: bool,
    block: impl Fn(usize) -> [u8; N],
) -> usize {
    for (group, hashes) in out.chunks_exact_mut(8).enumerate() {
        let first = group * 8;
        let mut states: [State; 8] = std::array::from_fn(|k| absorb(&block(first + k)));
        x8::permute(&mut states, twice);
        for (hash, state) in hashes.iter_mut().zip(&states) {
            *hash = squeeze(state);
        }
    }
    out.len() / 8 * 8
}

/// Hashes the whole groups of four at the start of `out` with AVX2; returns how many.
#[cfg(target_arch = "x86_64")]
fn hash_groups_x4<const N: usize>(
    out: &mut [Hash],
    twice: bool,
    block: impl Fn(usize) -> [u8; N],
) -> usize {
    for (group, hashes) in out.chunks_exact_mut(4).enumerate() {
        let first = group * 4;
        let mut states = [0, 1, 2, 3].map(|k| absorb(&block(first + k)));
        x4::permute(&mut states);
        if twice {
            states = states.map(|s| absorb(&squeeze(&s)));
            x4::permute(&mut states);
        }
        for (hash, state) in hashes.iter_mut().zip(&states) {
            *hash = squeeze(state);
        }
    }
    out.len() / 4 * 4
}

/// The round constants of Keccak-f[1600], ι's input.
#[cfg(target_arch = "x86_64")]
const ROUND_CONSTANTS: [u64; 24] = [
    0x0000_0000_0000_0001,
    0x0000_0000_0000_8082,
    0x8000_0000_0000_808a,
    0x8000_0000_8000_8000,
    0x0000_0000_0000_808b,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8009,
    0x0000_0000_0000_008a,
    0x0000_0000_0000_0088,
    0x0000_0000_8000_8009,
    0x0000_0000_8000_000a,
    0x0000_0000_8000_808b,
    0x8000_0000_0000_008b,
    0x8000_0000_0000_8089,
    0x8000_0000_0000_8003,
    0x8000_0000_0000_8002,
    0x8000_0000_0000_0080,
    0x0000_0000_0000_800a,
    0x8000_0000_8000_000a,
    0x8000_0000_8000_8081,
    0x8000_0000_0000_8080,
    0x0000_0000_8000_0001,
    0x8000_0000_8000_8008,
];

/// ρ and π as (destination lane, source lane, rotation): `b[dst] = rol(a[src], r)`.
#[cfg(target_arch = "x86_64")]
macro_rules! rho_pi {
    ($rol:ident, $a:ident, $b:ident) => {
        rho_pi!(@ $rol, $a, $b;
            (0, 0, 0), (16, 5, 36), (7, 10, 3), (23, 15, 41), (14, 20, 18),
            (10, 1, 1), (1, 6, 44), (17, 11, 10), (8, 16, 45), (24, 21, 2),
            (20, 2, 62), (11, 7, 6), (2, 12, 43), (18, 17, 15), (9, 22, 61),
            (5, 3, 28), (21, 8, 55), (12, 13, 25), (3, 18, 21), (19, 23, 56),
            (15, 4, 27), (6, 9, 20), (22, 14, 39), (13, 19, 8), (4, 24, 14),
        )
    };
    (@ $rol:ident, $a:ident, $b:ident; $(($dst:literal, $src:literal, $r:tt)),* $(,)?) => {
        $( $b[$dst] = $rol!($a[$src], $r); )*
    };
}

#[cfg(target_arch = "x86_64")]
mod x8 {
    //! Eight Keccak-f[1600] permutations in the lanes of AVX-512 vectors. Beside the width,
    //! AVX-512 has a 64-bit rotate and three-input logic, so θ's five-way parity is two
    //! instructions and χ one, where AVX2 takes four and two.
    #![allow(unsafe_code)]

    use std::arch::x86_64::*;

    use super::{State, RATE_LANES, ROUND_CONSTANTS};

    /// `a ^ b ^ c` as a truth table for `vpternlogq`.
    const XOR3: i32 = 0x96;
    /// `a ^ (!b & c)`, χ's step.
    const CHI: i32 = 0xd2;

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// Permutes eight states; with `twice`, then hashes each state's digest as a 32-byte
    /// message and permutes again, without leaving the registers. Callers check
    /// [`available`] first.
    pub fn permute(states: &mut [State; 8], twice: bool) {
        debug_assert!(available());
        // SAFETY: AVX-512F is present (checked by the caller through `available`).
        unsafe { permute_avx512(states, twice) }
    }

    macro_rules! rol {
        ($v:expr, 0) => {
            $v
        };
        ($v:expr, $n:literal) => {
            _mm512_rol_epi64::<$n>($v)
        };
    }

    #[target_feature(enable = "avx512f")]
    fn rounds(a: &mut [__m512i; 25]) {
        let mut b = [_mm512_setzero_si512(); 25];
        for rc in ROUND_CONSTANTS {
            let mut c = [_mm512_setzero_si512(); 5];
            for (x, parity) in c.iter_mut().enumerate() {
                let three = _mm512_ternarylogic_epi64::<XOR3>(a[x], a[x + 5], a[x + 10]);
                *parity = _mm512_ternarylogic_epi64::<XOR3>(three, a[x + 15], a[x + 20]);
            }
            for x in 0..5 {
                let d = _mm512_xor_si512(c[(x + 4) % 5], rol!(c[(x + 1) % 5], 1));
                for y in 0..5 {
                    a[x + 5 * y] = _mm512_xor_si512(a[x + 5 * y], d);
                }
            }
            rho_pi!(rol, a, b);
            for y in 0..5 {
                let row = 5 * y;
                for x in 0..5 {
                    a[row + x] = _mm512_ternarylogic_epi64::<CHI>(
                        b[row + x],
                        b[row + (x + 1) % 5],
                        b[row + (x + 2) % 5],
                    );
                }
            }
            a[0] = _mm512_xor_si512(a[0], _mm512_set1_epi64(rc as i64));
        }
    }

    #[target_feature(enable = "avx512f")]
    fn permute_avx512(states: &mut [State; 8], twice: bool) {
        let mut a = [_mm512_setzero_si512(); 25];
        for (i, lane) in a.iter_mut().enumerate() {
            *lane = _mm512_set_epi64(
                states[7][i] as i64,
                states[6][i] as i64,
                states[5][i] as i64,
                states[4][i] as i64,
                states[3][i] as i64,
                states[2][i] as i64,
                states[1][i] as i64,
                states[0][i] as i64,
            );
        }
        rounds(&mut a);
        if twice {
            // The digest is the first four lanes; as a 32-byte message it is padded with
            // 0x01 in lane 4 and 0x80 in the last byte of the rate.
            for (i, lane) in a.iter_mut().enumerate().skip(4) {
                *lane = match i {
                    4 => _mm512_set1_epi64(0x01),
                    i if i == RATE_LANES - 1 => _mm512_set1_epi64((0x80u64 << 56) as i64),
                    _ => _mm512_setzero_si512(),
                };
            }
            rounds(&mut a);
        }
        let mut lanes = [0u64; 8];
        // Only the digest's four lanes are read back.
        for (i, lane) in a.iter().enumerate().take(4) {
            // SAFETY: `lanes` is 64 writable bytes; the store is unaligned.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), *lane) };
            for (state, value) in states.iter_mut().zip(lanes) {
                state[i] = value;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x4 {
    //! Four Keccak-f[1600] permutations in the lanes of AVX2 vectors.
    #![allow(unsafe_code)]

    use std::arch::x86_64::*;

    use super::{State, ROUND_CONSTANTS};

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx2")
    }

    /// Permutes four states. Callers check [`available`] first.
    pub fn permute(states: &mut [State; 4]) {
        debug_assert!(available());
        // SAFETY: AVX2 is present (checked by the caller through `available`).
        unsafe { permute_avx2(states) }
    }

    /// Rotates each 64-bit lane left by the literal `$n` (0 < n < 64 or n = 0).
    macro_rules! rol {
        ($v:expr, 0) => {
            $v
        };
        ($v:expr, $n:literal) => {
            _mm256_or_si256(
                _mm256_slli_epi64::<$n>($v),
                _mm256_srli_epi64::<{ 64 - $n }>($v),
            )
        };
    }

    #[target_feature(enable = "avx2")]
    fn permute_avx2(states: &mut [State; 4]) {
        let mut a = [_mm256_setzero_si256(); 25];
        for (i, lane) in a.iter_mut().enumerate() {
            *lane = _mm256_set_epi64x(
                states[3][i] as i64,
                states[2][i] as i64,
                states[1][i] as i64,
                states[0][i] as i64,
            );
        }
        let mut b = [_mm256_setzero_si256(); 25];
        for rc in ROUND_CONSTANTS {
            // θ: every lane takes the parities of the columns beside it.
            let mut c = [_mm256_setzero_si256(); 5];
            for (x, parity) in c.iter_mut().enumerate() {
                *parity = _mm256_xor_si256(
                    _mm256_xor_si256(_mm256_xor_si256(a[x], a[x + 5]), a[x + 10]),
                    _mm256_xor_si256(a[x + 15], a[x + 20]),
                );
            }
            for x in 0..5 {
                let d = _mm256_xor_si256(c[(x + 4) % 5], rol!(c[(x + 1) % 5], 1));
                for y in 0..5 {
                    a[x + 5 * y] = _mm256_xor_si256(a[x + 5 * y], d);
                }
            }
            rho_pi!(rol, a, b);
            // χ: the one non-linear step, along each row.
            for y in 0..5 {
                let row = 5 * y;
                for x in 0..5 {
                    a[row + x] = _mm256_xor_si256(
                        b[row + x],
                        _mm256_andnot_si256(b[row + (x + 1) % 5], b[row + (x + 2) % 5]),
                    );
                }
            }
            // ι
            a[0] = _mm256_xor_si256(a[0], _mm256_set1_epi64x(rc as i64));
        }
        let mut lanes = [0u64; 4];
        for (i, lane) in a.iter().enumerate() {
            // SAFETY: `lanes` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *lane) };
            for (state, value) in states.iter_mut().zip(lanes) {
                state[i] = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha3::{Digest, Keccak256};

    fn reference(data: &[u8]) -> Hash {
        Keccak256::digest(data).into()
    }

    fn block<const N: usize>(seed: usize) -> [u8; N] {
        std::array::from_fn(|i| (seed.wrapping_mul(2_654_435_761) >> (i % 24)) as u8 ^ i as u8)
    }

    #[test]
    fn one_block_hashes_match_the_sponge() {
        for seed in 0..64 {
            let b32 = block::<32>(seed);
            let b64 = block::<64>(seed);
            let b128 = block::<128>(seed);
            assert_eq!(hash(&b32), reference(&b32));
            assert_eq!(hash(&b64), reference(&b64));
            assert_eq!(hash(&b128), reference(&b128));
        }
        assert_eq!(
            hash(&[0u8; 32]),
            reference(&[0u8; 32]),
            "the all-zero block"
        );
    }

    /// Each vector path on its own, where this CPU has it, against the sponge.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn each_vector_width_matches_the_sponge() {
        type Groups = fn(&mut [Hash], bool, fn(usize) -> [u8; 64]) -> usize;
        type Twice = fn(&mut [Hash], bool, fn(usize) -> [u8; 32]) -> usize;
        let paths: [(bool, &str, Groups, Twice); 2] = [
            (
                x8::available(),
                "x8",
                hash_groups_x8::<64>,
                hash_groups_x8::<32>,
            ),
            (
                x4::available(),
                "x4",
                hash_groups_x4::<64>,
                hash_groups_x4::<32>,
            ),
        ];
        for (available, name, once_groups, twice_groups) in paths {
            if !available {
                eprintln!("{name}: not on this CPU");
                continue;
            }
            let n = 24;
            let mut once = vec![[0u8; 32]; n];
            assert_eq!(once_groups(&mut once, false, block::<64>), n, "{name}");
            let mut twice = vec![[0u8; 32]; n];
            assert_eq!(twice_groups(&mut twice, true, block::<32>), n, "{name}");
            for i in 0..n {
                assert_eq!(once[i], reference(&block::<64>(i)), "{name}, item {i}");
                let expected = reference(&reference(&block::<32>(i)));
                assert_eq!(twice[i], expected, "{name}, item {i}");
            }
        }
    }

    #[test]
    fn many_at_once_match_one_at_a_time_for_every_remainder() {
        for n in [0, 1, 3, 4, 5, 8, 9, 12, 13, 15, 64, 67] {
            let mut once = vec![[0u8; 32]; n];
            hash_many(&mut once, false, block::<64>);
            let mut twice = vec![[0u8; 32]; n];
            hash_many(&mut twice, true, block::<32>);
            for i in 0..n {
                assert_eq!(once[i], reference(&block::<64>(i)), "n {n}, item {i}");
                assert_eq!(
                    twice[i],
                    reference(&reference(&block::<32>(i))),
                    "n {n}, item {i}"
                );
            }
        }
    }
}
