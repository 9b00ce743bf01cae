//! The CPU backend's native kernels for the sparse schedule's data movement
//! (gathering each slot's token row, scatter-adding expert rows back to their
//! tokens, the last row of a value) and for elementwise ops on operands of one shape (residual adds,
//! shared-expert gates), written straight into their arena places.
//!
//! They compute what `interp` computes (slots whose order entry is -1 give
//! zero rows and add nothing); the scatter-add sums in f32, in slot order,
//! where the interpreter sums in f64. Broadcasting elementwise ops and every
//! other routing op run the interpreter's code (`cpu/run.rs`).

use moec_compiler::ir::BinaryOp;

/// Row `s / k` of `x` (`d` wide) for each slot `s` of `order`; zeros for -1.
pub fn gather_rows(
    x: &[f32],
    order: &[i32],
    k: usize,
    d: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let tokens = x.len() / d.max(1);
    if out.len() != order.len() * d || x.len() != tokens * d {
        return Err(format!(
            "internal error: gather of {} slots of {d} from {} values into {}",
            order.len(),
            x.len(),
            out.len()
        ));
    }
    for (row, &s) in out.chunks_mut(d.max(1)).zip(order) {
        match s {
            s if s < 0 => row.fill(0.0),
            s if (s as usize / k) < tokens => {
                let t = s as usize / k;
                row.copy_from_slice(&x[t * d..(t + 1) * d]);
            }
            s => {
                return Err(format!(
                    "internal error: slot {s} beyond {tokens} tokens of {k}"
                ))
            }
        }
    }
    Ok(())
}

/// `out[s / k] += x[row]` for the slot `s` each row of `x` holds (none for -1).
pub fn scatter_add(
    x: &[f32],
    order: &[i32],
    k: usize,
    d: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let tokens = order.len() / k.max(1);
    if x.len() != order.len() * d || out.len() != tokens * d {
        return Err(format!(
            "internal error: scatter of {} values in {} slots into {}",
            x.len(),
            order.len(),
            out.len()
        ));
    }
    out.fill(0.0);
    for (row, &s) in x.chunks(d.max(1)).zip(order) {
        if s < 0 {
            continue;
        }
        let t = s as usize / k;
        let dst = out
            .get_mut(t * d..(t + 1) * d)
            .ok_or_else(|| format!("internal error: slot {s} beyond {tokens} tokens"))?;
        for (o, v) in dst.iter_mut().zip(row) {
            *o += v;
        }
    }
    Ok(())
}

/// The last `out.len()`-wide row of `x`; zeros when `x` has none.
pub fn last_row(x: &[f32], out: &mut [f32]) -> Result<(), String> {
    let w = out.len();
    if w == 0 || !x.len().is_multiple_of(w) {
        return Err(format!(
            "internal error: the last row of {} values in rows of {w}",
            x.len()
        ));
    }
    match x.len() {
        0 => out.fill(0.0),
        n => out.copy_from_slice(&x[n - w..]),
    }
    Ok(())
}

/// `x op y` elementwise, both of `out`'s length.
pub fn binary(op: BinaryOp, x: &[f32], y: &[f32], out: &mut [f32]) -> Result<(), String> {
    if x.len() != out.len() || y.len() != out.len() {
        return Err(format!(
            "internal error: {op:?} of {} and {} values into {}",
            x.len(),
            y.len(),
            out.len()
        ));
    }
    for ((o, a), b) in out.iter_mut().zip(x).zip(y) {
        *o = op.apply(*a, *b);
    }
    Ok(())
}
