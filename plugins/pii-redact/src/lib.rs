//! Finds personal data in string fields: emails, phone numbers, payment card numbers (13 to
//! 19 digits passing the Luhn check) and IBANs (passing the ISO 13616 mod-97 check). Found
//! spans are replaced with a tag such as `[EMAIL]` in a rewritten record, or, with
//! `reject = true`, the record is refused. One pass over the bytes, no regular expressions:
//! the scanners look for an anchor (`@`, a digit, two capitals) and expand around it.

use serde::Deserialize;
use tributary_sdk::validator::{NewValue, Record, Validator, Value, Verdict};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Fields to scan; the text field when empty.
    pub fields: Vec<String>,
    /// Reject records with personal data instead of redacting it.
    pub reject: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Email,
    Phone,
    Card,
    Iban,
}

impl Kind {
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Email => "[EMAIL]",
            Kind::Phone => "[PHONE]",
            Kind::Card => "[CARD]",
            Kind::Iban => "[IBAN]",
        }
    }
}

/// A byte range of personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// An email around the `@` at `at`: a local part, a domain with a dot and a TLD of letters.
fn email_at(s: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut start = at;
    while start > 0 && is_local(s[start - 1]) {
        start -= 1;
    }
    let mut end = at + 1;
    while end < s.len() && is_domain(s[end]) {
        end += 1;
    }
    while end > at + 1 && matches!(s[end - 1], b'.' | b'-') {
        end -= 1;
    }
    let domain = &s[at + 1..end];
    let dot = domain.iter().rposition(|&b| b == b'.')?;
    let tld = &domain[dot + 1..];
    (start < at && dot > 0 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic))
        .then_some((start, end))
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A run of digits with at most two separators (space, dash, dot, brackets) between any two
/// of them, maybe led by `+` or `(`; answers its end and its digits.
fn digit_run(s: &[u8], start: usize) -> (usize, Vec<u8>) {
    let is_sep = |b: u8| matches!(b, b' ' | b'-' | b'.' | b'(' | b')');
    let mut digits = Vec::new();
    let mut i = start;
    if i < s.len() && matches!(s[i], b'+' | b'(') {
        i += 1;
    }
    let mut end = start;
    while i < s.len() {
        if s[i].is_ascii_digit() {
            digits.push(s[i]);
            i += 1;
            end = i;
            continue;
        }
        let seps = s[i..].iter().take(3).take_while(|b| is_sep(**b)).count();
        if seps == 0 || seps > 2 || i + seps >= s.len() || !s[i + seps].is_ascii_digit() {
            break;
        }
        i += seps;
    }
    (end, digits)
}

fn iban_valid(compact: &[u8]) -> bool {
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut rem: u32 = 0;
    for &c in rearranged {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// An IBAN starting at `start`: two capitals, two digits, then up to 30 letters or digits in
/// groups separated by single spaces.
fn iban_at(s: &[u8], start: usize) -> Option<usize> {
    if start + 4 > s.len()
        || !s[start].is_ascii_uppercase()
        || !s[start + 1].is_ascii_uppercase()
        || !s[start + 2].is_ascii_digit()
        || !s[start + 3].is_ascii_digit()
    {
        return None;
    }
    let mut compact = s[start..start + 4].to_vec();
    let mut i = start + 4;
    let mut best = None;
    while i < s.len() && compact.len() < 34 {
        let b = s[i];
        if b.is_ascii_uppercase() || b.is_ascii_digit() {
            compact.push(b);
            i += 1;
            if iban_valid(&compact) && (i == s.len() || !s[i].is_ascii_alphanumeric()) {
                best = Some(i);
            }
        } else if b == b' ' && i + 1 < s.len() && s[i + 1].is_ascii_alphanumeric() {
            i += 1;
        } else {
            break;
        }
    }
    best
}

/// Whether a finding can be anchored at byte `c`: `@` (emails), capitals (IBANs), digits, `+`
/// and `(` (cards and phones).
fn is_anchor(c: u8) -> bool {
    c == b'@' || c == b'+' || c == b'(' || c.is_ascii_uppercase() || c.is_ascii_digit()
}

const ONES: u64 = u64::MAX / 255;
const HIGH: u64 = ONES * 0x80;

/// The high bit of each byte of `w` that is `c` (exact for the lowest such byte, which is
/// all [`next_anchor`] reads).
fn bytes_equal(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * u64::from(c));
    x.wrapping_sub(ONES) & !x & HIGH
}

/// The high bit of each byte of `w` in `lo..=hi` (ASCII bounds); exact for every byte: the
/// sums stay inside their byte.
fn bytes_between(w: u64, lo: u8, hi: u8) -> u64 {
    let low7 = w & (ONES * 0x7f);
    let above = low7 + ONES * u64::from(0x80 - lo);
    let below = ONES * u64::from(0x80 + hi) - low7;
    above & below & !w & HIGH
}

/// The position of the first anchor at or after `from`, eight bytes at a time (the same
/// arithmetic native and in WASM, with a loop test per word rather than per byte). The words
/// come from `chunks_exact`, so the loop keeps one induction variable: with an index and a
/// bounds check a word, the WASM loop carried several, and Cranelift spilled them to the
/// stack on every iteration.
fn next_anchor(s: &[u8], from: usize) -> Option<usize> {
    let rest = s.get(from..)?;
    let mut words = rest.chunks_exact(8);
    let mut at = from;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let hits = bytes_equal(w, b'@')
            | bytes_equal(w, b'+')
            | bytes_equal(w, b'(')
            | bytes_between(w, b'A', b'Z')
            | bytes_between(w, b'0', b'9');
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| is_anchor(c))
        .map(|k| at + k)
}

/// Every piece of personal data in `text`, in order, not overlapping.
pub fn find(text: &str) -> Vec<Found> {
    let s = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < s.len() {
        // Most text is lower-case letters and spaces: skip to the next anchor a word at a
        // time instead of testing each byte's neighbours.
        match next_anchor(s, i) {
            Some(next) => i = next,
            None => break,
        }
        let b = s[i];
        let boundary = i == 0 || !s[i - 1].is_ascii_alphanumeric();
        if b == b'@' {
            if let Some((start, end)) = email_at(s, i) {
                // The local part was passed over as ordinary text; drop what it overlapped.
                found.retain(|f: &Found| f.end <= start);
                found.push(Found {
                    kind: Kind::Email,
                    start,
                    end,
                });
                i = end;
                continue;
            }
        } else if boundary && b.is_ascii_uppercase() {
            if let Some(end) = iban_at(s, i) {
                found.push(Found {
                    kind: Kind::Iban,
                    start: i,
                    end,
                });
                i = end;
                continue;
            }
        } else if boundary && (b.is_ascii_digit() || b == b'+' || b == b'(') {
            let (end, digits) = digit_run(s, i);
            let trailing_ok = end == s.len() || !s[end].is_ascii_alphanumeric();
            if trailing_ok && (13..=19).contains(&digits.len()) && luhn(&digits) {
                found.push(Found {
                    kind: Kind::Card,
                    start: i,
                    end,
                });
                i = end;
                continue;
            }
            let separated = s[i..end].iter().any(|c| !c.is_ascii_digit());
            if trailing_ok && (9..=15).contains(&digits.len()) && (separated || b == b'+') {
                found.push(Found {
                    kind: Kind::Phone,
                    start: i,
                    end,
                });
                i = end;
                continue;
            }
            if end > i {
                i = end;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// `text` with every finding replaced by its tag.
pub fn redact(text: &str, found: &[Found]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for f in found {
        out.push_str(&text[last..f.start]);
        out.push_str(f.kind.tag());
        last = f.end;
    }
    out.push_str(&text[last..]);
    out
}

pub struct PiiRedact;

impl Validator for PiiRedact {
    type Config = Config;

    fn check(config: &Config, record: &Record) -> Verdict {
        let mut verdict = Verdict::accept(1.0);
        let text_field;
        let fields: &[String] = if config.fields.is_empty() {
            text_field = [String::new()];
            &text_field
        } else {
            &config.fields
        };
        for name in fields {
            let value = if name.is_empty() {
                Value::String(record.text())
            } else {
                record.get(name)
            };
            let Value::String(text) = value else { continue };
            let found = find(text);
            if found.is_empty() {
                continue;
            }
            if config.reject {
                let kinds: Vec<&str> = found.iter().map(|f| f.kind.tag()).collect();
                let field = if name.is_empty() {
                    "the text"
                } else {
                    name.as_str()
                };
                return Verdict::reject(format!(
                    "{field} holds personal data: {}",
                    kinds.join(", ")
                ));
            }
            let field = if name.is_empty() {
                record.text_field_name().to_string()
            } else {
                name.clone()
            };
            verdict = verdict.rewrite(&field, NewValue::String(redact(text, &found)));
        }
        verdict
    }
}

tributary_sdk::export_validator!(PiiRedact);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_scan_finds_the_first_anchor_as_the_byte_test_does() {
        // Every byte value at every position of a word, after every other value.
        for c in 0..=255u8 {
            for pos in 0..12 {
                for before in [b'a', b' ', 0x7f, 0x80, 0xff, b'?', b'[', b'/', b':'] {
                    let mut s = vec![before; 16];
                    s[pos] = c;
                    for from in [0, 1, 3] {
                        let want = s[from..]
                            .iter()
                            .position(|&b| is_anchor(b))
                            .map(|k| from + k);
                        assert_eq!(
                            next_anchor(&s, from),
                            want,
                            "byte {c:#x} at {pos} after {before:#x} from {from}"
                        );
                    }
                }
            }
        }
    }

    fn redacted(text: &str) -> String {
        redact(text, &find(text))
    }

    #[test]
    fn finds_and_redacts_each_kind() {
        assert_eq!(
            redacted("mail ada.l+x@example.co.uk today."),
            "mail [EMAIL] today."
        );
        assert_eq!(redacted("call +44 20 7946 0958 now"), "call [PHONE] now");
        assert_eq!(redacted("call (555) 123-4567"), "call [PHONE]");
        assert_eq!(redacted("card 4111 1111 1111 1111 ok"), "card [CARD] ok");
        assert_eq!(
            redacted("iban GB82 WEST 1234 5698 7654 32."),
            "iban [IBAN]."
        );
        assert_eq!(redacted("iban DE89370400440532013000"), "iban [IBAN]");
    }

    #[test]
    fn leaves_look_alikes_alone() {
        // Fails the Luhn check, too short for a phone, not an email, a bad IBAN checksum.
        for text in [
            "card 4111 1111 1111 1112 is made up",
            "in 2024 there were 365 days",
            "write to me @ home",
            "GB00 WEST 1234 5698 7654 32",
            "version 1.2.3 of the tool",
        ] {
            let found = find(text);
            assert!(
                found
                    .iter()
                    .all(|f| f.kind != Kind::Card && f.kind != Kind::Iban && f.kind != Kind::Email),
                "{text}: {found:?}"
            );
        }
        assert_eq!(
            redacted("in 2024 there were 365 days"),
            "in 2024 there were 365 days"
        );
    }
}
