//! moec's middle: lowering `.moe` ASTs to a typed graph IR, checking it, printing
//! it, and the reference interpreter that defines what every graph means.

pub mod ir;
pub mod tensor;
pub mod diagnostic;
pub mod lower;
pub mod print;
pub mod verify;
pub mod interp;
pub mod passes;
