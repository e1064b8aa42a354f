//! The Shapley value of contributor groups in the coverage game: a coalition of groups is
//! worth the attribution of the distinct records its members hold, each record once however
//! many copies the coalition has (a record's id is its content hash, so a text contributed
//! twice is one record in two places). That game is a sum, over records, of "any holder
//! will do" games, so its Shapley value has a closed form: each record's value is shared
//! equally among the groups holding it. A group cannot earn more by holding more copies of
//! the same text, only by holding texts nobody else does.
//!
//! Groups are each contributor (`by = "contributor"`, the default), each Datanet
//! (`by = "datanet"`), or named in `groups` (address to group name; anyone unnamed is their
//! own group). Within a group a record's share goes to the members holding it, by their
//! score; penalties are withheld to the fallback.

use std::collections::BTreeMap;

use serde::Deserialize;
use tributary_sdk::reward::{pay_withholding_penalties, AttributionEntry, Request, RewardPolicy};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub by: By,
    pub groups: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum By {
    #[default]
    Contributor,
    Datanet,
}

impl Config {
    fn group_of(&self, e: &AttributionEntry) -> String {
        if let Some((_, g)) = self
            .groups
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(&e.contributor))
        {
            return format!("named:{g}");
        }
        match self.by {
            By::Contributor => format!("contributor:{}", e.contributor.to_ascii_lowercase()),
            By::Datanet => format!("datanet:{}", e.datanet),
        }
    }
}

/// One record's groups, each with its holders (index into the contributors) and their scores.
type Holders = BTreeMap<String, Vec<(usize, f64)>>;

/// Each contributor's value (in order of first appearance): per record, its total score
/// split equally among the groups holding it, and within a group among its holders by score.
pub fn values(config: &Config, entries: &[AttributionEntry]) -> Vec<(String, f64)> {
    let mut records: BTreeMap<&str, Holders> = BTreeMap::new();
    let mut people: Vec<(String, f64)> = Vec::new();
    for e in entries {
        let who = match people
            .iter()
            .position(|(a, _)| a.eq_ignore_ascii_case(&e.contributor))
        {
            Some(i) => i,
            None => {
                people.push((e.contributor.clone(), 0.0));
                people.len() - 1
            }
        };
        records
            .entry(e.record_id.as_str())
            .or_default()
            .entry(config.group_of(e))
            .or_default()
            .push((who, e.score.max(0.0)));
    }
    for groups in records.values() {
        let value: f64 = groups.values().flatten().map(|(_, s)| s).sum();
        let each = value / groups.len() as f64;
        for holders in groups.values() {
            let within: f64 = holders.iter().map(|(_, s)| s).sum();
            for (who, s) in holders {
                people[*who].1 += if within > 0.0 {
                    each * s / within
                } else {
                    each / holders.len() as f64
                };
            }
        }
    }
    people
}

pub struct ShapleyGroups;

impl RewardPolicy for ShapleyGroups {
    type Config = Config;

    fn distribute(config: &Config, request: &Request) -> Result<Vec<(String, u128)>, String> {
        Ok(pay_withholding_penalties(
            request,
            values(config, request.entries),
        ))
    }
}

tributary_sdk::export_reward_policy!(ShapleyGroups);

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(record: &str, contributor: &str, datanet: &str, score: f64) -> AttributionEntry {
        AttributionEntry {
            record_id: record.into(),
            datanet: datanet.into(),
            contributor: contributor.into(),
            score,
            quality: 1.0,
        }
    }

    /// The Shapley value by its definition: each group's marginal value averaged over every
    /// order of the groups.
    fn shapley_by_enumeration(
        config: &Config,
        entries: &[AttributionEntry],
    ) -> BTreeMap<String, f64> {
        let mut groups: Vec<String> = entries.iter().map(|e| config.group_of(e)).collect();
        groups.sort();
        groups.dedup();
        let worth = |members: &[&String]| -> f64 {
            let mut seen: BTreeMap<&str, f64> = BTreeMap::new();
            for e in entries {
                if members.contains(&&config.group_of(e)) {
                    seen.entry(e.record_id.as_str()).or_default();
                }
            }
            // A covered record is worth all its copies' scores (the attribution split one
            // record's credit among its copies).
            seen.keys()
                .map(|r| {
                    entries
                        .iter()
                        .filter(|e| e.record_id == *r)
                        .map(|e| e.score)
                        .sum::<f64>()
                })
                .sum()
        };
        let n = groups.len();
        let mut value: BTreeMap<String, f64> = BTreeMap::new();
        let mut orders = 0.0;
        let mut perm: Vec<usize> = (0..n).collect();
        // Heap's algorithm over every order.
        fn visit(k: usize, perm: &mut Vec<usize>, f: &mut dyn FnMut(&[usize])) {
            if k == 1 {
                f(perm);
                return;
            }
            for i in 0..k {
                visit(k - 1, perm, f);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                perm.swap(j, k - 1);
            }
        }
        visit(n, &mut perm, &mut |order| {
            orders += 1.0;
            let mut members: Vec<&String> = Vec::new();
            for &g in order {
                let before = worth(&members);
                members.push(&groups[g]);
                *value.entry(groups[g].clone()).or_default() += worth(&members) - before;
            }
        });
        value.values_mut().for_each(|v| *v /= orders);
        value
    }

    #[test]
    fn copies_of_a_text_share_it_equally_as_the_shapley_value_says() {
        // r1 is held by a (twice, in two Datanets) and by b; r2 by a alone; r3 by c.
        let entries = vec![
            entry("r1", "0xa", "d1", 0.2),
            entry("r1", "0xa", "d2", 0.2),
            entry("r1", "0xb", "d1", 0.2),
            entry("r2", "0xa", "d1", 0.3),
            entry("r3", "0xc", "d2", 0.1),
        ];
        let config = Config::default();
        let got: BTreeMap<String, f64> = values(&config, &entries)
            .into_iter()
            .map(|(a, v)| (format!("contributor:{a}"), v))
            .collect();
        let expected = shapley_by_enumeration(&config, &entries);
        for (g, v) in &expected {
            assert!((got[g] - v).abs() < 1e-12, "{g}: {} against {v}", got[g]);
        }
        // a's second copy earns nothing: r1 (0.6) is split a 0.3, b 0.3.
        assert!((got["contributor:0xa"] - 0.6).abs() < 1e-12);
        assert!((got["contributor:0xb"] - 0.3).abs() < 1e-12);
        // By Datanet, the same game over two groups.
        let by_datanet = Config {
            by: By::Datanet,
            ..Config::default()
        };
        let groups = shapley_by_enumeration(&by_datanet, &entries);
        let people = values(&by_datanet, &entries);
        let total: f64 = people.iter().map(|(_, v)| v).sum();
        assert!((total - groups.values().sum::<f64>()).abs() < 1e-12);
    }
}
