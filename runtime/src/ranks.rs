//! Running as one rank of several processes (`mpirun -np N moec …`): whether this process
//! was launched so, and what the ranks compare at start-up to make sure they run the same
//! thing. The MPI communicator itself is `mpi.rs` (feature `mpi`); without the feature a
//! multi-rank launch is an error rather than N independent runs.
//!
//! Launch detection reads the launcher's environment (Open MPI's `OMPI_COMM_WORLD_SIZE`,
//! or the PMI `PMI_SIZE` of MPICH and Slurm), so a plain run never initializes MPI.

/// The rank count the launcher asked for, when it is more than one.
pub fn requested() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .filter(|n| *n > 1)
}

/// A 64-bit FNV-1a hash of what every rank must agree on (the optimized graph's text, the
/// rank count and placement, the run's settings), compared across ranks at start-up.
pub fn fingerprint(parts: &[&str]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.bytes().chain([0xff]))
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_parts_apart() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["x"]), fingerprint(&["x"]));
    }
}
