//! moec's middle: lowering `.moe` ASTs to a typed graph IR, checking it, printing
//! it, and the reference interpreter that defines what every graph means.

pub mod backend;
pub mod config;
pub mod diagnostic;
pub mod driver;
pub mod interp;
pub mod ir;
pub mod lower;
pub mod passes;
pub mod print;
pub mod quant;
pub mod stats;
pub mod storage;
pub mod tensor;
pub mod verify;
