//! Memory a model will need, known before any weight is read: the weights as
//! the engine holds them, the KV caches at the session's position limit, and
//! the activations of the largest call (the memory plan's peak). A model that
//! would not fit in the memory the system has available is refused with both
//! numbers, instead of being killed halfway through loading.

use crate::session::Engine;
use moec_compiler::ir::Graph;
use moec_compiler::passes::memory;
use std::fmt;

/// Bytes a model needs, by purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeeds {
    pub weights: u64,
    pub caches: u64,
    pub activations: u64,
}

impl MemoryNeeds {
    /// What `g` needs on `engine` for calls of at most `tokens` tokens and caches of
    /// `positions` positions. Weights are held as f32 (widened from f16/bf16); the
    /// CPU engine also packs each matmul's weights into its kernel's panels, which
    /// is counted as a second copy.
    pub fn of(g: &Graph, engine: Engine, tokens: usize, positions: usize) -> MemoryNeeds {
        let f32_bytes: u64 = g
            .weights
            .iter()
            .map(|w| w.shape.iter().product::<usize>() as u64 * 4)
            .sum();
        let copies = match engine {
            Engine::Interp => 1,
            Engine::Cpu { .. } => 2,
        };
        let caches = g
            .states
            .iter()
            .map(|s| s.width * positions as u64 * 4)
            .sum();
        let plan = memory::plan(g);
        let activations = plan.peak_bytes(tokens);
        MemoryNeeds {
            weights: f32_bytes * copies,
            caches,
            activations,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.caches + self.activations
    }

    /// An error when the total exceeds `available` bytes.
    pub fn check(&self, available: u64) -> Result<(), String> {
        if self.total() <= available {
            return Ok(());
        }
        Err(format!(
            "the model needs {} ({self}), but only {} of memory is available",
            Bytes(self.total()),
            Bytes(available)
        ))
    }
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
        let units = ["B", "KiB", "MiB", "GiB", "TiB"];
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
    }
}
