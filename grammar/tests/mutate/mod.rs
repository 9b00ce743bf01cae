//! Random damage to `.moe` sources, shared by the grammar and compiler fuzz tests:
//! a cut at a char boundary and char-level edits (delete, insert, replace), so the
//! result is always valid UTF-8. The seeds are the bundled examples and error cases.

use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// The texts to damage: the examples first, then the error cases.
pub struct Seeds {
    pub texts: Vec<String>,
    pub examples: usize,
}

/// Every `examples/*.moe` and `tests/cases/errors/*.moe` under the repository root.
pub fn seeds(repo: &Path) -> Seeds {
    let read = |dir: &str| -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "moe"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .moe files in {dir}");
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    let mut texts = read("examples");
    let examples = texts.len();
    texts.extend(read("tests/cases/errors"));
    Seeds { texts, examples }
}

/// Proptest cases per fuzz test: 256, so the suite stays fast; `PROPTEST_CASES=N` for a
/// longer run.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// One edit; positions are taken modulo the text's current length in chars.
#[derive(Clone, Debug)]
pub enum Edit {
    Delete(usize),
    Insert(usize, String),
    Replace(usize, String),
}

/// Which seed to damage, where to cut it (if at all), and the edits after the cut.
#[derive(Clone, Debug)]
pub struct Damage {
    pub seed: usize,
    pub cut: Option<usize>,
    pub edits: Vec<Edit>,
}

/// Pieces of the language and of broken text, more likely to reach deep into the
/// compiler than random chars alone.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    ".",
    ":",
    "->",
    "*",
    "+",
    "-",
    "/",
    "%",
    "\"",
    "/*",
    "*/",
    "//",
    "\n",
    " ",
    "\t",
    "0",
    "-1",
    "3",
    "99999999999999999999",
    "1e999",
    "2.5",
    "1_000",
    "true",
    "false",
    "x",
    "tokens",
    "n",
    "let ",
    "param p = 2\n",
    "output ",
    "return ",
    "moe(",
    "linear(",
    "softmax(",
    "topk(",
    "expert_choice(",
    "repeat l in 2 {",
    "if ",
    " then ",
    "} else {",
    " else ",
    "==",
    "<",
    " and ",
    "not ",
    "\"a\"",
    "[0]",
    "len(",
    " from \"a.b\"",
    "weights {",
    "experts[e]",
    "{e}",
    "{layer}",
    "bias = true",
    "capacity = fixed(1)",
    "dropped = passthrough",
    "shared = ",
    "é",
    "→",
    "\u{0}",
    "🦀",
];

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FRAGMENTS).prop_map(String::from),
        1 => any::<char>().prop_map(String::from),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), fragment()).prop_map(|(p, s)| Edit::Insert(p, s)),
        (any::<usize>(), fragment()).prop_map(|(p, s)| Edit::Replace(p, s)),
    ]
}

/// Damage to one of the seeds (half the time an example, which lowers far when intact):
/// cut in about a third of the cases, 0 to 7 edits.
pub fn damage(seeds: &Seeds) -> impl Strategy<Value = Damage> {
    let seed = prop_oneof![0..seeds.examples, 0..seeds.texts.len()];
    (
        seed,
        prop::option::weighted(0.3, any::<usize>()),
        prop::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, cut, edits)| Damage { seed, cut, edits })
}

impl Damage {
    /// The damaged text of seed `self.seed`.
    pub fn apply(&self, seeds: &Seeds) -> String {
        let mut chars: Vec<char> = seeds.texts[self.seed].chars().collect();
        if let Some(cut) = self.cut {
            chars.truncate(cut % (chars.len() + 1));
        }
        for e in &self.edits {
            match e {
                Edit::Delete(_) | Edit::Replace(..) if chars.is_empty() => {}
                Edit::Delete(p) => {
                    chars.remove(p % chars.len());
                }
                Edit::Insert(p, s) => {
                    let at = p % (chars.len() + 1);
                    chars.splice(at..at, s.chars());
                }
                Edit::Replace(p, s) => {
                    let at = p % chars.len();
                    chars.splice(at..at + 1, s.chars());
                }
            }
        }
        chars.into_iter().collect()
    }
}
