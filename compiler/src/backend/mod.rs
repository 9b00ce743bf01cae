//! Code generation for the scheduled graph. Each backend lowers ops to kernels and
//! stops there: running them is the runtime's job, so this crate stays free of JITs,
//! devices and threads.
//!
//! - `clif`: Cranelift IR for the CPU (JIT'd by `moec-runtime`'s `cpu` module).
//! - `wgsl`: WebGPU compute shaders and their plan (run by `moec-runtime`'s `gpu` module).

pub mod clif;
pub mod wgsl;
