//! Leaves gathered by their first byte as they arrive.
//!
//! A contribution's leaves come in chunk by chunk while the upload is read, but the tree
//! needs them sorted, and that sort runs after the read, while the contributor waits for the
//! signature check. Dropped into 256 buckets by their first byte on arrival, the leaves are
//! sorted at the end as 256 small, independent sorts, each within the cache and spread over
//! threads, instead of two passes over the whole array on one thread.

use super::{compare_hashes, Hash, MerkleTree};

const BUCKETS: usize = 256;

/// Below this many leaves the buckets are sorted on one thread.
const PARALLEL_LEAVES: usize = 1 << 15;

/// Leaf hashes bucketed by their first byte, ready to become a [`MerkleTree`].
pub struct LeafBuckets {
    buckets: Vec<Vec<Hash>>,
    len: usize,
    /// A chunk's leaves before they are spread over the buckets.
    scratch: Vec<Hash>,
}

impl Default for LeafBuckets {
    fn default() -> Self {
        Self {
            buckets: vec![Vec::new(); BUCKETS],
            len: 0,
            scratch: Vec::new(),
        }
    }
}

impl LeafBuckets {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the leaves of `bytes32` values ([`super::leaf_bytes32`]).
    pub fn push_values(&mut self, values: &[Hash]) {
        self.scratch.clear();
        super::push_leaves_bytes32(values, &mut self.scratch);
        self.spread();
    }

    /// Adds the leaves whose first hashes ([`super::first_hashes_bytes32`]) are `first`.
    pub fn push_from_first(&mut self, first: &[Hash]) {
        self.scratch.clear();
        super::push_leaves_from_first(first, &mut self.scratch);
        self.spread();
    }

    /// Adds every leaf of `other`.
    pub fn merge(&mut self, other: LeafBuckets) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            mine.extend_from_slice(&theirs);
        }
        self.len += other.len;
    }

    /// Moves the leaves in `scratch` to their buckets.
    fn spread(&mut self) {
        for leaf in &self.scratch {
            self.buckets[usize::from(leaf[0])].push(*leaf);
        }
        self.len += self.scratch.len();
    }

    /// The tree over every leaf added.
    pub fn into_tree(self) -> MerkleTree {
        let buckets = self.buckets;
        MerkleTree::with_leaves_placed(self.len, |region| place(&buckets, region))
    }
}

/// Writes every bucket's leaves into `region`, sorted in reverse (the largest first), as the
/// tree stores its leaves.
fn place(buckets: &[Vec<Hash>], region: &mut [Hash]) {
    // Reversed, the last bucket comes first.
    let mut slots: Vec<(&[Hash], &mut [Hash])> = Vec::with_capacity(BUCKETS);
    let mut rest = region;
    for bucket in buckets.iter().rev() {
        let (slot, tail) = rest.split_at_mut(bucket.len());
        slots.push((bucket, slot));
        rest = tail;
    }
    let threads = super::worker_threads();
    let total: usize = buckets.iter().map(Vec::len).sum();
    if threads < 2 || total < PARALLEL_LEAVES {
        for (bucket, slot) in slots {
            sort_reversed(bucket, slot);
        }
        return;
    }
    // Hashes are uniform, so equal numbers of buckets are about equal work.
    let per = slots.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for group in slots.chunks_mut(per) {
            scope.spawn(move || {
                for (bucket, slot) in group.iter_mut() {
                    sort_reversed(bucket, slot);
                }
            });
        }
    });
}

/// Writes `bucket` (leaves sharing their first byte) into `out`, sorted in reverse: spread
/// by the second byte (one pass to count, one to place), then the few leaves of each
/// second byte ordered by comparison.
fn sort_reversed(bucket: &[Hash], out: &mut [Hash]) {
    let descending = |a: &Hash, b: &Hash| compare_hashes(b, a);
    if bucket.len() < 4 * BUCKETS {
        out.copy_from_slice(bucket);
        out.sort_unstable_by(descending);
        return;
    }
    // ends[b] is where, counting from the start of `out`, the leaves with second byte b
    // end: the largest second byte comes first.
    let mut counts = [0usize; BUCKETS];
    for leaf in bucket {
        counts[usize::from(leaf[1])] += 1;
    }
    let mut next = [0usize; BUCKETS];
    let mut at = 0;
    for b in (0..BUCKETS).rev() {
        next[b] = at;
        at += counts[b];
    }
    let starts = next;
    for leaf in bucket {
        let b = usize::from(leaf[1]);
        out[next[b]] = *leaf;
        next[b] += 1;
    }
    for b in 0..BUCKETS {
        out[starts[b]..starts[b] + counts[b]].sort_unstable_by(descending);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{first_hashes_bytes32, keccak256, leaves_bytes32};
    use super::*;

    #[test]
    fn bucketed_leaves_build_the_same_tree_as_sorted_ones() {
        // Sizes on each side of the one-thread and small-bucket thresholds, and none.
        for n in [0usize, 1, 2, 3, 255, 1000, 70_001] {
            let values: Vec<Hash> = (0..n as u32).map(|i| keccak256(&i.to_le_bytes())).collect();
            let mut buckets = LeafBuckets::default();
            // In uneven chunks, as a pipeline hands them over: hashed whole or from the first
            // of their two hashes, into two sets of buckets merged at the end.
            let mut other = LeafBuckets::default();
            for (i, chunk) in values.chunks(997).enumerate() {
                if i % 3 == 0 {
                    other.push_from_first(&first_hashes_bytes32(chunk));
                } else {
                    buckets.push_values(chunk);
                }
            }
            buckets.merge(other);
            assert_eq!(buckets.len(), n);
            let tree = buckets.into_tree();
            let plain = MerkleTree::from_leaves(leaves_bytes32(&values));
            assert_eq!(tree.to_bytes(), plain.to_bytes(), "n={n}");
        }
    }

    #[test]
    fn leaves_sharing_two_bytes_are_ordered_by_the_rest() {
        // One bucket large enough to be spread by its second byte, with runs of leaves that
        // share both first bytes.
        let mut leaves: Vec<Hash> = (0..5000u32)
            .map(|i| {
                let mut h = keccak256(&i.to_le_bytes());
                h[0] = 7;
                h[1] = (i % 3) as u8;
                h
            })
            .collect();
        let mut out = vec![[0u8; 32]; leaves.len()];
        sort_reversed(&leaves, &mut out);
        leaves.sort_unstable();
        leaves.reverse();
        assert_eq!(out, leaves);
    }
}
