//! Checking what a run is given against the graph before anything runs: bound
//! weights (count, shape, f32), named inputs (names, dtypes, shapes, one token
//! count), and token ids against the vocabulary of the embedding reading them.
//! Index values inside the graph are `check.rs`'s.

use crate::ir::weight::WeightDecl;
use crate::ir::{Graph, Op, Syms, Value};
use crate::tensor::{ShapeDisplay, Tensor, TensorData};
use std::collections::BTreeMap;

/// Checks inputs and weights against the graph; returns the symbols the inputs bind.
pub fn check_inputs(
    g: &Graph,
    weights: &[Tensor],
    inputs: &BTreeMap<String, Tensor>,
) -> Result<Syms, String> {
    check_weights(g, weights)?;
    let syms = input_syms(g, inputs)?;
    check_token_ids(g, inputs)?;
    Ok(syms)
}

/// Checks that every token id an `Embedding` reads straight from an input is a
/// row of its table.
pub fn check_token_ids(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Result<(), String> {
    for n in g.g.node_indices() {
        if g.node(n).op != Op::Embedding {
            continue;
        }
        let [ids, table]: [Value; 2] = g.operands(n).try_into().expect("embedding has 2 operands");
        let Op::Input { name, .. } = &g.node(ids.node).op else {
            continue;
        };
        let vocab = g.value_type(table).shape[0].fixed;
        if let Some((i, id)) = inputs[name]
            .as_i32()
            .iter()
            .enumerate()
            .find(|(_, id)| **id < 0 || **id as u64 >= vocab)
        {
            return Err(format!(
                "token id {id} (at index {i} of `{name}`) is outside the vocabulary of {vocab} tokens"
            ));
        }
    }
    Ok(())
}

/// Checks bound weights against the graph's weight table (count, shape, f32).
pub fn check_weights(g: &Graph, weights: &[Tensor]) -> Result<(), String> {
    if weights.len() != g.weights.len() {
        return Err(format!(
            "{} weights bound, the graph needs {}",
            weights.len(),
            g.weights.len()
        ));
    }
    for (w, d) in weights.iter().zip(&g.weights) {
        check_weight(d, w)?;
    }
    Ok(())
}

/// Checks one bound weight against its decl (shape, f32).
pub fn check_weight(d: &WeightDecl, w: &Tensor) -> Result<(), String> {
    if w.shape != d.shape || !matches!(w.data, TensorData::F32(_)) {
        return Err(format!(
            "weight `{}` is {} {}, expected f32 {}",
            d.key,
            w.dtype_name(),
            ShapeDisplay(&w.shape),
            ShapeDisplay(&d.shape)
        ));
    }
    Ok(())
}

/// Checks the named inputs against the graph's inputs; returns the token count.
pub fn token_count(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Result<usize, String> {
    Ok(input_syms(g, inputs)?.tokens)
}

/// Checks the named inputs against the graph's inputs (names, dtypes, shapes);
/// returns the symbols their first dims bind: `tokens`, and an encoder-decoder
/// model's `source` (the encoder's inputs). `past` is the caller's.
pub fn input_syms(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Result<Syms, String> {
    let (mut tokens, mut source) = (None, None);
    for &n in &g.inputs {
        let Op::Input { name, ty } = &g.node(n).op else {
            continue;
        };
        let t = inputs
            .get(name)
            .ok_or_else(|| format!("missing input `{name}` ({ty})"))?;
        let count = *t.shape.first().unwrap_or(&0);
        let by_source = ty.shape.first().is_some_and(|d| d.uses_source());
        let (bound, what, syms) = if by_source {
            let syms = Syms {
                source: count,
                ..Syms::default()
            };
            (&mut source, "source", syms)
        } else {
            (&mut tokens, "token", Syms::tokens(count))
        };
        if t.shape != ty.concrete_shape(syms) || t.dtype_name() != ty.dtype.to_string() {
            return Err(format!(
                "input `{name}` is {} {}, expected {ty}",
                t.dtype_name(),
                ShapeDisplay(&t.shape)
            ));
        }
        if by_source && count == 0 {
            return Err(format!(
                "input `{name}` is empty: the encoder needs at least one source token"
            ));
        }
        if let Some(prev) = bound.filter(|p| *p != count) {
            return Err(format!(
                "inputs disagree on the {what} count: {prev} and {count} (`{name}`)"
            ));
        }
        *bound = Some(count);
    }
    Ok(Syms {
        tokens: tokens.unwrap_or(0),
        past: 0,
        source: source.unwrap_or(0),
    })
}
