//! `mpirun -np N moec generate …`: one rank per process, each holding its share of every
//! MoE layer's experts (`passes::partition`). This module starts MPI when the launcher
//! asked for several ranks (and only then: a plain run never initializes it), checks that
//! every rank runs the same model and settings, partitions the graph for this rank, and
//! turns any rank's failure into the end of every rank (a message, then `MPI_Abort`).
//!
//! Built without the `mpi` feature, a multi-rank launch is an error, not N copies of one
//! run.

use moec_compiler::interp::Comm;
use moec_compiler::ir::Graph;
use moec_compiler::passes::partition::{self, Placement};
use moec_compiler::print;
#[cfg(not(feature = "mpi"))]
use moec_compiler::tensor::Tensor;
use moec_runtime::ranks::{fingerprint, requested};
#[cfg(not(feature = "mpi"))]
use std::collections::BTreeMap;
use std::sync::Arc;

#[cfg(feature = "mpi")]
pub use moec_runtime::mpi::World;

/// Without the `mpi` feature there is no world: a value of this type cannot exist.
#[cfg(not(feature = "mpi"))]
pub enum World {}

#[cfg(not(feature = "mpi"))]
impl World {
    fn rank(&self) -> usize {
        match *self {}
    }
    fn ranks(&self) -> usize {
        match *self {}
    }
    fn comm(&self) -> Arc<dyn Comm> {
        match *self {}
    }
    fn agree(&self, _: u64, _: &str) -> Result<(), String> {
        match *self {}
    }
    pub fn broadcast(
        &self,
        _: Option<BTreeMap<String, Tensor>>,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        match *self {}
    }
    fn abort(&self, _: &str) -> ! {
        match *self {}
    }
}

/// MPI, when the launcher started several ranks.
pub fn start() -> Result<Option<World>, String> {
    let Some(ranks) = requested() else {
        return Ok(None);
    };
    #[cfg(feature = "mpi")]
    {
        let _ = ranks;
        World::init().map(Some)
    }
    #[cfg(not(feature = "mpi"))]
    Err(format!(
        "launched as {ranks} ranks, but this moec was built without MPI (cargo build --features mpi)"
    ))
}

/// Whether this process writes results: rank 0, or the only process.
pub fn writes_output(world: Option<&World>) -> bool {
    world.is_none_or(|w| w.rank() == 0)
}

/// `result`, except that under MPI a failure is printed as this rank's and ends every rank.
pub fn finish(world: Option<&World>, result: Result<(), String>) -> Result<(), String> {
    match (world, result) {
        (Some(w), Err(e)) => w.abort(&e),
        (_, result) => result,
    }
}

/// The expert placement of `--expert-ranks`, which only a multi-rank launch uses.
pub fn placement(world: Option<&World>, map: Option<&str>) -> Result<Placement, String> {
    match (world, map) {
        (_, None) => Ok(Placement::Contiguous),
        (Some(_), Some(map)) => Placement::parse(map),
        (None, Some(_)) => Err(
            "--expert-ranks places experts on the ranks of an mpirun launch (mpirun -np N moec …)"
                .into(),
        ),
    }
}

/// What a rank needs to open its share of a model.
pub struct Ranked<'a> {
    pub world: &'a World,
    pub placement: Placement,
    /// The run's settings every rank must share (prompt, sampling, limits), as text.
    pub settings: String,
}

impl Ranked<'_> {
    /// Checks that every rank compiled the same graph with the same placement and settings,
    /// then rewrites `g` into this rank's partition; returns the communicator its
    /// collectives use.
    pub fn partition(&self, g: &mut Graph) -> Result<Arc<dyn Comm>, String> {
        if g.decoder_start.is_some() {
            return Err(
                "expert parallelism does not partition encoder-decoder models yet: run it as one process"
                    .into(),
            );
        }
        let w = self.world;
        let ranks = w.ranks().to_string();
        let placement = format!("{:?}", self.placement);
        let print = print::text(g);
        w.agree(
            fingerprint(&[&print, &ranks, &placement, &self.settings]),
            "model, placement or settings",
        )?;
        partition::run(g, w.ranks(), w.rank(), &self.placement)?;
        Ok(w.comm())
    }
}
