//! The threads the CPU backend's matmuls and layers run on: the caller's and a
//! persistent pool of parked ones, with the row thresholds that pick a
//! matmul's path (gemm crate, AMX tiles).

/// Rows from which a bf16 segment takes the AMX tiles (`MatmulIsa::Amx`): one
/// activation tile; fewer rows stay on the exact AVX-512 tiles.
const AMX_ROWS: usize = 16;

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
        }
    }

    /// Sends bf16 segments of at least [`AMX_ROWS`] rows to the AMX tiles when `amx`.
    pub fn with_amx(mut self, amx: bool) -> Workers {
        self.amx_rows = if amx { AMX_ROWS } else { usize::MAX };
        self
    }

    /// Splits `out` into one run of whole `item`-long items per thread and calls
    /// `f(first item, its run)` for each, the caller's thread taking one (none for
    /// no items).
    pub fn split_mut<T: Send>(
        &self,
        out: &mut [T],
        item: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        if out.is_empty() || item == 0 {
            return;
        }
        let items = out.len() / item;
        let per = items.div_ceil(self.threads).max(1);
        match &self.pool {
            Some(pool) if items > 1 => pool.in_place_scope(|scope| {
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
