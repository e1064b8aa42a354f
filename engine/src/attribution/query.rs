//! An n-gram query answered whole: how often it occurs, where (with the records and
//! contributors), and what follows it.

use serde::{Deserialize, Serialize};

use super::index::{Index, NextTokens};

/// Most occurrences one query lists.
pub const MAX_OCCURRENCES: usize = 10_000;

/// One place an n-gram occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Found {
    /// Token position in the index's stream.
    pub position: u64,
    /// Offset of the occurrence within its record, in tokens.
    pub offset: u64,
    pub record_id: String,
    pub contributor: String,
}

/// What an index says about an n-gram.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueryResult {
    pub tokens: Vec<u32>,
    pub count: u64,
    /// Up to `limit` occurrences, in suffix order.
    pub occurrences: Vec<Found>,
    /// The next-token distribution after the query (over its longest suffix that occurs),
    /// unless it was not asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<NextTokens>,
}

/// A query as the API takes it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub ids: Option<Vec<u32>>,
    /// How many occurrences to list (default 10, at most 10,000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Whether to give the next-token distribution (default true).
    #[serde(default)]
    pub next: Option<bool>,
}

impl Index {
    /// Counts `ids`, lists up to `limit` occurrences with their records, and gives what follows.
    pub fn query(&self, ids: &[u32], limit: usize, next: bool) -> QueryResult {
        let ranks = self.find(ids);
        let count = ranks.len() as u64;
        let occurrences = ranks
            .take(limit.min(MAX_OCCURRENCES))
            .map(|rank| {
                let position = self.position(rank);
                let record = self.record_at(position);
                Found {
                    position,
                    offset: position - self.record_span(record.index).start,
                    record_id: hex::encode(record.id),
                    contributor: record.contributor.to_checksum(),
                }
            })
            .collect();
        QueryResult {
            tokens: ids.to_vec(),
            count,
            occurrences,
            next: next.then(|| self.next_tokens(ids)),
        }
    }
}
