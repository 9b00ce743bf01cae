//! Helpers shared by the compiler's integration tests: the bundled examples and
//! small dims for them, deterministic random weights and inputs, and a tolerance
//! check.
#![allow(dead_code)]

use moec_compiler::ir::{Graph, Op};
use moec_compiler::lower::lower_source;
use moec_compiler::tensor::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The bundled examples (`examples/*.moe`), sorted: (file name, source text).
pub fn example_sources() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "moe"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no examples in {}", dir.display());
    out
}

/// The bundled example `name` (a file name under `examples/`) lowered with [`small_dims`].
pub fn small_example(name: &str) -> Graph {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    let source = std::fs::read_to_string(&path).unwrap();
    lower_small(name, &source)
}

/// Every bundled example lowered with [`small_dims`]: (file name, graph).
pub fn small_examples() -> Vec<(String, Graph)> {
    example_sources()
        .into_iter()
        .map(|(name, source)| {
            let g = lower_small(&name, &source);
            (name, g)
        })
        .collect()
}

/// `source` lowered with [`small_dims`]; a diagnostic is a panic naming `name`.
fn lower_small(name: &str, source: &str) -> Graph {
    lower_source(source, &small_dims(source))
        .unwrap_or_else(|d| panic!("{}", d.render(name, source)))
        .graph
}

/// Most experts an example runs with in tests: real models' hundreds would only repeat the same
/// nodes in snapshots and the same work in the backends' dense runs.
pub const MAX_EXPERTS: i64 = 16;

/// Overrides that shrink the real models' dims so snapshots stay readable: every
/// example keeps its structure, only the widths shrink, and expert counts (params
/// named like the config fields that hold them, with a larger integer default) are
/// capped at `MAX_EXPERTS` (zero-computation experts at half of it).
pub fn small_dims(source: &str) -> Vec<(String, String)> {
    let mut sets: Vec<(String, String)> = [
        ("hidden_size", "8"),
        ("d_model", "8"),
        ("intermediate_size", "16"),
        ("moe_intermediate_size", "16"),
        ("shared_expert_intermediate_size", "16"),
        ("d_ff", "16"),
        ("num_hidden_layers", "2"),
    ]
    .iter()
    .filter(|(k, _)| source.contains(&format!("param {k} ")))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    sets.extend(few_experts(source));
    sets
}

fn few_experts(source: &str) -> Vec<(String, String)> {
    use moec_grammar::ast::{ExprKind, Item};
    let Ok(spec) = moec_grammar::parse(source) else {
        return Vec::new(); // a spec that does not parse keeps its own counts (and fails elsewhere)
    };
    spec.items
        .iter()
        .filter_map(|item| match item {
            Item::Param(p) => Some(p),
            _ => None,
        })
        .filter_map(|p| {
            let cap = match p.name.name.as_str() {
                "num_experts" | "num_local_experts" | "n_routed_experts" | "moe_num_experts" => {
                    MAX_EXPERTS
                }
                "zero_expert_num" => MAX_EXPERTS / 2,
                _ => return None,
            };
            match p.value.kind {
                ExprKind::Int(n) if n > cap => Some((p.name.name.clone(), cap.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// SplitMix64 seeded by an FNV-1a hash of `key` and `seed`.
struct Rng(u64);

impl Rng {
    fn new(key: &str, seed: u64) -> Rng {
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Rng(h ^ seed)
    }
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// One tensor per weight of `g`, in order, each keyed by the weight's `key` only
/// (so a graph whose weights were reordered or pruned gets the same values):
/// matrices ±1/√fan_in, norm weights 1 ± 0.1, biases ±0.1.
pub fn weights(g: &Graph, seed: u64) -> Vec<Tensor> {
    g.weights
        .iter()
        .map(|d| {
            let mut rng = Rng::new(&d.key, seed);
            let (center, radius) = match d.shape.last() {
                _ if d.key.ends_with("bias") => (0.0, 0.1),
                Some(&k) if d.shape.len() >= 2 => (0.0, 1.0 / (k.max(1) as f32).sqrt()),
                _ => (1.0, 0.1),
            };
            let n = d.shape.iter().product();
            Tensor::f32(
                d.shape.clone(),
                (0..n).map(|_| center + radius * rng.next()).collect(),
            )
        })
        .collect()
}

/// Random inputs in [-1, 1) with `tokens` tokens, keyed by the input's name.
pub fn inputs(g: &Graph, tokens: usize, seed: u64) -> BTreeMap<String, Tensor> {
    g.inputs
        .iter()
        .filter_map(|&n| match &g.node(n).op {
            Op::Input { name, ty } => {
                let mut rng = Rng::new(name, seed ^ 0x5151);
                let shape = ty.concrete_shape(tokens);
                Some((
                    name.clone(),
                    Tensor::f32(
                        shape.clone(),
                        (0..shape.iter().product()).map(|_| rng.next()).collect(),
                    ),
                ))
            }
            _ => None,
        })
        .collect()
}

/// Every output equal in name, dtype and shape, f32 values within `rel` relative
/// (|a - b| ≤ rel·max(1, |b|)), i32 values exactly; NaN must match NaN.
pub fn assert_outputs_close(
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
    rel: f32,
    what: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: output names"
    );
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.shape, w.shape, "{what}: shape of `{name}`");
        assert_eq!(g.dtype_name(), w.dtype_name(), "{what}: dtype of `{name}`");
        if w.dtype_name() == "i32" {
            assert_eq!(g.as_i32(), w.as_i32(), "{what}: `{name}`");
            continue;
        }
        for (i, (a, b)) in g.as_f32().iter().zip(w.as_f32()).enumerate() {
            let ok =
                (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= rel * b.abs().max(1.0);
            assert!(
                ok,
                "{what}: `{name}`[{i}] = {a}, the lowered graph gives {b}"
            );
        }
    }
}
