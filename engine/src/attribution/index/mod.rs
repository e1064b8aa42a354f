//! A span index over one Datanet version: its text field's tokens with record boundaries, a
//! suffix array over them, where each record starts, and which record and contributor each
//! is. Immutable once built, named by the BLAKE3 of its contents, memory-mapped to query.

pub mod build;
pub mod layout;
pub mod search;

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use self::layout::{Pointers, Token};
use self::search::View;
use super::AttributionError;
use crate::identity::Address;

pub use build::{build, BuildInput, BuildProgress, Document};

/// The version of the on-disk layout; a reader refuses any other.
pub const FORMAT: u32 = 1;

/// Bytes per record in the `records` file: the record id, then the contributor.
pub const RECORD_BYTES: usize = 32 + 20;

/// The files of an index.
pub const TOKENS_FILE: &str = "tokens";
pub const SA_FILE: &str = "sa";
pub const OFFSETS_FILE: &str = "offsets";
pub const RECORDS_FILE: &str = "records";
pub const UNIGRAMS_FILE: &str = "unigrams";
pub const META_FILE: &str = "meta.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What an index is over, and how it is laid out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexMeta {
    pub format: u32,
    /// BLAKE3 of the contents (see [`build`]), hex: the index's name.
    #[serde(default)]
    pub hash: String,
    /// The Datanet and version it was built from, when it was built from one.
    pub datanet: Option<String>,
    pub version: Option<u32>,
    /// `bytes` or `bpe`.
    pub tokenizer: String,
    /// BLAKE3 of the tokenizer (of its `tokenizer.json`), hex.
    pub tokenizer_hash: String,
    pub vocab_size: u32,
    /// Bytes per token and per suffix-array pointer.
    pub token_width: u8,
    pub pointer_width: u8,
    /// Token positions, separators included.
    pub tokens: u64,
    pub records: u64,
    /// Tokens that are not separators: the unigram denominator.
    pub text_tokens: u64,
}

impl IndexMeta {
    /// Bytes the index takes per token position (tokens plus suffix array).
    pub fn bytes_per_token(&self) -> u64 {
        u64::from(self.token_width) + u64::from(self.pointer_width)
    }
}

/// One record an index covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// Its position among the index's records.
    pub index: u64,
    pub id: [u8; 32],
    pub contributor: Address,
}

/// An open index.
pub struct Index {
    pub meta: IndexMeta,
    dir: PathBuf,
    tokens: Mmap,
    sa: Mmap,
    offsets: Mmap,
    records: Mmap,
    unigrams: Vec<u64>,
}

/// Maps a file read-only.
fn map(path: &Path) -> Result<Mmap, AttributionError> {
    let file = File::open(path)?;
    // SAFETY: index files are written once under a temporary name, renamed into place, and
    // never written again (the directory is named by their hash); nothing mutates a mapped
    // file. An outside process truncating one is the failure mmap cannot guard against.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&file)? };
    Ok(map)
}

/// Runs `$body` with `$view` bound to the index's token stream at its width.
macro_rules! with_view {
    ($index:expr, |$view:ident: $t:ident| $body:expr) => {
        match $index.meta.token_width {
            1 => {
                #[allow(dead_code)]
                type $t = u8;
                let $view = $index.view::<u8>();
                $body
            }
            2 => {
                #[allow(dead_code)]
                type $t = u16;
                let $view = $index.view::<u16>();
                $body
            }
            _ => {
                #[allow(dead_code)]
                type $t = u32;
                let $view = $index.view::<u32>();
                $body
            }
        }
    };
}
pub(crate) use with_view;

impl Index {
    /// Opens the index in `dir`, checking that its files have the sizes its metadata says.
    pub fn open(dir: &Path) -> Result<Self, AttributionError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta_path = dir.join(META_FILE);
        if !meta_path.exists() {
            return Err(AttributionError::IndexNotFound(name));
        }
        let meta: IndexMeta = serde_json::from_slice(&std::fs::read(&meta_path)?)
            .map_err(|e| AttributionError::index(&name, format!("{META_FILE}: {e}")))?;
        if meta.format != FORMAT {
            return Err(AttributionError::index(
                &name,
                format!("layout {} (this build reads {FORMAT})", meta.format),
            ));
        }
        let bad = |what: &str| AttributionError::index(&name, format!("{what} has the wrong size"));
        let tokens = map(&dir.join(TOKENS_FILE))?;
        if tokens.len() as u64 != meta.tokens * u64::from(meta.token_width)
            || ![1, 2, 4].contains(&meta.token_width)
        {
            return Err(bad(TOKENS_FILE));
        }
        let sa = map(&dir.join(SA_FILE))?;
        if Pointers::new(&sa, meta.pointer_width, meta.tokens as usize).is_none() {
            return Err(bad(SA_FILE));
        }
        let offsets = map(&dir.join(OFFSETS_FILE))?;
        if offsets.len() as u64 != (meta.records + 1) * 8 {
            return Err(bad(OFFSETS_FILE));
        }
        let records = map(&dir.join(RECORDS_FILE))?;
        if records.len() as u64 != meta.records * RECORD_BYTES as u64 {
            return Err(bad(RECORDS_FILE));
        }
        let raw = std::fs::read(dir.join(UNIGRAMS_FILE))?;
        if raw.len() as u64 != u64::from(meta.vocab_size) * 8 {
            return Err(bad(UNIGRAMS_FILE));
        }
        let unigrams = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(Self {
            meta,
            dir: dir.to_path_buf(),
            tokens,
            sa,
            offsets,
            records,
            unigrams,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-hashes the files and checks that they are what the index is named by: its
    /// metadata's hash and its directory's name.
    pub fn verify(&self) -> Result<(), AttributionError> {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = Vec::new();
        for f in [
            TOKENS_FILE,
            SA_FILE,
            OFFSETS_FILE,
            RECORDS_FILE,
            UNIGRAMS_FILE,
        ] {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(File::open(self.dir.join(f))?)?;
            files.push(*hasher.finalize().as_bytes());
        }
        let hash = build::content_hash(&self.meta, &files)?;
        if hash != self.meta.hash || hash != name {
            return Err(AttributionError::index(
                &name,
                format!("its contents hash to {hash}, not to its name"),
            ));
        }
        Ok(())
    }

    /// The tokenizer the index was built with (a query must be tokenized the same way).
    pub fn tokenizer(&self) -> Result<super::Tokenizer, AttributionError> {
        let tokenizer = match self.meta.tokenizer.as_str() {
            "bytes" => super::Tokenizer::Bytes,
            _ => super::Tokenizer::from_file(&self.dir.join(TOKENIZER_FILE))?,
        };
        if hex::encode(tokenizer.hash()) != self.meta.tokenizer_hash {
            return Err(AttributionError::index(
                &self.meta.hash,
                "its tokenizer does not match the hash it was built with",
            ));
        }
        Ok(tokenizer)
    }

    /// The token stream at width `T` with its suffix array. `T` must be the index's width.
    pub(crate) fn view<T: Token>(&self) -> View<'_, T> {
        let tokens: &[T] = bytemuck::try_cast_slice(&self.tokens).unwrap_or(&[]);
        let sa = Pointers::new(&self.sa, self.meta.pointer_width, self.meta.tokens as usize)
            .unwrap_or_else(|| {
                Pointers::new(&[0; layout::POINTER_PADDING], 1, 0).expect("empty pointers")
            });
        View { tokens, sa }
    }

    /// The query as tokens of width `T`, or `None` if an id cannot occur in the index.
    pub(crate) fn convert<T: Token>(&self, ids: &[u32]) -> Option<Vec<T>> {
        ids.iter()
            .map(|&id| {
                if id >= self.meta.vocab_size {
                    None
                } else {
                    T::from_id(id)
                }
            })
            .collect()
    }

    /// How many times the n-gram `ids` occurs.
    pub fn count(&self, ids: &[u32]) -> u64 {
        with_view!(self, |view: T| match self.convert::<T>(ids) {
            Some(q) => view.find(&q).len() as u64,
            None => 0,
        })
    }

    /// The suffix-array ranks of the occurrences of `ids`.
    pub fn find(&self, ids: &[u32]) -> Range<usize> {
        with_view!(self, |view: T| match self.convert::<T>(ids) {
            Some(q) => view.find(&q),
            None => 0..0,
        })
    }

    /// The token position of the suffix of rank `rank`.
    pub fn position(&self, rank: usize) -> u64 {
        with_view!(self, |view: T| view.sa.get(rank) as u64)
    }

    /// Where each record starts (at its separator), and the stream's end last.
    fn offset(&self, i: u64) -> u64 {
        let at = i as usize * 8;
        u64::from_le_bytes(self.offsets[at..at + 8].try_into().unwrap_or([0; 8]))
    }

    /// The record that the token at `position` belongs to.
    pub fn record_at(&self, position: u64) -> RecordRef {
        // The last record whose start is at or before `position`.
        let (mut lo, mut hi) = (0u64, self.meta.records);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.offset(mid) <= position {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.record(lo.saturating_sub(1))
    }

    /// Record `index` of the index.
    pub fn record(&self, index: u64) -> RecordRef {
        let at = index as usize * RECORD_BYTES;
        let bytes = &self.records[at..at + RECORD_BYTES];
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[..32]);
        let mut contributor = [0u8; 20];
        contributor.copy_from_slice(&bytes[32..]);
        RecordRef {
            index,
            id,
            contributor: Address(contributor),
        }
    }

    /// The token span of record `index`, without its separator.
    pub fn record_span(&self, index: u64) -> Range<u64> {
        self.offset(index) + 1..self.offset(index + 1)
    }

    /// The token ids from `range` of the stream.
    pub fn tokens(&self, range: Range<u64>) -> Vec<u32> {
        with_view!(self, |view: T| {
            let end = (range.end as usize).min(view.tokens.len());
            let start = (range.start as usize).min(end);
            view.tokens[start..end].iter().map(|t| t.id()).collect()
        })
    }

    /// How often each token id occurs (separators aside).
    pub fn unigram(&self, id: u32) -> u64 {
        self.unigrams.get(id as usize).copied().unwrap_or(0)
    }

    /// Natural log of a token's unigram probability; a token that never occurs gets the
    /// floor infini-gram uses, so that a sum over a span stays finite.
    pub fn unigram_logprob(&self, id: u32) -> f64 {
        match self.unigram(id) {
            0 => -10_000.0,
            c => (c as f64 / self.meta.text_tokens.max(1) as f64).ln(),
        }
    }

    /// The next-token distribution after `context`, infini-gram style: the longest suffix of
    /// the context that occurs, and the tokens that follow it there.
    pub fn next_tokens(&self, context: &[u32]) -> NextTokens {
        with_view!(self, |view: T| {
            // The longest suffix of the context that occurs; an id outside the vocabulary
            // ends the search, as nothing longer can occur.
            let mut best = (0usize, 0..view.sa.len());
            for start in (0..context.len()).rev() {
                let Some(q) = self.convert::<T>(&context[start..]) else {
                    break;
                };
                let r = view.find(&q);
                if r.is_empty() {
                    break;
                }
                best = (q.len(), r);
            }
            let (suffix_len, range) = best;
            let next = view.next_tokens(range.clone(), suffix_len);
            let total: u64 = next.iter().map(|(_, c)| c).sum();
            NextTokens {
                suffix_len,
                count: range.len() as u64,
                total,
                tokens: next.into_iter().map(|(t, c)| (t.id(), c)).collect(),
            }
        })
    }
}

/// What follows a context.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NextTokens {
    /// How many of the context's last tokens matched (0: the whole corpus is the context).
    pub suffix_len: usize,
    /// How often that suffix occurs.
    pub count: u64,
    /// How many of those occurrences have a next token (the rest end a record).
    pub total: u64,
    /// Each next token id and how often it follows, by id.
    pub tokens: Vec<(u32, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::trace::{TraceParams, SCORE_UNIT};
    use crate::attribution::Tokenizer;

    fn docs(texts: &[&str]) -> Vec<Document> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Document {
                text: t.to_string(),
                record_id: [i as u8; 32],
                contributor: Address([(i % 2) as u8 + 1; 20]),
            })
            .collect()
    }

    fn build_index(dir: &Path, texts: &[&str], tokenizer: &Tokenizer) -> Index {
        let documents = docs(texts);
        let total = documents.len() as u64;
        let meta = build(
            BuildInput {
                documents: documents.into_iter().map(Ok),
                total: Some(total),
                tokenizer,
                datanet: Some("d".into()),
                version: Some(1),
            },
            dir,
            &|_| {},
        )
        .expect("build");
        Index::open(&dir.join(&meta.hash)).expect("open")
    }

    /// Occurrences of `q` by scanning every record.
    fn naive(texts: &[&str], q: &[u8]) -> u64 {
        texts
            .iter()
            .map(|t| {
                let t = t.as_bytes();
                (0..t.len()).filter(|&i| t[i..].starts_with(q)).count() as u64
            })
            .sum()
    }

    const TEXTS: &[&str] = &[
        "the river delta carries silt to the coast",
        "silt settles where the current slows near the coast",
        "a survey of the delta found silt and sand",
        "the coast guard station logs the tide",
        "",
        "tide tables for the north coast",
    ];

    #[test]
    fn byte_index_counts_like_a_scan_and_maps_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = build_index(dir.path(), TEXTS, &Tokenizer::Bytes);
        assert_eq!(index.meta.token_width, 1);
        assert_eq!(index.meta.records, TEXTS.len() as u64);
        let text_len: usize = TEXTS.iter().map(|t| t.len()).sum();
        assert_eq!(index.meta.text_tokens, text_len as u64);
        assert_eq!(index.meta.tokens, (text_len + TEXTS.len()) as u64);
        assert_eq!(
            index.meta.bytes_per_token(),
            2,
            "1-byte tokens, 1-byte pointers"
        );
        // Every substring of every text, and some that occur nowhere.
        let mut checked = 0;
        for t in TEXTS {
            let b = t.as_bytes();
            for i in 0..b.len() {
                for j in i + 1..b.len().min(i + 12) {
                    let q: Vec<u32> = b[i..j].iter().map(|&c| u32::from(c)).collect();
                    assert_eq!(index.count(&q), naive(TEXTS, &b[i..j]), "{:?}", &t[i..j]);
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000);
        assert_eq!(index.count(&[u32::from(b'z'), u32::from(b'q')]), 0);
        assert_eq!(index.count(&[300]), 0, "an id outside the vocabulary");
        // Positions map back to records and their contributors.
        for rank in index.find(&"coast".bytes().map(u32::from).collect::<Vec<_>>()) {
            let r = index.record_at(index.position(rank));
            assert!(TEXTS[r.index as usize].contains("coast"));
            assert_eq!(r.id, [r.index as u8; 32]);
        }
        let span = index.record_span(3);
        let text: Vec<u8> = index.tokens(span).iter().map(|&t| t as u8).collect();
        assert_eq!(text, TEXTS[3].as_bytes());
    }

    #[test]
    fn an_index_verifies_until_a_byte_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = build_index(dir.path(), TEXTS, &Tokenizer::Bytes);
        index.verify().expect("verifies");
        let path = index.dir().join(TOKENS_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[3] ^= 1;
        drop(index);
        std::fs::write(&path, &bytes).expect("write");
        let reopened = Index::open(&dir.path().join(build_hash(dir.path()))).expect("open");
        let err = reopened.verify().expect_err("tampered");
        assert!(err.to_string().contains("not to its name"), "{err}");
    }

    /// The one index directory under `dir`.
    fn build_hash(dir: &Path) -> String {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| !n.starts_with('.'))
            .expect("an index")
    }

    #[test]
    fn same_records_same_name_and_next_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = build_index(dir.path(), TEXTS, &Tokenizer::Bytes);
        let b = build_index(dir.path(), TEXTS, &Tokenizer::Bytes);
        assert_eq!(a.meta.hash, b.meta.hash);
        let other = build_index(dir.path(), &TEXTS[1..], &Tokenizer::Bytes);
        assert_ne!(a.meta.hash, other.meta.hash);
        // " the co" is the longest suffix that occurs, and only "a" follows it.
        let ids: Vec<u32> = "xyz the co".bytes().map(u32::from).collect();
        let next = a.next_tokens(&ids);
        assert_eq!(next.suffix_len, " the co".len());
        assert_eq!(next.count, naive(TEXTS, b" the co"));
        assert_eq!(
            next.tokens,
            vec![(u32::from(b'a'), naive(TEXTS, b" the coa"))]
        );
    }

    #[test]
    fn trace_finds_maximal_spans_and_scores_sum_to_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = build_index(dir.path(), TEXTS, &Tokenizer::Bytes);
        let output = "we saw silt settles where the current slows, said the coast guard";
        let ids: Vec<u32> = output.bytes().map(u32::from).collect();
        let params = TraceParams {
            min_len: 8,
            ..TraceParams::default()
        };
        let trace = index.trace(&ids, &params).expect("trace");
        let texts: Vec<String> = trace
            .spans
            .iter()
            .map(|s| output[s.start..s.end].to_string())
            .collect();
        assert!(
            texts.contains(&"silt settles where the current slows".to_string()),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.contains("the coast guard")),
            "{texts:?}"
        );
        for s in &trace.spans {
            assert!(s.end - s.start >= 8);
            assert_eq!(s.count, naive(TEXTS, &output.as_bytes()[s.start..s.end]));
            assert_eq!(s.occurrences.len() as u64, s.count);
        }
        let total: u64 = trace.records.iter().map(|r| r.score).sum();
        assert_eq!(total, SCORE_UNIT);
        let by_contributor: u64 = trace.contributors.iter().map(|c| c.1).sum();
        assert_eq!(by_contributor, SCORE_UNIT);
        // Record 1 holds the longest span, so it has the most credit.
        assert_eq!(trace.records[0].record, 1);
        // Nothing in common: no spans, no scores.
        let none = index
            .trace(
                &"QQQQQQQQQQ".bytes().map(u32::from).collect::<Vec<_>>(),
                &params,
            )
            .expect("trace");
        assert!(none.spans.is_empty() && none.records.is_empty());
        let bad = TraceParams {
            max_count: 0,
            ..params
        };
        assert!(index.trace(&ids, &bad).is_err());
    }

    #[test]
    fn bpe_index_counts_token_ngrams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let many: Vec<String> = (0..50)
            .flat_map(|_| TEXTS.iter().map(|t| t.to_string()))
            .collect();
        let tokenizer = Tokenizer::train_bpe(many.iter(), 400).expect("train");
        let index = build_index(dir.path(), TEXTS, &tokenizer);
        assert_eq!(index.meta.token_width, 2);
        assert_eq!(index.meta.tokenizer, "bpe");
        assert!(index.dir().join(TOKENIZER_FILE).exists());
        let ids = tokenizer.encode(" the coast").expect("encode");
        let all: Vec<Vec<u32>> = TEXTS
            .iter()
            .map(|t| tokenizer.encode(t).expect("encode"))
            .collect();
        let naive: u64 = all
            .iter()
            .map(|d| {
                d.windows(ids.len())
                    .filter(|w| *w == ids.as_slice())
                    .count() as u64
            })
            .sum();
        assert!(naive > 0);
        assert_eq!(index.count(&ids), naive);
    }

    #[test]
    fn wide_tokens_sort_like_narrow_ones() {
        let text: Vec<u32> = [5u32, 3, 5, 3, 1, u32::MAX, 5, 3, 9, 0]
            .into_iter()
            .collect();
        let sa = build::suffix_array_for_test(&text, 10);
        let mut naive: Vec<usize> = (0..text.len()).collect();
        naive.sort_by(|&a, &b| text[a..].cmp(&text[b..]));
        assert_eq!(sa, naive.iter().map(|&p| p as i32).collect::<Vec<_>>());
    }
}
