//! Memory a model will need, known before any weight is read: the weights as
//! the engine holds them, the KV caches at the session's position limit, and
//! the activations of the largest call (the memory plan's peak). A model that
//! would not fit in the memory the system has available is refused with both
//! numbers, instead of being killed halfway through loading.

use crate::session::Engine;
use moec_compiler::ir::{Graph, Op, Syms};
use moec_compiler::passes::{memory, stages};
use std::fmt;

/// Bytes a model needs, by purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeeds {
    pub weights: u64,
    pub caches: u64,
    pub activations: u64,
}

/// The activations of a call of `tokens` tokens: for an encoder-decoder, the larger
/// of its two programs' (a source sequence of `tokens` tokens) and the encoder values
/// the session holds for the decoder.
fn peak_activations(g: &Graph, tokens: usize) -> u64 {
    match stages::split(g) {
        Ok(Some(s)) => {
            let syms = Syms {
                tokens,
                past: 0,
                source: tokens,
            };
            let held = s
                .decoder
                .inputs
                .iter()
                .map(|&n| match &s.decoder.node(n).op {
                    Op::Input { name, ty } if s.carried.contains(name) => {
                        ty.concrete_shape(syms).iter().product::<usize>() as u64 * 4
                    }
                    _ => 0,
                })
                .fold(0u64, u64::saturating_add);
            let encoder = memory::plan(&s.encoder).peak_bytes(tokens);
            let decoder = memory::plan(&s.decoder).peak_bytes(tokens);
            encoder.max(decoder).saturating_add(held)
        }
        _ => memory::plan(g).peak_bytes(tokens),
    }
}

/// The matmul weights stored in another format (`Graph::stored`): their f32
/// bytes, and their bytes in that format (each weight value once, however many
/// matmuls read it).
fn stored_bytes(g: &Graph) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut f32s, mut stored) = (0u64, 0u64);
    for (&n, format) in &g.stored {
        let Some(&w) = g.operands(n).get(1) else {
            continue;
        };
        let t = g.value_type(w);
        let values: u64 = t.concrete_shape(0).iter().map(|&d| d as u64).product();
        if seen.insert(w) {
            f32s = f32s.saturating_add(values.saturating_mul(4));
            stored = stored.saturating_add(format.bytes(values, t.width().unwrap_or(1)));
        }
    }
    (f32s, stored)
}

/// The most f32 bytes loading holds at once beyond what it keeps (`cpu/load.rs`): the
/// largest matmul weight value built from the checkpoint's tensors, twice (the tensors read
/// and the value made of them, or the value and its rounding).
fn load_transient(g: &Graph) -> u64 {
    let fixed = memory::weight_only(g);
    g.g.node_indices()
        .filter_map(|n| {
            let op = &g.node(n).op;
            op.matmul_attrs()?;
            let w = *g.operands(n).get(1)?;
            fixed.contains(&w.node).then(|| {
                let t = g.value_type(w);
                t.concrete_shape(0)
                    .iter()
                    .fold(4u64, |b, &d| b.saturating_mul(d as u64))
            })
        })
        .max()
        .unwrap_or(0)
        .saturating_mul(2)
}

impl MemoryNeeds {
    /// What `g` needs on `engine` for calls of at most `tokens` tokens and caches of
    /// `positions` positions, its weights read from a checkpoint. The interpreter
    /// holds every weight as f32 (widened from f16/bf16); the GPU engine holds them on
    /// the host to upload them, and its caches and activations are device memory. The
    /// CPU engine reads a checkpoint matmul by matmul into each kernel's panels, so it
    /// holds the packed weights (f32, or the format `Graph::stored` names: a bf16
    /// checkpoint's, `--expert-format`, `--weight-format`), the other weights in f32,
    /// and while loading one matmul's f32 values twice over. Sizes that overflow 64
    /// bits saturate, so a hostile size is refused like any other that does not fit.
    pub fn of(g: &Graph, engine: Engine, tokens: usize, positions: usize) -> MemoryNeeds {
        let f32_bytes = g
            .weights
            .iter()
            .map(|w| {
                w.shape
                    .iter()
                    .fold(4u64, |b, &d| b.saturating_mul(d as u64))
            })
            .fold(0u64, u64::saturating_add);
        let weights = match engine {
            Engine::Interp | Engine::Gpu(_) => f32_bytes,
            Engine::Cpu(_) => {
                let (stacked, stored) = stored_bytes(g);
                f32_bytes
                    .saturating_sub(stacked)
                    .saturating_add(stored)
                    .saturating_add(load_transient(g))
            }
        };
        // The GPU backend keeps its caches and activations on the device.
        let on_host = !matches!(engine, Engine::Gpu(_));
        let positions = if on_host { positions } else { 0 };
        let caches = g
            .states
            .iter()
            .map(|s| s.width.saturating_mul(positions as u64).saturating_mul(4))
            .fold(0u64, u64::saturating_add);
        let activations = if on_host {
            peak_activations(g, tokens)
        } else {
            0
        };
        MemoryNeeds {
            weights,
            caches,
            activations,
        }
    }

    /// Everything together.
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.caches)
            .saturating_add(self.activations)
    }

    /// An error when the total exceeds `available` bytes.
    pub fn check(&self, available: u64) -> Result<(), String> {
        self.check_within(MemoryLimit {
            bytes: available,
            source: LimitSource::Available,
        })
    }

    /// An error with both numbers when the total exceeds `limit`.
    pub fn check_within(&self, limit: MemoryLimit) -> Result<(), String> {
        if self.total() <= limit.bytes {
            return Ok(());
        }
        let allowed = match limit.source {
            LimitSource::Available => format!("only {} of memory is available", Bytes(limit.bytes)),
            LimitSource::MaxMemory => format!("--max-memory allows {}", Bytes(limit.bytes)),
        };
        Err(format!(
            "the model needs {} ({self}), but {allowed}",
            Bytes(self.total()),
        ))
    }
}

/// The most memory a run may take, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: LimitSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// What the system has available now.
    Available,
    /// The user's `--max-memory`.
    MaxMemory,
}

impl MemoryLimit {
    /// The smaller of the memory available and `max` (`--max-memory`); None when
    /// neither is known.
    pub fn new(max: Option<u64>) -> Option<MemoryLimit> {
        let available = available_memory().map(|bytes| MemoryLimit {
            bytes,
            source: LimitSource::Available,
        });
        let max = max.map(|bytes| MemoryLimit {
            bytes,
            source: LimitSource::MaxMemory,
        });
        [available, max]
            .into_iter()
            .flatten()
            .min_by_key(|l| l.bytes)
    }
}

/// A byte count as `--max-memory` takes it: `123`, `512MiB`, `8GiB`, `8G`, `1.5TB`
/// (K/M/G/T with or without `i`, `B` optional; all binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i')
    {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use B, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a byte count like 8GiB"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!(
            "`{text}` is not a byte count between 1 B and 16 EiB"
        ));
    }
    Ok(bytes as u64)
}

impl fmt::Display for MemoryNeeds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "weights {}, KV caches {}, activations {}",
            Bytes(self.weights),
            Bytes(self.caches),
            Bytes(self.activations)
        )
    }
}

/// Memory the system can give this process now (`MemAvailable` of /proc/meminfo),
/// when it says.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A byte count in binary units.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == u64::MAX {
            return f.write_str("more than 16 EiB");
        }
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u + 1 < units.len() {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.2} {}", units[u])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_both_numbers() {
        let needs = MemoryNeeds {
            weights: 3 << 30,
            caches: 1 << 20,
            activations: 512,
        };
        let err = needs.check(2 << 30).unwrap_err();
        assert!(err.contains("3.00 GiB"), "{err}");
        assert!(err.contains("only 2.00 GiB"), "{err}");
        assert!(needs.check(4 << 30).is_ok());
        let limit = MemoryLimit {
            bytes: 1 << 30,
            source: LimitSource::MaxMemory,
        };
        let err = needs.check_within(limit).unwrap_err();
        assert!(err.contains("--max-memory allows 1.00 GiB"), "{err}");
    }

    #[test]
    fn byte_counts_parse_with_binary_units() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("1.5 TB"), Ok(3 << 39));
        for bad in ["", "0", "-1G", "8 parsecs", "1e30", "99999999999T"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stored_weights_pack_in_their_formats_bytes() {
        use crate::session::CpuOptions;
        use moec_compiler::ir::WeightFormat;
        use moec_compiler::passes::{run_pipeline, Upto};
        use moec_compiler::storage::Storage;
        let src = "model m {
          input x: f32[tokens, 32]
          expert e(h: [n, 32]) -> [n, 32] { let up = linear(h, 64) let down = linear(relu(up), 32) return down }
          router r(h: [n, 32]) { logits = linear(h, 2) scores = softmax(logits) select = topk(scores, 1) }
          let y = moe(x, experts = 2 * e, router = r)
          output y
        }";
        let mut g = moec_compiler::lower::lower_source(src, &[]).unwrap().graph;
        run_pipeline(&mut g, Upto::All, true).unwrap();
        let (router, experts) = (2 * 32 * 4, 2 * 2 * 64 * 32 * 4);
        let cpu = Engine::Cpu(CpuOptions::default());
        let stored = |storage: Option<Storage>| {
            let mut g = g.clone();
            if let Some(s) = storage {
                s.apply(&mut g);
            }
            MemoryNeeds::of(&g, cpu, 1, 0).weights
        };
        let f32_weights = router + experts;
        assert_eq!(
            MemoryNeeds::of(&g, Engine::Interp, 1, 0).weights,
            f32_weights
        );
        // Loading holds one expert matrix's stacked f32 values twice at most.
        let transient = 2 * (2 * 64 * 32 * 4);
        assert_eq!(stored(None), f32_weights + transient);
        // q4_0 packs each 32 values in 18 bytes: 2 experts × (64 + 2·32) blocks.
        let q4 = stored(Some(Storage::experts(WeightFormat::Q4_0)));
        assert_eq!(q4, router + 2 * (64 + 2 * 32) * 18 + transient);
        // bf16 for every matmul but the router: 2 bytes a value.
        let bf16 = stored(Some(Storage::matmuls(WeightFormat::Bf16)));
        assert_eq!(bf16, router + experts / 2 + transient);
    }

    #[test]
    fn saturated_sizes_say_so() {
        assert_eq!(Bytes(u64::MAX).to_string(), "more than 16 EiB");
        assert_eq!(Bytes(3 << 50).to_string(), "3.00 PiB");
    }
}
