//! moec's runtime: everything that touches tensors on disk, and (later) the backends that run a
//! compiled graph.
//!
//! - `weights`: open a checkpoint (one safetensors file or a sharded one) and `bind` it to a
//!   graph's `WeightDecl`s as f32 tensors, with every problem reported at once.
//! - `random`: deterministic stand-in weights for running a spec without a checkpoint.
//! - `io`: read and write run inputs and outputs as safetensors files.
//! - `budget`: the bytes a model will need (weights, KV caches, activations), checked against
//!   the memory available before loading.
//! - `session`: a graph with prepared weights on an engine (`Model`), run call after call
//!   with its KV caches (`Session`).
//! - `aot`: what an executable built by `moec build` carries, and its entry point.
//! - `generate`: text generation around any model with a KV cache (`generate::Decoder`): the
//!   loop, sampling, end-of-sequence ids, and `tokenizer.json` text in and out.
//! - `ranks`: whether this process is one rank of an `mpirun` launch, and the fingerprint the
//!   ranks compare; `mpi` (feature `mpi`): the MPI communicator a partitioned graph's
//!   collectives exchange through.
//!
//! Sharing: a `GpuModel` is `Sync` and runs calls through `&self`, so one model serves many
//! threads (`tests/concurrency.rs`: 8 threads, results equal to serial calls). A `CpuModel`
//! (it owns its JIT module) and a `Session` (one sequence's KV caches) are not, so sharing one
//! between threads does not compile:
//! ```compile_fail
//! fn sync<T: Sync>(_: &T) {}
//! fn share(m: &moec_runtime::cpu::CpuModel) {
//!     sync(m)
//! }
//! ```
//! ```compile_fail
//! fn send<T: Send>(_: T) {}
//! fn share(s: moec_runtime::session::Session) {
//!     send(s)
//! }
//! ```
//!
//! The runtime depends on the compiler for `Tensor` and `WeightDecl`, never the other way.
//! Errors are plain data implementing `std::error::Error`; rendering them is the CLI's job.

pub mod aot;
pub mod budget;
pub mod cpu;
mod decode;
mod file;
pub mod generate;
pub mod gpu;
pub mod io;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod random;
pub mod ranks;
mod rng;
pub mod session;
pub mod trace;
pub mod weights;

pub use io::{read_tensors, write_tensors, IoError, IoErrorKind};
pub use random::random_weights;
pub use weights::{bind, unused, WeightError, WeightErrorKind, WeightErrors, WeightSource};
