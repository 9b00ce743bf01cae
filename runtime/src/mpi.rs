//! The MPI communicator (feature `mpi`): rsmpi over the system's MPI, implementing the
//! interpreter's `Comm`, so a partitioned graph's collectives (`passes::partition`) run
//! across processes on the CPU backend or the interpreter alike.
//!
//! One exchange is two MPI collectives: an `MPI_Alltoall` of the message lengths, then an
//! `MPI_Alltoallv` of the values. MPI's default error handler (errors are fatal) stays in
//! place, so a peer that dies mid-exchange ends the job; a rank that fails on its own
//! (weights it cannot load, a graph other than its peers') prints its message and calls
//! `MPI_Abort` ([`World::abort`]), which ends every rank.
//!
//! Threading: MPI is initialized `Serialized`, and only the thread running a model's steps
//! calls it, one collective at a time (the worker pool runs matmuls only).

use moec_compiler::interp::Comm;
use moec_compiler::tensor::{Tensor, TensorData};
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::{Count, Threading};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

/// MPI, initialized for the life of this value (finalized when it drops).
pub struct World {
    _universe: Universe,
    comm: Arc<MpiComm>,
}

/// `MPI_COMM_WORLD` as a `Comm`.
pub struct MpiComm {
    world: SimpleCommunicator,
    rank: usize,
    ranks: usize,
}

// SAFETY: the communicator is a handle MPI itself guards; MPI is initialized `Serialized`
// and calls through it are made one at a time, by the thread running the model (see the
// module doc), so sharing the handle between threads never makes concurrent MPI calls.
unsafe impl Send for MpiComm {}
// SAFETY: as for `Send`.
unsafe impl Sync for MpiComm {}

impl World {
    /// Initializes MPI; an error when it was initialized before or cannot serialize calls
    /// from threads.
    pub fn init() -> Result<World, String> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or("MPI was initialized twice")?;
        if !matches!(threading, Threading::Serialized | Threading::Multiple) {
            return Err(format!(
                "this MPI provides {threading:?} threading; moec needs Serialized"
            ));
        }
        let world = universe.world();
        let comm = MpiComm {
            rank: world.rank() as usize,
            ranks: world.size() as usize,
            world,
        };
        Ok(World {
            _universe: universe,
            comm: Arc::new(comm),
        })
    }

    pub fn rank(&self) -> usize {
        self.comm.rank
    }

    pub fn ranks(&self) -> usize {
        self.comm.ranks
    }

    /// The communicator, for a model's collectives.
    pub fn comm(&self) -> Arc<dyn Comm> {
        self.comm.clone()
    }

    /// An error naming the ranks whose `fingerprint` differs from rank 0's.
    pub fn agree(&self, fingerprint: u64, what: &str) -> Result<(), String> {
        let mut all = vec![0u64; self.ranks()];
        self.comm.world.all_gather_into(&fingerprint, &mut all[..]);
        let differ: Vec<String> = (1..self.ranks())
            .filter(|r| all[*r] != all[0])
            .map(|r| r.to_string())
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        Err(format!(
            "rank(s) {} run a different {what} than rank 0: every rank must get the same spec, weights and options",
            differ.join(", ")
        ))
    }

    /// Rank 0's `tensors` on every rank (the other ranks pass None): only rank 0 reads a
    /// run's inputs.
    pub fn broadcast(
        &self,
        tensors: Option<BTreeMap<String, Tensor>>,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        let root = self.comm.world.process_at_rank(0);
        let mut bytes = tensors.as_ref().map(encode).unwrap_or_default();
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
        match tensors {
            Some(t) => Ok(t),
            None => decode(&bytes),
        }
    }

    /// Prints `message` as this rank's and ends every rank (`MPI_Abort`).
    pub fn abort(&self, message: &str) -> ! {
        // One write, so that the ranks' lines do not interleave.
        let line = format!(
            "rank {} of {}: {}\n",
            self.rank(),
            self.ranks(),
            message.trim_end()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        self.comm.world.abort(1)
    }
}

impl Comm for MpiComm {
    fn ranks(&self) -> usize {
        self.ranks
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn exchange(&self, send: Vec<TensorData>) -> Result<Vec<TensorData>, String> {
        if send.len() != self.ranks {
            return Err(format!(
                "an exchange of {} messages among {} ranks",
                send.len(),
                self.ranks
            ));
        }
        let f32s = matches!(send[0], TensorData::F32(_));
        if send.iter().any(|m| matches!(m, TensorData::F32(_)) != f32s) {
            return Err("an exchange mixes f32 and i32 messages".into());
        }
        let lengths = send
            .iter()
            .map(|m| Count::try_from(len(m)).map_err(|_| "a message over 2^31 values".to_string()))
            .collect::<Result<Vec<Count>, String>>()?;
        let mut received: Vec<Count> = vec![0; self.ranks];
        self.world.all_to_all_into(&lengths[..], &mut received[..]);
        if received.iter().any(|n| *n < 0) {
            return Err("a peer sent a negative message length".into());
        }
        Ok(match &send[0] {
            TensorData::F32(_) => {
                let flat: Vec<f32> = send.iter().flat_map(as_f32).collect();
                split(self.all_to_all_v(&flat, lengths, &received), &received)
                    .into_iter()
                    .map(TensorData::F32)
                    .collect()
            }
            TensorData::I32(_) => {
                let flat: Vec<i32> = send.iter().flat_map(as_i32).collect();
                split(self.all_to_all_v(&flat, lengths, &received), &received)
                    .into_iter()
                    .map(TensorData::I32)
                    .collect()
            }
        })
    }
}

impl MpiComm {
    fn all_to_all_v<T: Equivalence + Default + Clone>(
        &self,
        flat: &[T],
        lengths: Vec<Count>,
        received: &[Count],
    ) -> Vec<T> {
        let total: usize = received.iter().map(|n| *n as usize).sum();
        let mut out = vec![T::default(); total];
        let send_displs = displacements(&lengths);
        let recv_displs = displacements(received);
        let send = Partition::new(flat, lengths, send_displs);
        let mut recv = PartitionMut::new(&mut out[..], received.to_vec(), recv_displs);
        self.world.all_to_all_varcount_into(&send, &mut recv);
        out
    }
}

/// Tensors as bytes: a JSON header (name, shape, whether f32) and its length, then the
/// values, little-endian.
fn encode(tensors: &BTreeMap<String, Tensor>) -> Vec<u8> {
    let header: Vec<(&String, &Vec<usize>, bool)> = tensors
        .iter()
        .map(|(n, t)| (n, &t.shape, matches!(t.data, TensorData::F32(_))))
        .collect();
    let header = serde_json::to_vec(&header).expect("names and shapes serialize");
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    for t in tensors.values() {
        match &t.data {
            TensorData::F32(v) => bytes.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::I32(v) => bytes.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        }
    }
    bytes
}

fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, String> {
    let bad = || "rank 0 broadcast malformed inputs".to_string();
    let len = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let end = 8usize.checked_add(len as usize).ok_or_else(bad)?;
    let header: Vec<(String, Vec<usize>, bool)> =
        serde_json::from_slice(bytes.get(8..end).ok_or_else(bad)?).map_err(|_| bad())?;
    let mut words = bytes[end..]
        .chunks_exact(4)
        .map(|w| [w[0], w[1], w[2], w[3]]);
    let mut tensors = BTreeMap::new();
    for (name, shape, f32s) in header {
        let n: usize = shape.iter().product();
        let values: Vec<[u8; 4]> = words.by_ref().take(n).collect();
        if values.len() != n {
            return Err(bad());
        }
        let t = if f32s {
            Tensor::f32(shape, values.into_iter().map(f32::from_le_bytes).collect())
        } else {
            Tensor::i32(shape, values.into_iter().map(i32::from_le_bytes).collect())
        };
        tensors.insert(name, t);
    }
    Ok(tensors)
}

fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |at, n| {
            let d = *at;
            *at += n;
            Some(d)
        })
        .collect()
}

/// `flat` cut into the messages of `lengths`.
fn split<T: Clone>(flat: Vec<T>, lengths: &[Count]) -> Vec<Vec<T>> {
    let mut at = 0;
    lengths
        .iter()
        .map(|n| {
            let part = flat[at..at + *n as usize].to_vec();
            at += *n as usize;
            part
        })
        .collect()
}

fn len(m: &TensorData) -> usize {
    match m {
        TensorData::F32(v) => v.len(),
        TensorData::I32(v) => v.len(),
    }
}

/// A message's f32 values; empty for an i32 message (never asked: `exchange` checks that
/// the messages share a dtype).
fn as_f32(m: &TensorData) -> Vec<f32> {
    match m {
        TensorData::F32(v) => v.clone(),
        TensorData::I32(_) => Vec::new(),
    }
}

fn as_i32(m: &TensorData) -> Vec<i32> {
    match m {
        TensorData::I32(v) => v.clone(),
        TensorData::F32(_) => Vec::new(),
    }
}
