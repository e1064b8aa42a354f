//! Which record ids a Datanet's index may hold, kept in memory so that a contribution asks
//! RocksDB only about the ids it may have seen.
//!
//! Nearly every id a contribution brings is new, and a lookup that finds nothing still costs
//! RocksDB's whole read path (about 150 ns an id even in an empty index; more with every
//! level a populated one has to consult). A Bloom filter answers "certainly not there" in
//! one cache line. It may answer "maybe" for an id the index lacks, which only costs that
//! lookup; it never answers "no" for an id the index holds, because every id goes in before
//! the batch that stored it is visible to the next contribution (both happen under the
//! Datanet's lock), and the filter of a Datanet is built from its index the first time it is
//! needed. Ids removed from the index (a rejected batch) stay in the filter as false
//! positives.
//!
//! Record ids are BLAKE3 outputs, so their bytes serve as the filter's hash bits directly.
//! The filter grows as a chain: when the newest filter is full, a new one of twice its
//! capacity takes the inserts, and a query asks each. The chain's capacity never passes
//! [`MAX_IDS`]; past that many ids the filter gives up and answers "maybe" for everything,
//! so a Datanet's filter stays under 400 MB (12 bits for each of 2^28 ids).

use super::record::RecordId;

/// Bits of filter for each id it is sized for: with [`PROBES`] bits set in one 512-bit
/// block, about 0.5% false positives at capacity.
const BITS_PER_ID: usize = 12;
/// Bits set (and tested) per id, all in one 64-byte block.
const PROBES: usize = 8;
/// Capacity of the first filter of a chain (about 100 KB).
const MIN_CAPACITY: usize = 1 << 16;
/// Beyond this many ids a Datanet's lookups all go to RocksDB.
pub const MAX_IDS: usize = 1 << 28;

/// One fixed-size blocked Bloom filter.
struct Bloom {
    blocks: Vec<[u64; 8]>,
    capacity: usize,
    len: usize,
}

impl Bloom {
    fn new(capacity: usize) -> Self {
        let blocks = (capacity * BITS_PER_ID).div_ceil(512).max(1);
        Self {
            blocks: vec![[0; 8]; blocks],
            capacity,
            len: 0,
        }
    }

    /// The block an id falls in (bytes 8 to 16, scaled to the number of blocks) and its
    /// bit positions in it (nine bits each from bytes 16 on).
    fn probes(&self, id: &RecordId) -> (usize, [u16; PROBES]) {
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&id[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let block = ((u128::from(word(8)) * self.blocks.len() as u128) >> 64) as usize;
        let bits = u128::from(word(16)) | u128::from(word(24)) << 64;
        let positions = std::array::from_fn(|k| ((bits >> (9 * k)) & 511) as u16);
        (block, positions)
    }

    fn insert(&mut self, id: &RecordId) {
        let (block, positions) = self.probes(id);
        let block = &mut self.blocks[block];
        for p in positions {
            block[usize::from(p / 64)] |= 1 << (p % 64);
        }
        self.len += 1;
    }

    fn may_contain(&self, id: &RecordId) -> bool {
        let (block, positions) = self.probes(id);
        let block = &self.blocks[block];
        positions
            .iter()
            .all(|&p| block[usize::from(p / 64)] & (1 << (p % 64)) != 0)
    }
}

/// The ids a Datanet's record index may hold.
pub struct KnownIds {
    chain: Vec<Bloom>,
    len: usize,
    /// Ids the chain's filters have room for, together.
    capacity: usize,
    /// How many ids it keeps track of: [`MAX_IDS`] but in tests.
    limit: usize,
    /// Past `limit`: every id may be known.
    saturated: bool,
}

impl KnownIds {
    /// An empty set with room for about `expected` ids before it grows.
    pub fn with_capacity(expected: usize) -> Self {
        Self::with_limit(expected, MAX_IDS)
    }

    fn with_limit(expected: usize, limit: usize) -> Self {
        let capacity = expected.clamp(MIN_CAPACITY.min(limit), limit);
        Self {
            chain: vec![Bloom::new(capacity)],
            len: 0,
            capacity,
            limit,
            saturated: false,
        }
    }

    /// Whether it has given up, and takes every id for known.
    pub fn saturated(&self) -> bool {
        self.saturated
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, id: &RecordId) {
        if self.saturated {
            return;
        }
        let full = self.chain.last().is_none_or(|b| b.len == b.capacity);
        if full {
            // Twice the newest filter, within what is left of the limit.
            let wanted = self.chain.last().map_or(MIN_CAPACITY, |b| 2 * b.capacity);
            let room = self.limit - self.capacity;
            if room == 0 {
                self.saturated = true;
                self.chain = Vec::new();
                return;
            }
            let capacity = wanted.min(room);
            self.chain.push(Bloom::new(capacity));
            self.capacity += capacity;
        }
        if let Some(newest) = self.chain.last_mut() {
            newest.insert(id);
            self.len += 1;
        }
    }

    /// False only for ids certainly not inserted.
    pub fn may_contain(&self, id: &RecordId) -> bool {
        self.saturated || self.chain.iter().any(|bloom| bloom.may_contain(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> RecordId {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn every_inserted_id_is_known_and_few_others_seem_so() {
        let mut known = KnownIds::with_capacity(1000);
        // Well past the first filter's capacity, so the chain grows twice.
        let n = 4 * MIN_CAPACITY as u64;
        for i in 0..n {
            known.insert(&id(i));
        }
        assert_eq!(known.len(), n as usize);
        assert!(known.chain.len() >= 3, "{} filters", known.chain.len());
        assert!((0..n).all(|i| known.may_contain(&id(i))));
        let false_positives = (n..n + 100_000)
            .filter(|&i| known.may_contain(&id(i)))
            .count();
        // Each of the chain's filters adds its own rate.
        assert!(false_positives < 2_000, "{false_positives} in 100,000");
    }

    #[test]
    fn past_its_limit_every_id_may_be_known() {
        let mut known = KnownIds::with_limit(0, 10);
        for i in 0..10 {
            known.insert(&id(i));
        }
        assert!(!known.may_contain(&id(99)));
        assert!(!known.saturated());
        known.insert(&id(10));
        assert!(known.saturated());
        assert!(known.may_contain(&id(99)));
        assert!(known.chain.is_empty(), "the filters' memory is released");
    }

    #[test]
    fn the_chain_never_holds_room_for_more_than_its_limit() {
        let limit = 3 * MIN_CAPACITY + 5;
        let mut known = KnownIds::with_limit(0, limit);
        for i in 0..limit as u64 {
            known.insert(&id(i));
            assert!(known.capacity <= limit);
        }
        assert!(!known.saturated());
        assert_eq!(known.capacity, limit);
        assert!((0..limit as u64).all(|i| known.may_contain(&id(i))));
        // A first filter asked for more than the limit is cut to it.
        assert_eq!(KnownIds::with_limit(10 * limit, limit).capacity, limit);
    }

    #[test]
    fn an_empty_set_knows_nothing() {
        let known = KnownIds::with_capacity(0);
        assert_eq!(known.len(), 0);
        assert!((0..1000).all(|i| !known.may_contain(&id(i))));
    }
}
