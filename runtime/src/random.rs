//! Deterministic random weights, for running a spec without a checkpoint. Each decl's values
//! depend only on the seed and its key (never on the other decls or their order):
//! - matrices (rank ≥ 2): uniform in ±1/√fan_in, fan_in the last dim (`[out, in]`);
//! - biases (keys ending in `bias`: `.bias`, `selection_bias`): uniform in ±0.1;
//! - other vectors and scalars (norm weights): 1 + uniform in ±0.1.
//!
//! `RandomWeights` makes them one at a time when asked for (a `WeightSet`), so the CPU
//! backend packs a large random model without holding it all in f32.
//!
//! Inputs (`random_inputs`) are uniform in ±1 (token ids: over the vocabulary), keyed by the
//! input's name.

use moec_compiler::ir::weight::WeightDecl;
use moec_compiler::ir::{DType, Graph, NodeIndex, Op, Syms};
use moec_compiler::passes::rewrite::users;
use moec_compiler::quant::{dequantize, WeightFormat};
use moec_compiler::tensor::Tensor;
use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::rng::SplitMix64;
use crate::weights::WeightSet;

/// One f32 tensor per decl, in order, of the decl's shape.
pub fn random_weights(decls: &[WeightDecl], seed: u64) -> Vec<Tensor> {
    decls.iter().map(|decl| random_weight(decl, seed)).collect()
}

/// The weights [`random_weights`] makes, each made when asked for, with every value as
/// `format` stores it (`--weight-dtype`: f32 keeps them).
pub struct RandomWeights<'d> {
    pub decls: &'d [WeightDecl],
    pub seed: u64,
    pub format: WeightFormat,
}

impl WeightSet for RandomWeights<'_> {
    fn count(&self) -> usize {
        self.decls.len()
    }

    fn tensor(&self, id: usize) -> Cow<'_, Tensor> {
        Cow::Owned(dequantize(
            self.format,
            random_weight(&self.decls[id], self.seed),
        ))
    }
}

fn random_weight(decl: &WeightDecl, seed: u64) -> Tensor {
    let mut rng = SplitMix64(seed ^ fnv1a(decl.key.as_bytes()));
    let (center, radius) = match decl.shape.last() {
        _ if decl.key.ends_with("bias") => (0.0, 0.1),
        Some(&fan_in) if decl.shape.len() >= 2 => (0.0, 1.0 / (fan_in.max(1) as f32).sqrt()),
        _ => (1.0, 0.1),
    };
    let n = decl.shape.iter().product();
    let values = (0..n).map(|_| center + radius * rng.symmetric()).collect();
    Tensor::f32(decl.shape.clone(), values)
}

/// Random inputs for every graph input, with `tokens` tokens (and a source sequence
/// of as many, for an encoder-decoder): f32 inputs uniform
/// in ±1, i32 ones (token ids) uniform over the rows of the smallest embedding
/// table that reads them (0 when none does).
pub fn random_inputs(g: &Graph, tokens: usize, seed: u64) -> BTreeMap<String, Tensor> {
    g.inputs
        .iter()
        .filter_map(|&n| match &g.node(n).op {
            Op::Input { name, ty } => {
                let mut rng = SplitMix64(seed ^ fnv1a(name.as_bytes()));
                // An encoder-decoder's source sequence is as long as the call's tokens.
                let syms = Syms {
                    tokens,
                    past: 0,
                    source: tokens,
                };
                let shape = ty.concrete_shape(syms);
                let count = shape.iter().product();
                let t = match ty.dtype {
                    DType::F32 => Tensor::f32(shape, (0..count).map(|_| rng.symmetric()).collect()),
                    DType::I32 => {
                        let vocab = vocabulary(g, n);
                        let ids = (0..count).map(|_| (rng.next() % vocab) as i32).collect();
                        Tensor::i32(shape, ids)
                    }
                };
                Some((name.clone(), t))
            }
            _ => None,
        })
        .collect()
}

/// Rows of the smallest embedding table that reads input `n` (1 when none does).
fn vocabulary(g: &Graph, n: NodeIndex) -> u64 {
    users(g, n)
        .into_iter()
        .filter(|m| g.node(*m).op == Op::Embedding)
        .map(|m| g.value_type(g.operands(m)[1]).shape[0].fixed)
        .min()
        .unwrap_or(1)
        .max(1)
}

/// FNV-1a, 64-bit: a stable hash of the key (std's hashers may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
