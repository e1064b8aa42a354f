//! Keccak256 Merkle trees in the layout of OpenZeppelin's `StandardMerkleTree`.
//!
//! Everything Tributary commits outward (contribution batches, Datanet versions, later
//! attribution batches and payouts) is a root of this kind, so a Solidity contract using
//! `MerkleProof.verify`, or the `@openzeppelin/merkle-tree` JavaScript library, can check any
//! proof we hand out.
//!
//! The layout, as the library defines it:
//! - a leaf is `keccak256(keccak256(abi.encode(values)))`; for one `bytes32` value that is
//!   `keccak256(keccak256(value))`;
//! - leaves are sorted by hash, then stored at the end of a flat array in reverse order;
//! - each inner node hashes its two children in sorted order (`hashPair`).
//!
//! An empty tree, which the library refuses to build, has the zero root here: a Datanet version
//! with no records commits to nothing.

mod buckets;

use sha3::{Digest, Keccak256};
use tributary_keccak as keccak;

pub use buckets::LeafBuckets;

/// A 32-byte keccak256 digest.
pub use tributary_keccak::Hash;

/// keccak256 of `data`.
pub fn keccak256(data: &[u8]) -> Hash {
    Keccak256::digest(data).into()
}

/// The leaf hash of a single `bytes32` value (`abi.encode(bytes32)` is the value itself).
pub fn leaf_bytes32(value: &Hash) -> Hash {
    keccak::hash(&keccak::hash(value))
}

/// [`leaf_bytes32`] of every value, several at a time.
pub fn leaves_bytes32(values: &[Hash]) -> Vec<Hash> {
    let mut leaves = Vec::new();
    push_leaves_bytes32(values, &mut leaves);
    leaves
}

/// Appends [`leaf_bytes32`] of every value to `leaves`, hashed where they land.
pub fn push_leaves_bytes32(values: &[Hash], leaves: &mut Vec<Hash>) {
    push_keccak(values, true, leaves);
}

/// The first of the two hashes of [`leaf_bytes32`], `keccak256(value)`, of every value: a
/// pipeline splits the leaf between two threads with it and [`push_leaves_from_first`].
pub fn first_hashes_bytes32(values: &[Hash]) -> Vec<Hash> {
    let mut first = Vec::with_capacity(values.len());
    push_keccak(values, false, &mut first);
    first
}

/// Appends the leaves whose first hashes ([`first_hashes_bytes32`]) are `first`.
pub fn push_leaves_from_first(first: &[Hash], leaves: &mut Vec<Hash>) {
    push_keccak(first, false, leaves);
}

/// Appends `keccak256` of every value (of that again when `twice`) to `out`, hashed where
/// they land.
fn push_keccak(values: &[Hash], twice: bool, out: &mut Vec<Hash>) {
    let start = out.len();
    out.resize(start + values.len(), [0u8; 32]);
    keccak::hash_many(&mut out[start..], twice, |i| values[i]);
}

/// How many threads a large tree's work is split over.
fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(8)
}

/// The leaf hash of an `(address, uint256)` pair, as payout trees use.
pub fn leaf_address_uint256(address: &[u8; 20], amount: u128) -> Hash {
    keccak::hash(&keccak::hash(&address_uint256(address, amount)))
}

/// [`leaf_address_uint256`] of `pair(i)` for `i` in `0..n`, several at a time.
pub fn leaves_address_uint256(n: usize, pair: impl Fn(usize) -> ([u8; 20], u128)) -> Vec<Hash> {
    let mut leaves = vec![[0u8; 32]; n];
    keccak::hash_many(&mut leaves, true, |i| {
        let (address, amount) = pair(i);
        address_uint256(&address, amount)
    });
    leaves
}

/// `abi.encode(address, uint256)`.
fn address_uint256(address: &[u8; 20], amount: u128) -> [u8; 64] {
    let mut encoded = [0u8; 64];
    encoded[12..32].copy_from_slice(address);
    encoded[48..64].copy_from_slice(&amount.to_be_bytes());
    encoded
}

/// The 64 bytes an inner node hashes: its children in sorted order.
fn pair_block(a: &Hash, b: &Hash) -> [u8; 64] {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo);
    buf[32..].copy_from_slice(hi);
    buf
}

fn hash_pair(a: &Hash, b: &Hash) -> Hash {
    keccak::hash(&pair_block(a, b))
}

/// Hashes spread over this many buckets by their first two bytes before they are compared.
const BUCKETS: usize = 1 << 16;

fn bucket(h: &Hash) -> usize {
    usize::from(h[0]) << 8 | usize::from(h[1])
}

/// Byte order of hashes; the first eight bytes compared as one integer spare a `memcmp`
/// call per comparison.
fn compare_hashes(a: &Hash, b: &Hash) -> std::cmp::Ordering {
    let prefix = |h: &Hash| {
        let mut head = [0u8; 8];
        head.copy_from_slice(&h[..8]);
        u64::from_be_bytes(head)
    };
    prefix(a).cmp(&prefix(b)).then_with(|| a.cmp(b))
}

/// Places `make(i, &source[i])` for every `i` into `out` (as long as `source`), sorted by the
/// hash `key` gives, in byte order; with `reversed`, in the opposite order. Hashes are uniform,
/// so a large input is spread over buckets by its first two bytes (one pass to count, one to
/// place), leaving a few items a bucket to compare: a million entries sort several times
/// faster than by comparisons alone, and the items are written once, straight to where they
/// end up.
fn scatter_by_hash<S, T: Copy>(
    source: &[S],
    make: impl Fn(usize, &S) -> T,
    key: impl Fn(&T) -> &Hash,
    out: &mut [T],
    reversed: bool,
) {
    let n = source.len();
    debug_assert_eq!(n, out.len());
    let compare = |a: &T, b: &T| {
        let order = compare_hashes(key(a), key(b));
        if reversed {
            order.reverse()
        } else {
            order
        }
    };
    if n < BUCKETS / 4 {
        for (slot, (i, s)) in out.iter_mut().zip(source.iter().enumerate()) {
            *slot = make(i, s);
        }
        out.sort_unstable_by(compare);
        return;
    }
    let mut starts = vec![0usize; BUCKETS + 1];
    for (i, s) in source.iter().enumerate() {
        starts[bucket(key(&make(i, s))) + 1] += 1;
    }
    for b in 0..BUCKETS {
        starts[b + 1] += starts[b];
    }
    let mut next = starts.clone();
    for (i, s) in source.iter().enumerate() {
        let t = make(i, s);
        let b = bucket(key(&t));
        let at = if reversed { n - 1 - next[b] } else { next[b] };
        out[at] = t;
        next[b] += 1;
    }
    for b in 0..BUCKETS {
        let (lo, hi) = (starts[b], starts[b + 1]);
        let range = if reversed { n - hi..n - lo } else { lo..hi };
        out[range].sort_unstable_by(compare);
    }
}

/// Sorts `items` by the hash `key` gives, in byte order.
pub fn sort_by_hash<T: Copy>(items: &mut [T], key: impl Fn(&T) -> &Hash) {
    if items.len() < BUCKETS / 4 {
        items.sort_unstable_by(|a, b| compare_hashes(key(a), key(b)));
        return;
    }
    // The scatter reads a copy, since it writes `items` in another order.
    let unsorted = items.to_vec();
    scatter_by_hash(&unsorted, |_, t| *t, key, items, false);
}

/// `make(i, &source[i])` for every `i`, sorted by the hash `key` gives, in byte order: what
/// collecting and then [`sort_by_hash`] give, without the intermediate copy.
pub fn sorted_by_hash<S, T: Copy + Default>(
    source: &[S],
    make: impl Fn(usize, &S) -> T,
    key: impl Fn(&T) -> &Hash,
) -> Vec<T> {
    // Zeroed memory comes fresh from the kernel, so this costs no pass of its own.
    let mut out = vec![T::default(); source.len()];
    scatter_by_hash(source, make, key, &mut out, false);
    out
}

/// Levels smaller than this are hashed on one thread: spawning costs more than it saves.
const PARALLEL_LEVEL: usize = 1 << 14;

/// Hashes the nodes `first..first + parents.len()` from their children, which live in
/// `children` starting at node index `offset`.
fn hash_level(parents: &mut [Hash], first: usize, children: &[Hash], offset: usize) {
    let fill = |slice: &mut [Hash], start: usize| {
        keccak::hash_many(slice, false, |k| {
            let i = start + k;
            pair_block(&children[2 * i + 1 - offset], &children[2 * i + 2 - offset])
        });
    };
    let threads = worker_threads();
    if parents.len() < PARALLEL_LEVEL || threads < 2 {
        fill(parents, first);
        return;
    }
    let per = parents.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (j, slice) in parents.chunks_mut(per).enumerate() {
            scope.spawn(move || fill(slice, first + j * per));
        }
    });
}

/// A built tree: the flat node array and the sorted leaves.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    nodes: Vec<Hash>,
    leaf_count: usize,
}

impl MerkleTree {
    /// Builds the tree over leaf hashes (already hashed with one of the `leaf_*` functions).
    /// Order does not matter: leaves are sorted first, as the reference library does.
    pub fn from_leaves(leaves: Vec<Hash>) -> Self {
        // The leaves go straight to their sorted places at the end of the array, in reverse.
        Self::with_leaves_placed(leaves.len(), |region| {
            scatter_by_hash(&leaves, |_, h| *h, |h| h, region, true)
        })
    }

    /// Builds the tree over `n` leaves that `place` writes into their slots, sorted in
    /// reverse order.
    fn with_leaves_placed(n: usize, place: impl FnOnce(&mut [Hash])) -> Self {
        if n == 0 {
            return Self {
                nodes: Vec::new(),
                leaf_count: 0,
            };
        }
        // `vec![[0; 32]; len]` would write every zero itself (std counts only short arrays as
        // zero); zeroed memory from the allocator comes cleared from the kernel.
        let mut nodes: Vec<Hash> = bytemuck::zeroed_vec(2 * n - 1);
        place(&mut nodes[n - 1..]);
        // Inner nodes level by level, deepest first: a level's nodes depend only on the level
        // below, so a large level is split across threads.
        let inner = n - 1;
        if inner > 0 {
            let deepest = usize::BITS - 1 - inner.leading_zeros();
            for depth in (0..=deepest).rev() {
                let lo = (1usize << depth) - 1;
                let hi = ((1usize << (depth + 1)) - 1).min(inner);
                let (parents, children) = nodes.split_at_mut(hi);
                hash_level(&mut parents[lo..hi], lo, children, hi);
            }
        }
        Self {
            nodes,
            leaf_count: n,
        }
    }

    /// The root, or all zeros for an empty tree.
    pub fn root(&self) -> Hash {
        self.nodes.first().copied().unwrap_or([0u8; 32])
    }

    pub fn len(&self) -> usize {
        self.leaf_count
    }

    pub fn is_empty(&self) -> bool {
        self.leaf_count == 0
    }

    /// The proof for a leaf hash (sibling hashes from the leaf up), or `None` if it is not in
    /// the tree.
    pub fn proof(&self, leaf: &Hash) -> Option<Vec<Hash>> {
        let node = |i: usize| Ok::<_, std::convert::Infallible>(self.nodes[i]);
        let index = find_leaf(self.leaf_count, leaf, node).ok().flatten()?;
        siblings(index, node).ok()
    }

    /// The flat node array, the layout [`StoredTree`] reads back.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.nodes.concat()
    }
}

/// Where a leaf hash sits in the node array. Leaves occupy the last `n` slots, the smallest
/// last, so a binary search over them finds it in `log2(n)` node reads.
fn find_leaf<E>(
    leaf_count: usize,
    leaf: &Hash,
    node: impl Fn(usize) -> Result<Hash, E>,
) -> Result<Option<usize>, E> {
    let total = (2 * leaf_count).saturating_sub(1);
    let (mut lo, mut hi) = (0usize, leaf_count);
    // Invariant: the k-th smallest leaf (at slot total - 1 - k) is in lo..hi if present.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let value = node(total - 1 - mid)?;
        match value.cmp(leaf) {
            std::cmp::Ordering::Equal => return Ok(Some(total - 1 - mid)),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    Ok(None)
}

fn siblings<E>(mut index: usize, node: impl Fn(usize) -> Result<Hash, E>) -> Result<Vec<Hash>, E> {
    let mut proof = Vec::new();
    while index > 0 {
        let sibling = if index % 2 == 1 { index + 1 } else { index - 1 };
        proof.push(node(sibling)?);
        index = (index - 1) / 2;
    }
    Ok(proof)
}

/// A tree stored with [`MerkleTree::to_bytes`], read node by node from its file: a proof
/// costs about `2 log2(n)` reads of 32 bytes instead of rebuilding the tree.
pub struct StoredTree {
    file: std::fs::File,
    leaf_count: usize,
}

impl StoredTree {
    pub fn open(file: std::fs::File) -> std::io::Result<Self> {
        let nodes = (file.metadata()?.len() / 32) as usize;
        Ok(Self {
            file,
            leaf_count: nodes.div_ceil(2),
        })
    }

    fn node(&self, i: usize) -> std::io::Result<Hash> {
        use std::os::unix::fs::FileExt;
        let mut hash = [0u8; 32];
        self.file.read_exact_at(&mut hash, (i * 32) as u64)?;
        Ok(hash)
    }

    /// The root, or all zeros for an empty tree.
    pub fn root(&self) -> std::io::Result<Hash> {
        if self.leaf_count == 0 {
            return Ok([0u8; 32]);
        }
        self.node(0)
    }

    pub fn proof(&self, leaf: &Hash) -> std::io::Result<Option<Vec<Hash>>> {
        match find_leaf(self.leaf_count, leaf, |i| self.node(i))? {
            Some(index) => siblings(index, |i| self.node(i)).map(Some),
            None => Ok(None),
        }
    }
}

/// Checks a proof against a root, as `MerkleProof.verify` does on chain.
pub fn verify(root: &Hash, leaf: &Hash, proof: &[Hash]) -> bool {
    let computed = proof
        .iter()
        .fold(*leaf, |acc, sibling| hash_pair(&acc, sibling));
    &computed == root
}

/// The root of a set of `bytes32` values (record ids), the commitment a contributor signs.
pub fn root_of_bytes32<'a>(values: impl IntoIterator<Item = &'a Hash>) -> Hash {
    let values: Vec<Hash> = values.into_iter().copied().collect();
    MerkleTree::from_leaves(leaves_bytes32(&values)).root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> Vec<Hash> {
        (0..n).map(|i| keccak256(&[i])).collect()
    }

    #[test]
    fn every_leaf_has_a_proof_that_verifies() {
        for n in 1..=9u8 {
            let leaves: Vec<Hash> = ids(n).iter().map(leaf_bytes32).collect();
            let tree = MerkleTree::from_leaves(leaves.clone());
            for leaf in &leaves {
                let proof = tree.proof(leaf).expect("leaf is in the tree");
                assert!(verify(&tree.root(), leaf, &proof), "n={n}");
            }
            let outsider = leaf_bytes32(&keccak256(b"not a member"));
            assert!(tree.proof(&outsider).is_none());
        }
    }

    #[test]
    fn leaves_hashed_together_equal_leaves_hashed_alone() {
        let values = ids(23);
        let alone: Vec<Hash> = values.iter().map(leaf_bytes32).collect();
        assert_eq!(leaves_bytes32(&values), alone);
        let mut appended = leaves_bytes32(&values[..5]);
        push_leaves_bytes32(&values[5..], &mut appended);
        assert_eq!(appended, alone);
        let mut split = leaves_bytes32(&values[..3]);
        push_leaves_from_first(&first_hashes_bytes32(&values[3..]), &mut split);
        assert_eq!(split, alone);
        let pair = |i: usize| {
            let mut address = [0u8; 20];
            address.copy_from_slice(&values[i][..20]);
            (
                address,
                u128::from_le_bytes(values[i][..16].try_into().expect("16 bytes")),
            )
        };
        let alone: Vec<Hash> = (0..values.len())
            .map(|i| leaf_address_uint256(&pair(i).0, pair(i).1))
            .collect();
        assert_eq!(leaves_address_uint256(values.len(), pair), alone);
    }

    #[test]
    fn sorting_by_hash_is_byte_order() {
        // Enough hashes to take the bucketed path.
        let mut hashes: Vec<Hash> = (0..40_000u32)
            .map(|i| keccak256(&i.to_le_bytes()))
            .collect();
        // Hashes sharing their first eight bytes are ordered by the rest.
        for i in 0..50 {
            let mut h = hashes[i];
            h[31] ^= 1;
            hashes.push(h);
        }
        let mut expected = hashes.clone();
        expected.sort_unstable();
        let gathered = sorted_by_hash(&hashes, |i, h| (*h, i), |entry| &entry.0);
        for (entry, want) in gathered.iter().zip(&expected) {
            assert_eq!(&entry.0, want);
            assert_eq!(hashes[entry.1], entry.0, "an entry keeps its source index");
        }
        assert_eq!(gathered.len(), expected.len());
        sort_by_hash(&mut hashes, |h| h);
        assert_eq!(hashes, expected);
    }

    #[test]
    fn root_does_not_depend_on_input_order() {
        let mut values = ids(7);
        let a = root_of_bytes32(&values);
        values.reverse();
        assert_eq!(a, root_of_bytes32(&values));
    }

    #[test]
    fn single_leaf_root_is_the_leaf_and_empty_is_zero() {
        let v = keccak256(b"x");
        assert_eq!(root_of_bytes32([&v]), leaf_bytes32(&v));
        assert_eq!(root_of_bytes32([]), [0u8; 32]);
    }

    #[test]
    fn parallel_levels_match_a_plain_pairwise_build() {
        // Large enough that the widest levels are split across threads.
        let leaves: Vec<Hash> = (0..70_001u32)
            .map(|i| leaf_bytes32(&keccak256(&i.to_le_bytes())))
            .collect();
        let tree = MerkleTree::from_leaves(leaves.clone());
        let mut sorted = leaves;
        sorted.sort_unstable();
        let total = 2 * sorted.len() - 1;
        let mut nodes = vec![[0u8; 32]; total];
        for (i, leaf) in sorted.iter().enumerate() {
            nodes[total - 1 - i] = *leaf;
        }
        for i in (0..sorted.len() - 1).rev() {
            nodes[i] = hash_pair(&nodes[2 * i + 1], &nodes[2 * i + 2]);
        }
        assert_eq!(tree.root(), nodes[0]);
        // Every node, leaves included: they were placed in reverse sorted order directly.
        assert_eq!(tree.to_bytes(), nodes.concat());
    }

    #[test]
    fn stored_tree_gives_the_same_proofs() {
        let leaves: Vec<Hash> = ids(11).iter().map(leaf_bytes32).collect();
        let tree = MerkleTree::from_leaves(leaves.clone());
        let mut file = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut file, &tree.to_bytes()).expect("write");
        let stored = StoredTree::open(file).expect("open");
        assert_eq!(stored.root().expect("root"), tree.root());
        for leaf in &leaves {
            assert_eq!(stored.proof(leaf).expect("read"), tree.proof(leaf));
        }
        assert_eq!(stored.proof(&[9u8; 32]).expect("read"), None);
        let empty = StoredTree::open(tempfile::tempfile().expect("tempfile")).expect("open");
        assert_eq!(empty.root().expect("root"), [0u8; 32]);
    }

    #[test]
    fn tampered_proof_fails() {
        let leaves: Vec<Hash> = ids(5).iter().map(leaf_bytes32).collect();
        let tree = MerkleTree::from_leaves(leaves.clone());
        let mut proof = tree.proof(&leaves[2]).expect("member");
        proof[0][0] ^= 1;
        assert!(!verify(&tree.root(), &leaves[2], &proof));
    }
}
