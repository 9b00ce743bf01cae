//! Activations on f32x4 in CLIF, as polynomial approximations (no calls out).
//!
//! - `exp`: Cephes' `expf`: `2^n · (1 + r + r²·P(r))` with `n = round(x·log2 e)`,
//!   `r = x − n·ln 2` (ln 2 split in two), the input clamped to [-87.3, 88] so
//!   `2^n` is a normal float built from its exponent bits. About 1 ulp.
//! - sigmoid `1/(1+e^-x)`, silu `x·sigmoid(x)`, the tanh gelu
//!   `x·sigmoid(2c(x + 0.044715x³))` (the same function as `0.5x(1+tanh(..))`).
//! - exact gelu `0.5x(1+erf(x/√2))` with Abramowitz–Stegun 7.1.26 for erf
//!   (absolute error ≤ 1.5e-7); for x < 0, `1+erf` is computed as the small
//!   `q·e^{-z²}` directly, so there is no cancellation.

use crate::ir::UnaryOp;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

/// A splatted f32x4 constant.
pub fn splat(b: &mut FunctionBuilder, v: f32) -> Value {
    let s = b.ins().f32const(v);
    b.ins().splat(types::F32X4, s)
}

/// `a·x + c` by Horner's rule over `coeffs` (highest degree first).
fn horner(b: &mut FunctionBuilder, x: Value, coeffs: &[f32]) -> Value {
    let mut acc = splat(b, coeffs[0]);
    for &c in &coeffs[1..] {
        let c = splat(b, c);
        let m = b.ins().fmul(acc, x);
        acc = b.ins().fadd(m, c);
    }
    acc
}

/// `e^x` lane-wise.
pub fn exp(b: &mut FunctionBuilder, x: Value) -> Value {
    let (hi, lo) = (splat(b, 88.0), splat(b, -87.3));
    let x = b.ins().fmin(x, hi);
    let x = b.ins().fmax(x, lo);
    let log2e = splat(b, std::f32::consts::LOG2_E);
    let t = b.ins().fmul(x, log2e);
    let n = b.ins().nearest(t);
    let (c1, c2) = (splat(b, 0.693_359_4), splat(b, -2.121_944_4e-4));
    let m1 = b.ins().fmul(n, c1);
    let r = b.ins().fsub(x, m1);
    let m2 = b.ins().fmul(n, c2);
    let r = b.ins().fsub(r, m2);
    let p = horner(
        b,
        r,
        &[
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ],
    );
    let r2 = b.ins().fmul(r, r);
    let p = b.ins().fmul(p, r2);
    let p = b.ins().fadd(p, r);
    let one = splat(b, 1.0);
    let p = b.ins().fadd(p, one);
    let ni = b.ins().fcvt_to_sint_sat(types::I32X4, n);
    let bias = b.ins().iconst(types::I32, 127);
    let bias = b.ins().splat(types::I32X4, bias);
    let ni = b.ins().iadd(ni, bias);
    let bits = b.ins().ishl_imm_u(ni, 23);
    let pow2 = b.ins().bitcast(types::F32X4, MemFlagsData::new(), bits);
    b.ins().fmul(p, pow2)
}

/// `1 / (1 + e^-x)`.
fn sigmoid(b: &mut FunctionBuilder, x: Value) -> Value {
    let neg = b.ins().fneg(x);
    let e = exp(b, neg);
    let one = splat(b, 1.0);
    let d = b.ins().fadd(e, one);
    b.ins().fdiv(one, d)
}

/// `0.5·x·(1 + erf(x/√2))`.
fn gelu(b: &mut FunctionBuilder, x: Value) -> Value {
    let s = splat(b, std::f32::consts::FRAC_1_SQRT_2);
    let z = b.ins().fmul(x, s);
    let z = b.ins().fabs(z);
    let (p, one) = (splat(b, 0.327_591_1), splat(b, 1.0));
    let d = b.ins().fmul(z, p);
    let d = b.ins().fadd(d, one);
    let t = b.ins().fdiv(one, d);
    let poly = horner(
        b,
        t,
        &[
            1.061_405_4,
            -1.453_152,
            1.421_413_8,
            -0.284_496_74,
            0.254_829_6,
            0.0,
        ],
    );
    let z2 = b.ins().fmul(z, z);
    let nz2 = b.ins().fneg(z2);
    let e = exp(b, nz2);
    // q = 1 - erf(|x|/√2); 1 + erf(x/√2) is q for x < 0 and 2 - q otherwise.
    let q = b.ins().fmul(poly, e);
    let two = splat(b, 2.0);
    let pos = b.ins().fsub(two, q);
    let zero = splat(b, 0.0);
    let neg = b.ins().fcmp(FloatCC::LessThan, x, zero);
    let mask = b.ins().bitcast(types::F32X4, MemFlagsData::new(), neg);
    let sum = b.ins().bitselect(mask, q, pos);
    let half = splat(b, 0.5);
    let hx = b.ins().fmul(x, half);
    b.ins().fmul(hx, sum)
}

/// `x·sigmoid(2·√(2/π)·(x + 0.044715·x³))`.
fn gelu_tanh(b: &mut FunctionBuilder, x: Value) -> Value {
    let x2 = b.ins().fmul(x, x);
    let c3 = splat(b, 0.044_715);
    let one = splat(b, 1.0);
    let inner = b.ins().fmul(x2, c3);
    let inner = b.ins().fadd(inner, one);
    let inner = b.ins().fmul(inner, x);
    let c = splat(b, 2.0 * (2.0 / std::f32::consts::PI).sqrt());
    let inner = b.ins().fmul(inner, c);
    let s = sigmoid(b, inner);
    b.ins().fmul(x, s)
}

/// `act(x)` lane-wise.
pub fn activation(b: &mut FunctionBuilder, act: UnaryOp, x: Value) -> Value {
    match act {
        UnaryOp::Relu => {
            let zero = splat(b, 0.0);
            b.ins().fmax(x, zero)
        }
        UnaryOp::Sigmoid => sigmoid(b, x),
        UnaryOp::Silu => {
            let s = sigmoid(b, x);
            b.ins().fmul(x, s)
        }
        UnaryOp::Gelu => gelu(b, x),
        UnaryOp::GeluTanh => gelu_tanh(b, x),
    }
}
