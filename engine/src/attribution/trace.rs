//! Tracing an output to the records it came from, as OLMoTrace does over infini-gram: the
//! maximal spans of the output that occur in the index, at least `min_len` tokens long and
//! at most `max_count` times, none crossing a record boundary; ranked by rarity (the sum of
//! their tokens' unigram log-probabilities, lowest first), each with the records it occurs in.
//!
//! Scores: the output's unit of credit, [`SCORE_UNIT`], is split among the kept spans in
//! proportion to their lengths in tokens, and each span's share equally among its
//! occurrences, so a record's score is what its occurrences earned, and a contributor's the
//! sum of their records'. Shares are integers, apportioned by largest remainder (ties to the
//! earlier span or occurrence), so they sum exactly to the unit and replay bit for bit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::index::layout::Token;
use super::index::{with_view, Index};
use super::record::{ScoredContributor, ScoredRecord};
use super::AttributionError;
use crate::identity::Address;

/// A whole output's credit: scores are parts of this.
pub const SCORE_UNIT: u64 = 1_000_000_000;

/// What counts as a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceParams {
    /// Shortest span kept, in tokens.
    #[serde(default = "default_min_len")]
    pub min_len: usize,
    /// Spans occurring more often than this are too common to say where an output came from.
    #[serde(default = "default_max_count")]
    pub max_count: u64,
    /// Token ids a span may end with but not run past (sentence ends, say).
    #[serde(default)]
    pub delimiters: Vec<u32>,
    /// Keep only the rarest this many spans; all when absent.
    #[serde(default)]
    pub max_spans: Option<usize>,
}

fn default_min_len() -> usize {
    4
}

fn default_max_count() -> u64 {
    1000
}

impl Default for TraceParams {
    fn default() -> Self {
        Self {
            min_len: default_min_len(),
            max_count: default_max_count(),
            delimiters: Vec::new(),
            max_spans: None,
        }
    }
}

/// Where a span occurs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Occurrence {
    /// Token position in the index's stream.
    pub position: u64,
    /// The record (by its position among the index's records).
    pub record: u64,
}

/// A maximal span of the output found in the index.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Output tokens `start..end`.
    pub start: usize,
    pub end: usize,
    pub count: u64,
    /// Sum of the natural-log unigram probabilities of its tokens.
    pub unigram_logprob: f64,
    /// Its occurrences, by position.
    pub occurrences: Vec<Occurrence>,
}

/// One record's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordScore {
    pub record: u64,
    pub id: [u8; 32],
    pub contributor: Address,
    /// Parts of [`SCORE_UNIT`].
    pub score: u64,
}

/// A trace and its scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Rarest first.
    pub spans: Vec<Span>,
    /// Highest first; they sum to [`SCORE_UNIT`] when there is any span, else there are none.
    pub records: Vec<RecordScore>,
    pub contributors: Vec<(Address, u64)>,
}

impl Index {
    /// The maximal spans of `output` found in the index, in output order, before ranking:
    /// for each start, the longest prefix that occurs (cut after a delimiter), kept if it is
    /// long enough and rare enough and ends past every span kept before it.
    pub fn spans(
        &self,
        output: &[u32],
        params: &TraceParams,
    ) -> Result<Vec<(usize, usize, std::ops::Range<usize>)>, AttributionError> {
        if params.max_count == 0 {
            return Err(AttributionError::invalid("max_count", "must be at least 1"));
        }
        let min_len = params.min_len.max(1);
        Ok(with_view!(self, |view: T| {
            // An id the index cannot hold occurs nowhere: spans stop before it. It is stored
            // as the separator, and every run is cut at the first one, so that nothing is
            // copied per start.
            let tokens: Vec<T> = output
                .iter()
                .map(|&id| self.convert::<T>(&[id]).map_or(T::SEP, |v| v[0]))
                .collect();
            let mut stops = vec![tokens.len(); tokens.len() + 1];
            for i in (0..tokens.len()).rev() {
                stops[i] = if tokens[i] == T::SEP { i } else { stops[i + 1] };
            }
            let mut found = Vec::new();
            let mut last_end = 0;
            for start in 0..output.len() {
                let run = &tokens[start..stops[start]];
                let mut len = view.longest_prefix(run);
                if let Some(cut) = run[..len.saturating_sub(1)]
                    .iter()
                    .position(|t| params.delimiters.contains(&t.id()))
                {
                    len = cut + 1;
                }
                if len < min_len || start + len <= last_end {
                    continue;
                }
                let range = view.find(&run[..len]);
                if range.len() as u64 > params.max_count {
                    continue;
                }
                last_end = start + len;
                found.push((start, start + len, range));
            }
            found
        }))
    }

    /// Traces `output` and scores what it came from.
    pub fn trace(&self, output: &[u32], params: &TraceParams) -> Result<Trace, AttributionError> {
        let mut spans: Vec<Span> = self
            .spans(output, params)?
            .into_iter()
            .map(|(start, end, ranks)| {
                let mut occurrences: Vec<Occurrence> = ranks
                    .map(|rank| {
                        let position = self.position(rank);
                        Occurrence {
                            position,
                            record: self.record_at(position).index,
                        }
                    })
                    .collect();
                occurrences.sort_unstable();
                Span {
                    start,
                    end,
                    count: occurrences.len() as u64,
                    unigram_logprob: output[start..end]
                        .iter()
                        .map(|&id| self.unigram_logprob(id))
                        .sum(),
                    occurrences,
                }
            })
            .collect();
        spans.sort_by(|a, b| {
            a.unigram_logprob
                .total_cmp(&b.unigram_logprob)
                .then(a.start.cmp(&b.start))
        });
        if let Some(max) = params.max_spans {
            spans.truncate(max);
        }
        let (records, contributors) = self.score(&spans);
        Ok(Trace {
            spans,
            records,
            contributors,
        })
    }

    fn score(&self, spans: &[Span]) -> (Vec<RecordScore>, Vec<(Address, u64)>) {
        let lengths: Vec<u64> = spans.iter().map(|s| (s.end - s.start) as u64).collect();
        let mut by_record: BTreeMap<u64, u64> = BTreeMap::new();
        for (span, units) in spans.iter().zip(apportion(SCORE_UNIT, &lengths)) {
            let ones = vec![1u64; span.occurrences.len()];
            for (occ, share) in span.occurrences.iter().zip(apportion(units, &ones)) {
                *by_record.entry(occ.record).or_default() += share;
            }
        }
        let mut records: Vec<RecordScore> = by_record
            .into_iter()
            .filter(|(_, score)| *score > 0)
            .map(|(record, score)| {
                let r = self.record(record);
                RecordScore {
                    record,
                    id: r.id,
                    contributor: r.contributor,
                    score,
                }
            })
            .collect();
        records.sort_by(|a, b| b.score.cmp(&a.score).then(a.record.cmp(&b.record)));
        let mut by_contributor: BTreeMap<[u8; 20], u64> = BTreeMap::new();
        for r in &records {
            *by_contributor.entry(r.contributor.0).or_default() += r.score;
        }
        let mut contributors: Vec<(Address, u64)> = by_contributor
            .into_iter()
            .map(|(a, s)| (Address(a), s))
            .collect();
        contributors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0 .0.cmp(&b.0 .0)));
        (records, contributors)
    }
}

/// Splits `total` in proportion to `weights` in integers that sum to `total` (when any
/// weight is positive): floors first, then one more to the largest remainders, earlier first.
pub fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut given: u64 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let exact = u128::from(total) * u128::from(w);
        let share = (exact / sum) as u64;
        shares.push(share);
        remainders.push((exact % sum, i));
        given += share;
    }
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((total - given) as usize) {
        shares[i] += 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_sums_exactly_and_breaks_ties_early() {
        assert_eq!(apportion(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(
            apportion(SCORE_UNIT, &[3, 5, 7]).iter().sum::<u64>(),
            SCORE_UNIT
        );
        assert_eq!(apportion(7, &[0, 0]), vec![0, 0]);
        assert_eq!(apportion(0, &[2, 3]), vec![0, 0]);
        assert_eq!(apportion(2, &[1, 0, 1]), vec![1, 0, 1]);
    }
}

/// A trace as the CLI and the API show it: ids in hex, scores as parts and as fractions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TraceReport {
    /// The index the trace was made against.
    pub index: String,
    pub output_tokens: usize,
    pub spans: Vec<SpanReport>,
    pub records: Vec<RecordReport>,
    pub contributors: Vec<ContributorReport>,
    /// What scores are parts of.
    pub score_unit: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SpanReport {
    pub start: usize,
    pub end: usize,
    /// The span's text, decoded.
    pub text: String,
    pub count: u64,
    pub unigram_logprob: f64,
    pub occurrences: Vec<OccurrenceReport>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OccurrenceReport {
    pub position: u64,
    pub record_id: String,
}

/// A record's score as the record keeps it, and as a fraction.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordReport {
    #[serde(flatten)]
    pub scored: ScoredRecord,
    pub share: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContributorReport {
    #[serde(flatten)]
    pub scored: ScoredContributor,
    pub share: f64,
}

impl Trace {
    pub fn report(
        &self,
        index: &Index,
        output: &[u32],
        tokenizer: &super::Tokenizer,
    ) -> TraceReport {
        let share = |s: u64| s as f64 / SCORE_UNIT as f64;
        TraceReport {
            index: index.meta.hash.clone(),
            output_tokens: output.len(),
            spans: self
                .spans
                .iter()
                .map(|s| SpanReport {
                    start: s.start,
                    end: s.end,
                    text: tokenizer
                        .decode(&output[s.start..s.end])
                        .unwrap_or_default(),
                    count: s.count,
                    unigram_logprob: s.unigram_logprob,
                    occurrences: s
                        .occurrences
                        .iter()
                        .map(|o| OccurrenceReport {
                            position: o.position,
                            record_id: hex::encode(index.record(o.record).id),
                        })
                        .collect(),
                })
                .collect(),
            records: self
                .records
                .iter()
                .map(|r| RecordReport {
                    scored: r.into(),
                    share: share(r.score),
                })
                .collect(),
            contributors: self
                .contributors
                .iter()
                .map(|c| ContributorReport {
                    scored: c.into(),
                    share: share(c.1),
                })
                .collect(),
            score_unit: SCORE_UNIT,
        }
    }
}
