//! A validator for the text field: length bounds, the share of letters among non-space
//! characters, and two kinds of repetition (repeated lines, and the most frequent word's
//! share). Rows outside a bound are rejected; the rest score by how far they stay from them.

use serde::Deserialize;
use tributary_sdk::validator::{Record, Validator, Verdict};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub min_chars: usize,
    pub max_chars: usize,
    pub min_letter_ratio: f64,
    pub max_repeated_line_ratio: f64,
    pub max_repeated_word_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_chars: 16,
            max_chars: 100_000,
            min_letter_ratio: 0.5,
            max_repeated_line_ratio: 0.3,
            max_repeated_word_ratio: 0.3,
        }
    }
}

/// Measurements of one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Measures {
    pub chars: usize,
    pub letter_ratio: f64,
    pub repeated_line_ratio: f64,
    pub repeated_word_ratio: f64,
}

pub fn measure(text: &str) -> Measures {
    let (mut chars, mut visible, mut letters) = (0usize, 0usize, 0usize);
    for c in text.chars() {
        chars += 1;
        if !c.is_whitespace() {
            visible += 1;
            if c.is_alphabetic() {
                letters += 1;
            }
        }
    }
    let letter_ratio = if visible == 0 {
        0.0
    } else {
        letters as f64 / visible as f64
    };
    Measures {
        chars,
        letter_ratio,
        repeated_line_ratio: repeated_share(text.lines().map(str::trim).filter(|l| !l.is_empty())),
        repeated_word_ratio: top_share(text.split_whitespace()),
    }
}

/// The share of items that repeat an earlier one.
fn repeated_share<'a>(items: impl Iterator<Item = &'a str>) -> f64 {
    let mut seen = std::collections::HashSet::new();
    let (mut total, mut repeats) = (0usize, 0usize);
    for item in items {
        total += 1;
        if !seen.insert(item) {
            repeats += 1;
        }
    }
    if total < 2 {
        0.0
    } else {
        repeats as f64 / total as f64
    }
}

/// The most frequent item's share, once there are enough items for it to mean something.
fn top_share<'a>(items: impl Iterator<Item = &'a str>) -> f64 {
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    let mut total = 0usize;
    for item in items {
        total += 1;
        *counts.entry(item).or_default() += 1;
    }
    if total < 8 {
        return 0.0;
    }
    counts.values().copied().max().unwrap_or(0) as f64 / total as f64
}

pub fn judge(config: &Config, text: &str) -> Verdict {
    let m = measure(text);
    if m.chars < config.min_chars {
        return Verdict::reject(format!(
            "{} characters, fewer than {}",
            m.chars, config.min_chars
        ));
    }
    if m.chars > config.max_chars {
        return Verdict::reject(format!(
            "{} characters, more than {}",
            m.chars, config.max_chars
        ));
    }
    if m.letter_ratio < config.min_letter_ratio {
        return Verdict::reject(format!(
            "letters are {:.0}% of the text, under {:.0}%",
            m.letter_ratio * 100.0,
            config.min_letter_ratio * 100.0
        ));
    }
    if m.repeated_line_ratio > config.max_repeated_line_ratio {
        return Verdict::reject(format!(
            "{:.0}% of lines repeat earlier ones, over {:.0}%",
            m.repeated_line_ratio * 100.0,
            config.max_repeated_line_ratio * 100.0
        ));
    }
    if m.repeated_word_ratio > config.max_repeated_word_ratio {
        return Verdict::reject(format!(
            "one word is {:.0}% of the text, over {:.0}%",
            m.repeated_word_ratio * 100.0,
            config.max_repeated_word_ratio * 100.0
        ));
    }
    // Each measure scores 1 far from its bound and falls towards 0 at it.
    let headroom = |value: f64, bound: f64| {
        if bound <= 0.0 {
            1.0
        } else {
            (1.0 - value / bound).clamp(0.0, 1.0)
        }
    };
    let letters = if config.min_letter_ratio >= 1.0 {
        1.0
    } else {
        ((m.letter_ratio - config.min_letter_ratio) / (1.0 - config.min_letter_ratio))
            .clamp(0.0, 1.0)
    };
    let quality = 0.4 * letters.sqrt()
        + 0.3 * headroom(m.repeated_line_ratio, config.max_repeated_line_ratio)
        + 0.3 * headroom(m.repeated_word_ratio, config.max_repeated_word_ratio);
    Verdict::accept(quality.clamp(0.0, 1.0))
}

pub struct TextQuality;

impl Validator for TextQuality {
    type Config = Config;
    fn check(config: &Config, record: &Record) -> Verdict {
        judge(config, record.text())
    }
}

tributary_sdk::export_validator!(TextQuality);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_reject_with_a_reason_and_good_text_scores_high() {
        let config = Config::default();
        let good = judge(
            &config,
            "The river carries silt from the mountains to the delta every spring.",
        );
        match good {
            Verdict::Accept { quality, .. } => assert!(quality > 0.8, "{quality}"),
            other => panic!("{other:?}"),
        }
        let short = judge(&config, "too short");
        assert_eq!(short, Verdict::reject("9 characters, fewer than 16"));
        let symbols = judge(&config, "$$$ ### %%% &&& *** @@@ !!! ???");
        assert!(
            matches!(symbols, Verdict::Reject { reason } if reason.starts_with("letters are 0%"))
        );
        let spam = judge(&config, "buy buy buy buy buy buy buy buy now now");
        assert!(
            matches!(spam, Verdict::Reject { reason } if reason.starts_with("one word is 80%"))
        );
        let lines = judge(
            &config,
            "same line here\nsame line here\nsame line here\nanother one",
        );
        assert!(matches!(lines, Verdict::Reject { reason } if reason.contains("of lines repeat")));
    }

    #[test]
    fn measures_count_characters_not_bytes() {
        let m = measure("héllo wörld");
        assert_eq!(m.chars, 11);
        assert_eq!(m.letter_ratio, 1.0);
    }
}
