//! Close names for a missing tensor: up to three existing names, most similar first, by
//! normalized Levenshtein similarity, keeping only those at least `MIN_SIMILARITY` alike.
//!
//! In a small checkpoint every name is a candidate. A whole-model checkpoint holds ~10^5 names,
//! too many to compare against each missing one, so there only names with the same numeric
//! path components (`layers.3 … experts.17`: the same layer and expert) are candidates. That
//! is where a misspelt name's intended match lives; an index out of range finds nothing.

use std::collections::HashMap;

use super::source::WeightSource;

/// How alike (0 to 1) a name must be to be suggested.
const MIN_SIMILARITY: f64 = 0.5;
/// Up to this many names, every name is a candidate.
const FULL_SCAN_LIMIT: usize = 4096;
const MAX_SUGGESTIONS: usize = 3;

pub(crate) struct Suggester<'s> {
    /// The candidates for each numeric signature; one bucket, under "", for a small source.
    buckets: HashMap<String, Vec<&'s str>>,
    full_scan: bool,
}

impl<'s> Suggester<'s> {
    pub fn new(source: &'s WeightSource) -> Suggester<'s> {
        let full_scan = source.tensor_count() <= FULL_SCAN_LIMIT;
        let mut buckets: HashMap<String, Vec<&str>> = HashMap::new();
        for name in source.tensor_names() {
            let key = if full_scan {
                String::new()
            } else {
                numbers(name)
            };
            buckets.entry(key).or_default().push(name);
        }
        Suggester { buckets, full_scan }
    }

    pub fn suggest(&self, missing: &str) -> Vec<String> {
        let key = if self.full_scan {
            String::new()
        } else {
            numbers(missing)
        };
        let Some(candidates) = self.buckets.get(&key) else {
            return Vec::new();
        };
        let mut scored: Vec<(f64, &str)> = candidates
            .iter()
            .map(|&name| (strsim::normalized_levenshtein(missing, name), name))
            .filter(|&(score, _)| score >= MIN_SIMILARITY)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        scored
            .into_iter()
            .take(MAX_SUGGESTIONS)
            .map(|(_, name)| name.to_string())
            .collect()
    }
}

/// The all-digit `.`-separated components of a name, joined: `layers.3.experts.17.w1` → `3,17`.
fn numbers(name: &str) -> String {
    let digits = name
        .split('.')
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
    digits.collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::numbers;

    #[test]
    fn numbers_are_whole_components() {
        assert_eq!(numbers("model.layers.3.mlp.experts.17.w1.weight"), "3,17");
        assert_eq!(numbers("lm_head.weight"), "");
    }
}
