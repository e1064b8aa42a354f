//! Queries over one token stream and its suffix array: the rank range of an n-gram, the
//! longest prefix of a text that occurs, the tokens that follow a context. Suffixes compare
//! token by token, and a suffix that ends first is the smaller, as the suffix array sorts them.

use std::cmp::Ordering;
use std::ops::Range;

use super::layout::{Pointers, Token};

/// A token stream with its suffix array.
#[derive(Clone, Copy)]
pub struct View<'a, T: Token> {
    pub tokens: &'a [T],
    pub sa: Pointers<'a>,
}

impl<'a, T: Token> View<'a, T> {
    /// Compares the suffix at `pos` with `query`, over at most `query.len()` tokens, skipping
    /// the first `skip`, which the caller knows are equal. Also says how many tokens agreed.
    #[inline]
    fn compare(&self, pos: usize, query: &[T], skip: usize) -> (Ordering, usize) {
        let suffix = &self.tokens[pos.min(self.tokens.len())..];
        let n = query.len().min(suffix.len());
        let mut i = skip.min(n);
        while i < n {
            if suffix[i] != query[i] {
                return (suffix[i].cmp(&query[i]), i);
            }
            i += 1;
        }
        if n < query.len() {
            (Ordering::Less, n)
        } else {
            (Ordering::Equal, n)
        }
    }

    /// The first rank whose suffix is not below `query` (`strict`: not at or below it, as a
    /// prefix). The known common prefix of the bounds' suffixes with the query is skipped.
    fn bound(&self, query: &[T], strict: bool, mut lo: usize, mut hi: usize) -> usize {
        let (mut lcp_lo, mut lcp_hi) = (0usize, 0usize);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (order, agreed) = self.compare(self.sa.get(mid), query, lcp_lo.min(lcp_hi));
            let below = match order {
                Ordering::Less => true,
                Ordering::Equal => strict,
                Ordering::Greater => false,
            };
            if below {
                lo = mid + 1;
                lcp_lo = agreed;
            } else {
                hi = mid;
                lcp_hi = agreed;
            }
        }
        lo
    }

    /// The ranks of the suffixes that start with `query`.
    pub fn find(&self, query: &[T]) -> Range<usize> {
        let n = self.sa.len();
        if query.is_empty() {
            return 0..n;
        }
        let start = self.bound(query, false, 0, n);
        let end = self.bound(query, true, start, n);
        start..end
    }

    /// The ranks of the suffixes that start with `query`, within `within` (the range of a
    /// prefix of `query`).
    pub fn narrow(&self, query: &[T], within: Range<usize>) -> Range<usize> {
        let start = self.bound(query, false, within.start, within.end);
        let end = self.bound(query, true, start, within.end);
        start..end
    }

    /// How many tokens of the longest prefix of `text` occur somewhere in the stream. The
    /// suffix sharing the longest prefix with `text` sorts next to where `text` would.
    pub fn longest_prefix(&self, text: &[T]) -> usize {
        let n = self.sa.len();
        if text.is_empty() || n == 0 {
            return 0;
        }
        let at = self.bound(text, false, 0, n);
        let mut best = 0;
        for rank in [at.wrapping_sub(1), at] {
            if rank < n {
                best = best.max(self.compare(self.sa.get(rank), text, 0).1);
            }
        }
        best
    }

    /// The token after the suffix of rank `rank` that starts with a `len`-token prefix, or
    /// `None` at the end of the stream or of a record.
    #[inline]
    fn next_at(&self, rank: usize, len: usize) -> Option<T> {
        let pos = self.sa.get(rank) + len;
        self.tokens.get(pos).copied().filter(|&t| t != T::SEP)
    }

    /// For the ranks `range` of a `len`-token context, each following token and how often it
    /// follows. Exact: a run of ranks whose first and last agree on the next token is all of
    /// that token (the ranks are sorted), so this costs a few reads per distinct token.
    pub fn next_tokens(&self, range: Range<usize>, len: usize) -> Vec<(T, u64)> {
        let mut out: Vec<(T, u64)> = Vec::new();
        let mut stack = vec![range];
        while let Some(r) = stack.pop() {
            if r.is_empty() {
                continue;
            }
            let first = self.next_at(r.start, len);
            let last = self.next_at(r.end - 1, len);
            if first == last {
                if let Some(t) = first {
                    match out.last_mut() {
                        Some((prev, count)) if *prev == t => *count += r.len() as u64,
                        _ => out.push((t, r.len() as u64)),
                    }
                }
                continue;
            }
            // Right half first, so that runs come off the stack in rank order.
            let mid = r.start + r.len() / 2;
            stack.push(mid..r.end);
            stack.push(r.start..mid);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::POINTER_PADDING;
    use super::*;

    /// A naive suffix array of `tokens`, packed 4 bytes a pointer.
    fn packed_sa(tokens: &[u8]) -> Vec<u8> {
        let mut sa: Vec<usize> = (0..tokens.len()).collect();
        sa.sort_by(|&a, &b| tokens[a..].cmp(&tokens[b..]));
        let mut bytes: Vec<u8> = sa.iter().flat_map(|&p| (p as u32).to_le_bytes()).collect();
        bytes.extend_from_slice(&[0; POINTER_PADDING]);
        bytes
    }

    fn naive_count(tokens: &[u8], q: &[u8]) -> usize {
        (0..tokens.len())
            .filter(|&i| tokens[i..].starts_with(q))
            .count()
    }

    #[test]
    fn finds_counts_and_prefixes_like_a_scan() {
        let mut tokens = Vec::new();
        for doc in ["abracadabra", "cadabra abra", "banana bandana", "abba"] {
            tokens.push(u8::MAX);
            tokens.extend_from_slice(doc.as_bytes());
        }
        let bytes = packed_sa(&tokens);
        let view = View {
            tokens: &tokens,
            sa: Pointers::new(&bytes, 4, tokens.len()).expect("sa"),
        };
        for q in [
            "a",
            "abra",
            "bra",
            "ana",
            "xyz",
            "abracadabrax",
            "dan",
            " ",
            "abba",
        ] {
            let q = q.as_bytes();
            assert_eq!(view.find(q).len(), naive_count(&tokens, q), "{q:?}");
        }
        assert_eq!(view.longest_prefix(b"cadabrax"), 7);
        assert_eq!(view.longest_prefix(b"zzz"), 0);
        // Matches stop at a record's end: "abba" then the next record's separator.
        assert_eq!(view.longest_prefix(b"abbaabra"), 4);
        let range = view.find(b"ab");
        let next = view.next_tokens(range, 2);
        assert_eq!(next, vec![(b'b', 1), (b'r', 4)]);
        let range = view.find(b"bra");
        assert_eq!(
            view.next_tokens(range.clone(), 3),
            vec![(b' ', 1), (b'c', 1)]
        );
        assert_eq!(view.narrow(b"bra ", range).len(), 1);
    }
}
