//! Reading a routing trace (`docs/trace.md`) back from its safetensors file,
//! checking everything the report relies on: the `format` metadata, each
//! tensor's dtype and shape against the others (`T` tokens, `L` blocks, `k`
//! slots, `E` experts), expert numbers in range, and the JSON metadata (block
//! names, ids, token strings). A foreign or malformed file is an error naming
//! what was expected, never a panic. It derives nothing (`stats.rs` does).

use moec_runtime::trace::FORMAT;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;

/// A routing trace, checked: every table has the shape its name promises.
#[derive(Clone, Debug)]
pub struct RoutingTrace {
    /// The spec the trace was taken from (metadata `spec`), if recorded.
    pub spec: Option<String>,
    /// The MoE blocks' names, in layer order (`L` of them).
    pub blocks: Vec<String>,
    /// The text of each token (`T`): the tokenizer's strings, else `#id`, else `t0`, `t1`, ….
    pub tokens: Vec<String>,
    /// `k`: selected experts per token and block.
    pub k: usize,
    /// `E`: experts per block.
    pub experts: usize,
    /// `[T, L, k]`: experts in descending routing weight; -1 where a slot is empty.
    pub routed_experts: Vec<i32>,
    /// `[T, L, k]`: the routing weight of each slot.
    pub routing_weights: Vec<f32>,
    /// `[T, L, k]`: whether capacity dropped the slot.
    pub dropped: Vec<bool>,
    /// `[T, L]`: entropy (nats) of each token's router distribution.
    pub router_entropy: Vec<f32>,
    /// `[L, E]`: tokens each expert took.
    pub expert_counts: Vec<i32>,
    /// `[L]`: the load-balancing loss of each block.
    pub aux_loss: Vec<f32>,
    /// `[L]`: the router z-loss of each block.
    pub z_loss: Vec<f32>,
}

impl RoutingTrace {
    /// `T`, the number of tokens.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// `L`, the number of MoE blocks.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// The slots of token `t` at layer `l`: (expert, weight, dropped), descending weight.
    pub fn slots(&self, t: usize, l: usize) -> impl Iterator<Item = (i32, f32, bool)> + '_ {
        let at = (t * self.layers() + l) * self.k;
        (at..at + self.k).map(|i| {
            (
                self.routed_experts[i],
                self.routing_weights[i],
                self.dropped[i],
            )
        })
    }

    /// Reads and checks a trace from the bytes of a safetensors file.
    pub fn from_bytes(bytes: &[u8]) -> Result<RoutingTrace, String> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors file ({e})"))?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get("format") {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(format!(
                    "not a routing trace: its metadata says format `{f}` (expected `{FORMAT}`, written by `moec trace`)"
                ))
            }
            None => {
                return Err(format!(
                    "not a routing trace: its metadata has no `format` (expected `{FORMAT}`, written by `moec trace`)"
                ))
            }
        }
        let file =
            SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file ({e})"))?;
        let tables = Tables { file: &file };
        let (t, l, k) = match tables.view("routed_experts", Dtype::I32, "[T, L, k]")?[..] {
            [t, l, k] => (t, l, k),
            ref other => {
                return Err(format!(
                    "`routed_experts` has shape {other:?}, expected [T, L, k]"
                ))
            }
        };
        let experts = match tables.view("expert_counts", Dtype::I32, "[L, E]")?[..] {
            [_, e] => e,
            ref other => {
                return Err(format!(
                    "`expert_counts` has shape {other:?}, expected [L, E]"
                ))
            }
        };
        if t == 0 || l == 0 || k == 0 || experts == 0 {
            return Err(format!(
                "an empty trace: {t} tokens, {l} blocks, k = {k}, {experts} experts (each must be at least 1)"
            ));
        }
        let dims = Dims {
            t,
            l,
            k,
            e: experts,
        };
        let routed_experts = tables.i32s("routed_experts", "[T, L, k]", &dims, &[t, l, k])?;
        let expert_counts = tables.i32s("expert_counts", "[L, E]", &dims, &[l, experts])?;
        let dropped = tables.i32s("dropped", "[T, L, k]", &dims, &[t, l, k])?;
        let routing_weights = tables.f32s("routing_weights", "[T, L, k]", &dims, &[t, l, k])?;
        let router_entropy = tables.f32s("router_entropy", "[T, L]", &dims, &[t, l])?;
        let aux_loss = tables.f32s("aux_loss", "[L]", &dims, &[l])?;
        let z_loss = tables.f32s("z_loss", "[L]", &dims, &[l])?;
        if let Some(i) = routed_experts
            .iter()
            .position(|e| *e < -1 || *e >= experts as i32)
        {
            return Err(format!(
                "`routed_experts` holds expert {} at token {}, block {}, but `expert_counts` has {experts} experts",
                routed_experts[i],
                i / (l * k),
                i / k % l
            ));
        }
        let blocks: Vec<String> = json_list(&meta, "blocks", l)?
            .ok_or("its metadata has no `blocks` (the JSON list of the MoE blocks' names)")?;
        let tokens = match json_list::<String>(&meta, "tokens", t)? {
            Some(tokens) => tokens,
            None => match json_list::<i64>(&meta, "ids", t)? {
                Some(ids) => ids.iter().map(|id| format!("#{id}")).collect(),
                None => (0..t).map(|i| format!("t{i}")).collect(),
            },
        };
        Ok(RoutingTrace {
            spec: meta.get("spec").cloned(),
            blocks,
            tokens,
            k,
            experts,
            routed_experts,
            routing_weights,
            dropped: dropped.iter().map(|d| *d != 0).collect(),
            router_entropy,
            expert_counts,
            aux_loss,
            z_loss,
        })
    }
}

/// The sizes `routed_experts` and `expert_counts` fixed, which every table must agree with.
struct Dims {
    t: usize,
    l: usize,
    k: usize,
    e: usize,
}

/// The file's tensors, read by name with their expected dtype and shape.
struct Tables<'a> {
    file: &'a SafeTensors<'a>,
}

impl Tables<'_> {
    /// The shape of `name`, after checking it exists with `dtype`; `want` is its shape in letters.
    fn view(&self, name: &str, dtype: Dtype, want: &str) -> Result<Vec<usize>, String> {
        let kind = format!("{} {want}", dtype.to_string().to_lowercase());
        let view = self
            .file
            .tensor(name)
            .map_err(|_| format!("no `{name}` tensor (expected {kind})"))?;
        if view.dtype() != dtype {
            return Err(format!(
                "`{name}` is {} {:?}, expected {kind}",
                view.dtype().to_string().to_lowercase(),
                view.shape()
            ));
        }
        Ok(view.shape().to_vec())
    }

    /// The little-endian 4-byte values of `name`, after checking its dtype and shape.
    fn values(
        &self,
        name: &str,
        dtype: Dtype,
        want: &str,
        dims: &Dims,
        sizes: &[usize],
    ) -> Result<Vec<[u8; 4]>, String> {
        let shape = self.view(name, dtype, want)?;
        if shape != sizes {
            return Err(format!(
                "`{name}` has shape {shape:?}, expected {want} = {sizes:?} (T = {} tokens, L = {} blocks, k = {} and E = {} experts, from `routed_experts` and `expert_counts`)",
                dims.t, dims.l, dims.k, dims.e
            ));
        }
        let bytes = self.file.tensor(name).map_err(|e| e.to_string())?.data();
        Ok(bytes
            .chunks_exact(4)
            .map(|b| [b[0], b[1], b[2], b[3]])
            .collect())
    }

    fn i32s(
        &self,
        name: &str,
        want: &str,
        dims: &Dims,
        sizes: &[usize],
    ) -> Result<Vec<i32>, String> {
        let values = self.values(name, Dtype::I32, want, dims, sizes)?;
        Ok(values.into_iter().map(i32::from_le_bytes).collect())
    }

    fn f32s(
        &self,
        name: &str,
        want: &str,
        dims: &Dims,
        sizes: &[usize],
    ) -> Result<Vec<f32>, String> {
        let values = self.values(name, Dtype::F32, want, dims, sizes)?;
        Ok(values.into_iter().map(f32::from_le_bytes).collect())
    }
}

/// The metadata entry `key` as a JSON list of `len` values, if present.
fn json_list<V: serde::de::DeserializeOwned>(
    meta: &HashMap<String, String>,
    key: &str,
    len: usize,
) -> Result<Option<Vec<V>>, String> {
    let Some(text) = meta.get(key) else {
        return Ok(None);
    };
    let values: Vec<V> = serde_json::from_str(text).map_err(|e| {
        format!("its metadata `{key}` is not a JSON list of the expected kind ({e})")
    })?;
    if values.len() != len {
        return Err(format!(
            "its metadata `{key}` has length {}, expected {len} (one per {})",
            values.len(),
            if key == "blocks" {
                "MoE block"
            } else {
                "token"
            }
        ));
    }
    Ok(Some(values))
}
