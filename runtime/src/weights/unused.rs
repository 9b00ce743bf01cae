//! Unused tensors worth a note: those sitting next to tensors the decls use.
//!
//! A checkpoint usually holds much more than a `.moe` spec describes (attention, embeddings,
//! other layers), so listing every unused tensor would bury the interesting ones. The rule:
//! an unused tensor is reported when
//! - it shares its parent path with a used tensor (`gate.bias` beside a used `gate.weight`), or
//! - its parent is a sibling of at least two used parents (`experts.3.w3.weight` when
//!   `experts.3.w1.weight` and `experts.3.w2.weight` are used: a module the spec only half reads).
//!
//! Names without a `.` have the empty parent, so in a flat file every unused name is reported.

use std::collections::{BTreeMap, BTreeSet};

use moec_compiler::ir::weight::WeightDecl;

use super::source::WeightSource;

/// Unused tensors of `source` next to the ones `decls` read, sorted.
pub fn unused(decls: &[WeightDecl], source: &WeightSource) -> Vec<String> {
    let used: BTreeSet<&str> = decls.iter().map(|d| d.tensor.as_str()).collect();
    let used_parents: BTreeSet<&str> = used.iter().map(|t| parent(t)).collect();
    let mut parents_under: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for &p in &used_parents {
        if let Some(g) = grandparent_of_parent(p) {
            parents_under.entry(g).or_default().insert(p);
        }
    }
    let scopes: BTreeSet<&str> = parents_under
        .into_iter()
        .filter(|(_, ps)| ps.len() >= 2)
        .map(|(g, _)| g)
        .collect();
    source
        .tensor_names()
        .filter(|name| !used.contains(name))
        .filter(|name| {
            let p = parent(name);
            used_parents.contains(p) || grandparent_of_parent(p).is_some_and(|g| scopes.contains(g))
        })
        .map(str::to_string)
        .collect()
}

/// `a.b.c` → `a.b`; `c` → ``.
fn parent(name: &str) -> &str {
    name.rsplit_once('.').map_or("", |(p, _)| p)
}

/// The parent of a (non-empty) parent path; none for the empty root.
fn grandparent_of_parent(parent_path: &str) -> Option<&str> {
    (!parent_path.is_empty()).then(|| parent(parent_path))
}

#[cfg(test)]
mod tests {
    use super::parent;

    #[test]
    fn parents() {
        assert_eq!(parent("a.b.c"), "a.b");
        assert_eq!(parent("c"), "");
    }
}
