//! How an index lies on disk: the token stream at the narrowest width that holds the
//! vocabulary plus a separator, and the suffix array as pointers of the fewest bytes that
//! address every token. Both little-endian.
//!
//! `tokens`: for each record, a separator and then its token ids (as infini-gram lays out its
//! `tokenized` file), so no match crosses a record boundary: a query never holds a separator.
//! `sa`: one pointer per token position, in suffix order, then 8 bytes of padding so that any
//! pointer reads as one unaligned 8-byte load.

/// A token id at one of the stored widths.
pub trait Token: Copy + Ord + bytemuck::Pod + Send + Sync + 'static {
    /// Bytes per token.
    const WIDTH: u8;
    /// The record separator: above every id the tokenizer can produce.
    const SEP: Self;
    /// The id as this width, or `None` if it does not fit below the separator.
    fn from_id(id: u32) -> Option<Self>;
    fn id(self) -> u32;
}

impl Token for u8 {
    const WIDTH: u8 = 1;
    const SEP: Self = u8::MAX;
    fn from_id(id: u32) -> Option<Self> {
        u8::try_from(id).ok().filter(|&t| t != Self::SEP)
    }
    fn id(self) -> u32 {
        u32::from(self)
    }
}

impl Token for u16 {
    const WIDTH: u8 = 2;
    const SEP: Self = u16::MAX;
    fn from_id(id: u32) -> Option<Self> {
        u16::try_from(id).ok().filter(|&t| t != Self::SEP)
    }
    fn id(self) -> u32 {
        u32::from(self)
    }
}

impl Token for u32 {
    const WIDTH: u8 = 4;
    const SEP: Self = u32::MAX;
    fn from_id(id: u32) -> Option<Self> {
        Some(id).filter(|&t| t != Self::SEP)
    }
    fn id(self) -> u32 {
        self
    }
}

/// The token width for a vocabulary: the narrowest that keeps every id below the separator.
pub fn token_width(vocab_size: u32) -> u8 {
    if vocab_size <= u32::from(u8::MAX) {
        1
    } else if vocab_size <= u32::from(u16::MAX) {
        2
    } else {
        4
    }
}

/// Bytes per suffix-array pointer for `n` positions: enough to hold `n - 1`.
pub fn pointer_width(n: u64) -> u8 {
    let bits = 64 - n.saturating_sub(1).leading_zeros();
    bits.div_ceil(8).max(1) as u8
}

/// Bytes after the last pointer, so that the last one reads as an 8-byte load too.
pub const POINTER_PADDING: usize = 8;

/// The suffix array as packed pointers.
#[derive(Clone, Copy)]
pub struct Pointers<'a> {
    bytes: &'a [u8],
    width: usize,
    mask: u64,
    len: usize,
}

impl<'a> Pointers<'a> {
    /// `bytes` holds `len` pointers of `width` bytes and the padding.
    pub fn new(bytes: &'a [u8], width: u8, len: usize) -> Option<Self> {
        let width = usize::from(width);
        if !(1..=8).contains(&width) || bytes.len() != len * width + POINTER_PADDING {
            return None;
        }
        let mask = if width == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * width)) - 1
        };
        Some(Self {
            bytes,
            width,
            mask,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The token position of the suffix of rank `i`.
    #[inline]
    pub fn get(&self, i: usize) -> usize {
        let at = i * self.width;
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.bytes[at..at + 8]);
        (u64::from_le_bytes(word) & self.mask) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        assert_eq!(token_width(256), 2, "0xFF must stay free for the separator");
        assert_eq!(token_width(255), 1);
        assert_eq!(token_width(50_257), 2);
        assert_eq!(token_width(65_535), 2);
        assert_eq!(token_width(65_536), 4);
        assert_eq!(pointer_width(1), 1);
        assert_eq!(pointer_width(256), 1);
        assert_eq!(pointer_width(257), 2);
        assert_eq!(pointer_width(1 << 24), 3);
        assert_eq!(pointer_width((1 << 24) + 1), 4);
        assert_eq!(u8::from_id(0xFF), None);
        assert_eq!(u16::from_id(70_000), None);
    }

    #[test]
    fn packed_pointers_read_back() {
        let values = [0usize, 70_000, 1, 16_777_215, 42];
        let mut bytes = Vec::new();
        for v in values {
            bytes.extend_from_slice(&(v as u64).to_le_bytes()[..3]);
        }
        bytes.extend_from_slice(&[0; POINTER_PADDING]);
        let p = Pointers::new(&bytes, 3, values.len()).expect("pointers");
        for (i, v) in values.iter().enumerate() {
            assert_eq!(p.get(i), *v);
        }
        assert!(Pointers::new(&bytes, 3, values.len() + 1).is_none());
    }
}
