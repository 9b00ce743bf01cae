//! `moec bench --bandwidth`: the machine's memory read bandwidth, for putting the
//! weight GB/s of a run in proportion. Every core streams through its own part of
//! a buffer far larger than the caches (summing it as u64s, which the compiler
//! vectorizes); each thread first writes its part, so pages are really mapped (a
//! never-written zeroed allocation would read the shared zero page) and, on NUMA
//! machines, local to it. The figure is the best of several passes after one
//! warm-up pass (as STREAM reports it: what the machine can deliver, which the
//! slower passes of a busy machine understate).

use std::hint::black_box;
use std::time::Instant;

/// The buffer: 1 GiB, many times any last-level cache.
pub const BUFFER_BYTES: usize = 1 << 30;
const PASSES: usize = 10;

/// A measured read bandwidth.
pub struct Bandwidth {
    /// Bytes read per second, in GB/s (1e9 bytes).
    pub read_gbps: f64,
    pub threads: usize,
    pub buffer_bytes: usize,
}

/// Streams `BUFFER_BYTES` with one thread per core.
pub fn measure() -> Bandwidth {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let words = BUFFER_BYTES / std::mem::size_of::<u64>();
    let mut buffer = vec![0u64; words];
    let chunk = words.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, part) in buffer.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                let base = (i * chunk) as u64;
                for (j, w) in part.iter_mut().enumerate() {
                    *w = base + j as u64;
                }
            });
        }
    });
    let mut times = Vec::with_capacity(PASSES);
    for pass in 0..=PASSES {
        let start = Instant::now();
        let sum = std::thread::scope(|s| {
            let handles: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        black_box(part)
                            .iter()
                            .fold(0u64, |acc, &w| acc.wrapping_add(w))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        let secs = start.elapsed().as_secs_f64();
        black_box(sum);
        if pass > 0 {
            times.push(secs);
        }
    }
    let secs = times.into_iter().fold(f64::INFINITY, f64::min);
    Bandwidth {
        read_gbps: (words * std::mem::size_of::<u64>()) as f64 / secs / 1e9,
        threads,
        buffer_bytes: words * std::mem::size_of::<u64>(),
    }
}
