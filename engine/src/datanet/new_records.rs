//! The records a batch adds, in row order, and whether it has a record already.
//!
//! Every accepted row is looked up here once, on the thread that writes the segment, which
//! sets the pace of an upload. At a million rows the table outgrows the cache and each lookup
//! is a miss, so the table is open-addressed by the id's first eight bytes and the caller
//! announces the ids it will look up next, so that their slots are on their way from memory
//! by the time they are needed. Ids are BLAKE3 outputs, but of content the contributor
//! chooses: one who ground out ids sharing their low bits could pile them into one long
//! probe run, so the slot comes from the prefix mixed with a seed drawn for each table.

use std::collections::HashMap;

use super::record::RecordId;

/// A slot: the first eight bytes of an id, and its row plus one (0 marks an empty slot).
#[derive(Clone, Copy, Default)]
struct Slot {
    prefix: u64,
    row_plus_one: u32,
}

const INITIAL_SLOTS: usize = 1 << 14;

/// The batch's new records.
pub(crate) struct NewRecords {
    by_row: Vec<RecordId>,
    /// Open addressing with linear probing, at most half full; a power of two long.
    slots: Vec<Slot>,
    /// Mixed into a prefix before it picks a slot.
    seed: u64,
    /// 64 minus the log2 of the table's length: a mixed prefix's top bits pick the slot.
    shift: u32,
    /// Ids whose first eight bytes an earlier id has (about one batch in 10^7 at a million
    /// rows): their rows by whole id.
    colliding: HashMap<RecordId, u32>,
}

impl Default for NewRecords {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Self {
            by_row: Vec::new(),
            slots: vec![Slot::default(); INITIAL_SLOTS],
            seed: std::collections::hash_map::RandomState::new().hash_one(0u64),
            shift: 64 - INITIAL_SLOTS.trailing_zeros(),
            colliding: HashMap::new(),
        }
    }
}

fn prefix(id: &RecordId) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&id[..8]);
    u64::from_le_bytes(head)
}

impl NewRecords {
    pub(crate) fn len(&self) -> usize {
        self.by_row.len()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot where a prefix's probe starts (multiplicative hashing of the seeded prefix).
    fn home(&self, prefix: u64) -> usize {
        ((prefix ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Starts fetching the slot where `id` is looked up: a lookup a few ids later then finds
    /// it in the cache.
    pub(crate) fn prefetch(&self, id: &RecordId) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot = &self.slots[self.home(prefix(id))];
            // SAFETY: a prefetch is a hint; it reads nothing the program sees and cannot
            // fault, and the address is of a live slot.
            #[allow(unsafe_code)]
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = id;
    }

    /// Adds `id` as the next row unless the batch has it already; says whether it was new.
    pub(crate) fn insert(&mut self, id: &RecordId) -> bool {
        if 2 * (self.by_row.len() + 1) > self.slots.len() {
            self.grow();
        }
        let row = self.by_row.len() as u32;
        let head = prefix(id);
        let mask = self.mask();
        let mut at = self.home(head);
        loop {
            let slot = &mut self.slots[at];
            if slot.row_plus_one == 0 {
                *slot = Slot {
                    prefix: head,
                    row_plus_one: row + 1,
                };
                break;
            }
            if slot.prefix == head {
                if self.by_row[(slot.row_plus_one - 1) as usize] == *id {
                    return false;
                }
                // Another id with the same first eight bytes holds the slot.
                if self.colliding.contains_key(id) {
                    return false;
                }
                self.colliding.insert(*id, row);
                break;
            }
            at = (at + 1) & mask;
        }
        self.by_row.push(*id);
        true
    }

    /// Doubles the table, placing every slot anew.
    fn grow(&mut self) {
        let doubled = vec![Slot::default(); 2 * self.slots.len()];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.shift -= 1;
        let mask = self.mask();
        for slot in old.into_iter().filter(|s| s.row_plus_one != 0) {
            let mut at = self.home(slot.prefix);
            while self.slots[at].row_plus_one != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }

    /// The new records in row order.
    pub(crate) fn into_rows(self) -> Vec<RecordId> {
        self.by_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_share_a_prefix_are_told_apart() {
        let id = |head: u8, tail: u8| {
            let mut id = [head; 32];
            id[31] = tail;
            id
        };
        let mut records = NewRecords::default();
        // The same first eight bytes, different ids: both are new, each once.
        assert!(records.insert(&id(1, 0)));
        assert!(records.insert(&id(1, 1)));
        assert!(records.insert(&id(1, 2)));
        assert!(records.insert(&id(2, 0)));
        assert!(!records.insert(&id(1, 0)));
        assert!(!records.insert(&id(1, 2)));
        assert!(!records.insert(&id(2, 0)));
        assert_eq!(records.len(), 4);
        assert_eq!(
            records.into_rows(),
            vec![id(1, 0), id(1, 1), id(1, 2), id(2, 0)]
        );
    }

    /// Ids alike in every bit a plain mask would use still spread over the table.
    #[test]
    fn ids_that_share_their_low_bits_do_not_share_a_probe_run() {
        let mut records = NewRecords::default();
        let ids: Vec<RecordId> = (0..4096u64)
            .map(|i| {
                let mut id = [0u8; 32];
                // The same low 48 bits, so the same slot under any mask of the table's size.
                id[6..8].copy_from_slice(&(i as u16).to_le_bytes());
                id
            })
            .collect();
        for id in &ids {
            assert!(records.insert(id));
        }
        let homes: std::collections::HashSet<usize> =
            ids.iter().map(|id| records.home(prefix(id))).collect();
        assert!(
            homes.len() > ids.len() / 2,
            "{} distinct slots",
            homes.len()
        );
    }

    #[test]
    fn every_id_is_found_again_after_the_table_grows() {
        let ids: Vec<RecordId> = (0..100_000u32)
            .map(|i| crate::merkle::keccak256(&i.to_le_bytes()))
            .collect();
        let mut records = NewRecords::default();
        for (i, id) in ids.iter().enumerate() {
            if let Some(next) = ids.get(i + 8) {
                records.prefetch(next);
            }
            assert!(records.insert(id), "{i} is new");
        }
        assert!(records.slots.len() > INITIAL_SLOTS, "the table grew");
        for id in &ids {
            assert!(!records.insert(id), "found again");
        }
        assert_eq!(records.len(), ids.len());
        assert_eq!(records.into_rows(), ids);
    }
}
