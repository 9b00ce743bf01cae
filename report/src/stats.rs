//! What the report shows that the trace does not store directly: each
//! token's top expert, the spread of router entropy per block, how often two
//! experts are selected together, the dropped slots, and each expert's most
//! frequent tokens. Plain counting over a checked [`RoutingTrace`]; no drawing.

use crate::trace::RoutingTrace;
use std::collections::HashMap;

/// The expert with the largest routing weight for token `t` at block `l` (slot 0), if any.
pub fn top_expert(trace: &RoutingTrace, t: usize, l: usize) -> Option<usize> {
    let (expert, _, _) = trace.slots(t, l).next()?;
    usize::try_from(expert).ok()
}

/// Router entropy of one block across the tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f32,
    pub mean: f32,
    pub max: f32,
}

/// The entropy spread of every block, in layer order.
pub fn entropy_per_block(trace: &RoutingTrace) -> Vec<Spread> {
    let (tokens, layers) = (trace.token_count(), trace.layers());
    (0..layers)
        .map(|l| {
            let column = (0..tokens).map(|t| trace.router_entropy[t * layers + l]);
            let (min, max, sum) = column
                .fold((f32::INFINITY, f32::NEG_INFINITY, 0.0f64), |acc, h| {
                    (acc.0.min(h), acc.1.max(h), acc.2 + h as f64)
                });
            Spread {
                min,
                mean: (sum / tokens.max(1) as f64) as f32,
                max,
            }
        })
        .collect()
}

/// `[E, E]`, row-major: how many times experts `a ≠ b` were both selected for
/// one token at one block, summed over blocks (symmetric, zero diagonal).
/// Dropped slots count: they were selected.
pub fn co_selection(trace: &RoutingTrace) -> Vec<u32> {
    let e = trace.experts;
    let mut m = vec![0u32; e * e];
    for t in 0..trace.token_count() {
        for l in 0..trace.layers() {
            let chosen: Vec<usize> = trace
                .slots(t, l)
                .filter_map(|(x, _, _)| usize::try_from(x).ok())
                .collect();
            for &a in &chosen {
                for &b in chosen.iter().filter(|b| **b != a) {
                    m[a * e + b] += 1;
                }
            }
        }
    }
    m
}

/// A slot whose expert was selected but not run (capacity).
#[derive(Clone, Debug, PartialEq)]
pub struct Drop {
    pub block: usize,
    pub token: usize,
    pub expert: i32,
    pub weight: f32,
}

/// Every dropped slot, by block, then token.
pub fn drops(trace: &RoutingTrace) -> Vec<Drop> {
    let mut found = Vec::new();
    for block in 0..trace.layers() {
        for token in 0..trace.token_count() {
            for (expert, weight, dropped) in trace.slots(token, block) {
                if dropped {
                    found.push(Drop {
                        block,
                        token,
                        expert,
                        weight,
                    });
                }
            }
        }
    }
    found
}

/// `[L][E]`: each expert's `n` most frequent token strings among the tokens it
/// ran (not dropped), with their counts; most frequent first, ties in prompt order.
pub fn frequent_tokens(trace: &RoutingTrace, n: usize) -> Vec<Vec<Vec<(String, usize)>>> {
    (0..trace.layers())
        .map(|l| {
            let mut per_expert: Vec<Vec<(String, usize)>> = vec![Vec::new(); trace.experts];
            let mut seen: Vec<HashMap<&str, usize>> = vec![HashMap::new(); trace.experts];
            for (t, text) in trace.tokens.iter().enumerate() {
                for (expert, _, dropped) in trace.slots(t, l) {
                    let Some(e) = usize::try_from(expert).ok().filter(|_| !dropped) else {
                        continue;
                    };
                    match seen[e].get(text.as_str()) {
                        Some(&i) => per_expert[e][i].1 += 1,
                        None => {
                            seen[e].insert(text, per_expert[e].len());
                            per_expert[e].push((text.clone(), 1));
                        }
                    }
                }
            }
            for list in &mut per_expert {
                // A stable sort keeps first-seen order among equal counts.
                list.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
                list.truncate(n);
            }
            per_expert
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two tokens ("a", "a"), two blocks, k = 2, three experts; token 1's
    /// second slot in block 1 is dropped.
    pub(crate) fn small() -> RoutingTrace {
        RoutingTrace {
            spec: Some("models/x.moe".into()),
            blocks: vec!["layers.0.moe".into(), "layers.1.moe".into()],
            tokens: vec!["a".into(), "a".into()],
            k: 2,
            experts: 3,
            // [T, L, k]
            routed_experts: vec![0, 1, 2, 0, 0, 2, 2, 1],
            routing_weights: vec![0.7, 0.3, 0.6, 0.4, 0.5, 0.5, 0.9, 0.1],
            dropped: vec![false, false, false, false, false, false, false, true],
            router_entropy: vec![0.1, 0.5, 0.3, 0.9],
            expert_counts: vec![2, 1, 1, 1, 0, 2],
            aux_loss: vec![1.0, 1.1],
            z_loss: vec![0.2, 0.3],
        }
    }

    #[test]
    fn top_expert_is_the_first_slot() {
        let t = small();
        assert_eq!(top_expert(&t, 0, 0), Some(0));
        assert_eq!(top_expert(&t, 1, 1), Some(2));
    }

    #[test]
    fn entropy_spread_is_per_block_over_tokens() {
        let s = entropy_per_block(&small());
        assert_eq!(s[0].min, 0.1);
        assert_eq!(s[0].max, 0.3);
        assert!((s[1].mean - 0.7).abs() < 1e-6);
    }

    #[test]
    fn co_selection_counts_pairs_in_both_directions() {
        // Pairs: (0,1) block 0 token 0; (2,0) block 1 token 0; (0,2) block 0 token 1; (2,1) block 1 token 1.
        let m = co_selection(&small());
        assert_eq!(m, vec![0, 1, 2, 1, 0, 1, 2, 1, 0]);
    }

    #[test]
    fn drops_and_frequent_tokens_skip_what_did_not_run() {
        let t = small();
        let d = drops(&t);
        assert_eq!(
            d,
            vec![Drop {
                block: 1,
                token: 1,
                expert: 1,
                weight: 0.1
            }]
        );
        let f = frequent_tokens(&t, 5);
        assert_eq!(f[0][0], vec![("a".to_string(), 2)]);
        assert_eq!(f[1][1], vec![]);
        assert_eq!(f[1][2], vec![("a".to_string(), 2)]);
    }
}
