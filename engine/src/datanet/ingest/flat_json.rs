//! A fast path for the usual JSONL record: one flat object whose strings carry no escapes,
//! whose numbers are integers and whose arrays hold such strings. Such a line is read
//! straight into its cells, without the intermediate values and allocations a general JSON
//! parser makes; every other line (escapes, nested objects, fractions, anything malformed or
//! wrong for the schema) is left to the serde_json path, which reports what is wrong with it.
//!
//! The subset is strict JSON: whatever this accepts, serde_json parses to the same cells,
//! which a test checks line by line, so record ids do not depend on the path a line took.

use std::borrow::Cow;

use super::cells::Cell;
use super::jsonl::{coerce, Json};
use crate::datanet::schema::FieldType;

/// Why the fast path let a line go; the line is then parsed the general way.
#[derive(Debug, PartialEq, Eq)]
pub struct NotFlat;

type Flat<T> = Result<T, NotFlat>;

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bytes of `word` (little-endian) that are a quote, a backslash or a control character, as
/// their high bits; exact for the lowest such byte, which is all the scan needs.
fn specials(word: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let control = word.wrapping_sub(LO * 0x20) & !word & HI;
    control | zero(word ^ (LO * b'"' as u64)) | zero(word ^ (LO * b'\\' as u64))
}

/// Where in `bytes` the first quote, backslash or control character is (its length if none):
/// 32 bytes a step where AVX2 is compiled in, then 8, then one.
fn first_special(bytes: &[u8]) -> usize {
    let mut i = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    while let Some(block) = bytes.get(i..i + 32) {
        let found = specials_avx2(block.try_into().unwrap_or_else(|_| unreachable!()));
        if found != 0 {
            return i + found.trailing_zeros() as usize;
        }
        i += 32;
    }
    while let Some(block) = bytes.get(i..i + 8) {
        let found = specials(u64::from_le_bytes(
            block.try_into().unwrap_or_else(|_| unreachable!()),
        ));
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && !matches!(bytes[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

/// The bytes of `block` that are a quote, a backslash or a control character, one bit each.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn specials_avx2(block: &[u8; 32]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 is compiled in (the cfg above), and the block is 32 readable bytes for the
    // unaligned load.
    #[allow(unsafe_code)]
    unsafe {
        let v = _mm256_loadu_si256(block.as_ptr().cast());
        let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
        // Unsigned `v <= 0x1f`: the minimum of the two is `v` itself.
        let control = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v);
        _mm256_movemask_epi8(_mm256_or_si256(_mm256_or_si256(quote, backslash), control)) as u32
    }
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Flat<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(NotFlat)
        }
    }

    fn literal(&mut self, word: &str) -> Flat<()> {
        if self.bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(NotFlat)
        }
    }

    /// A string without escapes or control characters, borrowed from the line.
    fn string(&mut self) -> Flat<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let end = start + first_special(&self.bytes()[start..]);
        self.close_string(start, end)
    }

    fn close_string(&mut self, start: usize, end: usize) -> Flat<&'a str> {
        if self.bytes().get(end) != Some(&b'"') {
            return Err(NotFlat);
        }
        self.pos = end + 1;
        // Both ends are ASCII quotes, so the slice falls on character boundaries.
        self.text.get(start..end).ok_or(NotFlat)
    }

    /// A number: a plain integer directly, anything else (fractions, exponents, integers
    /// past 18 digits) by serde_json itself, so that its value is exactly what the general
    /// path makes of it.
    fn number(&mut self) -> Flat<Json<'a>> {
        let bytes = self.bytes();
        let start = self.pos;
        let mut end = start;
        while end < bytes.len()
            && matches!(bytes[end], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        {
            end += 1;
        }
        self.pos = end;
        let token = &bytes[start..end];
        let (negative, digits) = match token.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, token),
        };
        // `-0` too goes the general way, which reads it as the float -0.0.
        let plain = !digits.is_empty()
            && digits.len() <= 18
            && !(negative && digits == b"0")
            && digits.iter().all(u8::is_ascii_digit)
            && (digits[0] != b'0' || digits.len() == 1);
        if plain {
            let magnitude = digits
                .iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
            return Ok(Json::Int(if negative { -magnitude } else { magnitude }));
        }
        let token = self.text.get(start..end).ok_or(NotFlat)?;
        let mut de = serde_json::Deserializer::from_str(token);
        let value = serde::de::DeserializeSeed::deserialize(super::jsonl::JsonSeed, &mut de)
            .map_err(|_| NotFlat)?;
        de.end().map_err(|_| NotFlat)?;
        Ok(value)
    }

    /// An array of plain strings.
    fn strings(&mut self) -> Flat<Vec<Cow<'a, str>>> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            self.skip_ws();
            items.push(Cow::Borrowed(self.string()?));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => return Err(NotFlat),
            }
        }
    }

    /// The value of a field of type `ty`, as its cell.
    fn cell(&mut self, ty: FieldType) -> Flat<Cell<'a>> {
        let value = match self.peek() {
            Some(b'"') => Json::Str(Cow::Borrowed(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(b't') => self.literal("true").map(|()| Json::Bool(true))?,
            Some(b'f') => self.literal("false").map(|()| Json::Bool(false))?,
            Some(b'n') => self.literal("null").map(|()| Json::Null)?,
            Some(b'[') if ty == FieldType::ListOfStrings => {
                return self.strings().map(Cell::List);
            }
            _ => return Err(NotFlat),
        };
        // A value the field does not take is an error the general path words.
        coerce(value, ty).map_err(|_| NotFlat)
    }
}

/// Parses `line` (trimmed, one JSON object) into `cells`, one per schema field and all null
/// on entry; `field` finds a key's field. On `Err` the cells are in no useful state.
pub fn parse<'a>(
    line: &'a [u8],
    field: impl Fn(&str) -> Option<usize>,
    types: &[FieldType],
    cells: &mut [Cell<'a>],
) -> Flat<()> {
    let text = std::str::from_utf8(line).map_err(|_| NotFlat)?;
    let mut c = Cursor { text, pos: 0 };
    c.skip_ws();
    c.eat(b'{')?;
    c.skip_ws();
    if c.peek() == Some(b'}') {
        c.pos += 1;
    } else {
        loop {
            c.skip_ws();
            let key = c.string()?;
            let index = field(key).ok_or(NotFlat)?;
            c.skip_ws();
            c.eat(b':')?;
            c.skip_ws();
            cells[index] = c.cell(types[index])?;
            c.skip_ws();
            match c.peek() {
                Some(b',') => c.pos += 1,
                Some(b'}') => {
                    c.pos += 1;
                    break;
                }
                _ => return Err(NotFlat),
            }
        }
    }
    c.skip_ws();
    if c.pos == text.len() {
        Ok(())
    } else {
        Err(NotFlat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_the_first_special_byte_at_every_position() {
        for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = special;
                let found = specials(u64::from_le_bytes(word));
                assert_eq!(
                    (found.trailing_zeros() / 8) as usize,
                    at,
                    "{special:#x} at {at}"
                );
            }
        }
        // Neither spaces, nor UTF-8 continuation bytes, nor DEL are special.
        assert_eq!(specials(u64::from_le_bytes(*b" \x7f\xc3\xa9\xff ~!")), 0);
    }

    #[test]
    fn the_first_special_byte_is_found_at_every_position_of_a_long_string() {
        for len in [0usize, 1, 7, 8, 31, 32, 33, 64, 100] {
            let plain: Vec<u8> = (0..len).map(|i| b"ab \x7f\xc3\xa9~!"[i % 8]).collect();
            assert_eq!(first_special(&plain), len, "none in {len}");
            for special in [b'"', b'\\', 0x00, 0x1f] {
                for at in 0..len {
                    let mut bytes = plain.clone();
                    bytes[at] = special;
                    // A later special byte does not move the first.
                    if at + 3 < len {
                        bytes[at + 3] = b'"';
                    }
                    assert_eq!(first_special(&bytes), at, "{special:#x} at {at} of {len}");
                }
            }
        }
    }
}
