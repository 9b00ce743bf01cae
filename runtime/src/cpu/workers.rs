//! The threads the CPU backend's matmuls and layers run on: the caller's and a
//! persistent pool of parked ones, with the row thresholds that pick a
//! matmul's path (gemm crate, AMX tiles), and the cost model that keeps small
//! work on the caller's thread.

/// Rows from which a bf16 segment takes the AMX tiles (`MatmulIsa::Amx`): one
/// activation tile; fewer rows stay on the exact AVX-512 tiles.
const AMX_ROWS: usize = 16;

/// Work estimated below this many nanoseconds on one thread runs on the
/// caller's thread alone, by default ([`Workers::split_from`]). Waking the pool
/// for a call and waiting for it costs a futex wake and wait, tens of
/// microseconds on a VM: a tiny model (hidden 128) decoded 10× slower on 2
/// threads than on 1 when every matmul woke the pool. Measured on a 4-layer
/// `mixtral_stack` (2 threads, one decode token, Xeon VM): 200 µs was as fast
/// as or faster than 50 µs at hidden 128, 256 and 512, and the same at 1024;
/// never splitting was 1.5× slower at 512 and 2× at 1024.
pub const SPLIT_MIN_NS: usize = 200_000;

/// A rough single-thread cost of a call, for [`Workers::threads_for`]: bytes it
/// streams (weights, rows) and multiply-adds it does.
#[derive(Clone, Copy, Debug, Default)]
pub struct Work {
    pub bytes: usize,
    pub macs: usize,
}

impl Work {
    /// Estimated nanoseconds on one thread: 8 bytes/ns streamed (a core's share
    /// of memory bandwidth) plus 16 multiply-adds/ns (one AVX-512 FMA a cycle,
    /// less than the peak: the estimate errs towards splitting).
    fn nanos(self) -> usize {
        self.bytes / 8 + self.macs / 16
    }
}

impl std::ops::Add for Work {
    type Output = Work;
    fn add(self, o: Work) -> Work {
        Work {
            bytes: self.bytes.saturating_add(o.bytes),
            macs: self.macs.saturating_add(o.macs),
        }
    }
}

/// The threads matmuls run on: the caller's and a pool of parked ones; and the
/// gemm path's threshold.
pub struct Workers {
    /// The threads besides the caller's (`None`: the caller's alone).
    pub(super) pool: Option<rayon::ThreadPool>,
    /// Threads in all, the caller's included.
    pub(super) threads: usize,
    /// Segments of at least this many rows take the gemm path.
    pub gemm_rows: usize,
    /// Segments of at least this many rows with bf16 weights take the AMX path
    /// (`usize::MAX`: never, the default).
    pub amx_rows: usize,
    /// Calls estimated at this many nanoseconds or more on one thread are split
    /// over the threads; smaller ones run on the caller's ([`SPLIT_MIN_NS`];
    /// 0: every call of more than one item is split).
    pub split_from: usize,
}

impl Workers {
    /// `threads` threads in all (at least one; the caller's alone when one, or
    /// when the system refuses to start more).
    pub fn new(threads: usize, gemm_rows: usize) -> Workers {
        let pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads - 1)
                    .build()
            })
            .and_then(Result::ok);
        let threads = if pool.is_some() { threads } else { 1 };
        Workers {
            pool,
            threads,
            gemm_rows,
            amx_rows: usize::MAX,
            split_from: SPLIT_MIN_NS,
        }
    }

    /// Threads worth using for `work`: all of them, or the caller's alone when
    /// the work is too small to repay waking the pool ([`Workers::split_from`]).
    pub fn threads_for(&self, work: Work) -> usize {
        if work.nanos() < self.split_from {
            1
        } else {
            self.threads
        }
    }

    /// Sends bf16 segments of at least [`AMX_ROWS`] rows to the AMX tiles when `amx`.
    pub fn with_amx(mut self, amx: bool) -> Workers {
        self.amx_rows = if amx { AMX_ROWS } else { usize::MAX };
        self
    }

    /// Splits `out` into one run of whole `item`-long items per thread and calls
    /// `f(first item, its run)` for each, the caller's thread taking one (none for
    /// no items); all on the caller's thread when `work` (the whole call's) is
    /// small ([`Workers::threads_for`]).
    pub fn split_mut<T: Send>(
        &self,
        out: &mut [T],
        item: usize,
        work: Work,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        if out.is_empty() || item == 0 {
            return;
        }
        let items = out.len() / item;
        let threads = self.threads_for(work);
        let per = items.div_ceil(threads).max(1);
        match &self.pool {
            Some(pool) if items > 1 && threads > 1 => pool.in_place_scope(|scope| {
                let mut runs = out.chunks_mut(per * item).enumerate();
                let first = runs.next();
                for (i, run) in runs {
                    let f = &f;
                    scope.spawn(move |_| f(i * per, run));
                }
                if let Some((_, run)) = first {
                    f(0, run);
                }
            }),
            _ => f(0, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One decode row through a matmul of `k × n` f32 weights.
    fn decode_row(k: usize, n: usize) -> Work {
        Work {
            bytes: 4 * k * n,
            macs: k * n,
        }
    }

    #[test]
    fn small_calls_stay_on_the_callers_thread() {
        let workers = Workers::new(2, 6);
        // models/tiny (hidden 128): an expert's gate and up, its router.
        assert_eq!(workers.threads_for(decode_row(128, 512)), 1);
        assert_eq!(workers.threads_for(decode_row(128, 8)), 1);
        // Mixtral-shaped (hidden 1024): an expert's gate and up, attention's q.
        assert_eq!(workers.threads_for(decode_row(1024, 7168)), workers.threads);
        assert_eq!(workers.threads_for(decode_row(1024, 1024)), workers.threads);
        // A prefill of 512 rows through the tiny expert: compute, not bytes.
        let prefill = Work {
            bytes: 4 * 128 * 512,
            macs: 512 * 128 * 512,
        };
        assert_eq!(workers.threads_for(prefill), workers.threads);
    }

    #[test]
    fn split_from_zero_splits_every_call() {
        let mut workers = Workers::new(3, 6);
        workers.split_from = 0;
        assert_eq!(workers.threads_for(Work::default()), workers.threads);
        let mut out = vec![0usize; 12];
        let callers = std::sync::Mutex::new(std::collections::HashSet::new());
        workers.split_mut(&mut out, 1, Work::default(), |first, run| {
            callers.lock().unwrap().insert(std::thread::current().id());
            for (i, o) in run.iter_mut().enumerate() {
                *o = first + i;
            }
        });
        assert_eq!(out, (0..12).collect::<Vec<_>>());
        // (The pool may run two runs on one thread; the caller runs one of them.)
        assert!(callers.into_inner().unwrap().len() > 1);
    }
}
