//! The activation arena of a CPU run, and the views a step takes of it: one
//! output to write and any number of earlier values to read, all in the same
//! buffer. The memory plan never places a node's output over an operand it
//! reads (`passes::memory`), and [`Frame`] checks that, and every range's
//! bounds, before it hands out a slice; a violation is an internal error.
//!
//! The arena is `f32` words; i32 values (token ids, positions, dispatch orders)
//! live in the same words, viewed through `bytemuck`.

use std::marker::PhantomData;
use std::ops::Range;

/// An arena split for one step: `out` is handed out mutably, every other range
/// can be read while it is.
pub struct Frame<'a> {
    base: *mut f32,
    len: usize,
    out: Range<usize>,
    _arena: PhantomData<&'a mut [f32]>,
}

impl<'a> Frame<'a> {
    /// Splits `arena` into the words `out` (writable) and the rest (readable).
    pub fn split(
        arena: &'a mut [f32],
        out: Range<usize>,
    ) -> Result<(Frame<'a>, &'a mut [f32]), String> {
        if out.start > out.end || out.end > arena.len() {
            return Err(format!(
                "internal error: output words {out:?} outside an arena of {}",
                arena.len()
            ));
        }
        let base = arena.as_mut_ptr();
        // SAFETY: `out` lies inside `arena` (checked above), and `Frame::read`
        // hands out only ranges disjoint from it, so the mutable slice is never
        // aliased while `'a` lasts.
        let written = unsafe { std::slice::from_raw_parts_mut(base.add(out.start), out.len()) };
        let frame = Frame {
            base,
            len: arena.len(),
            out,
            _arena: PhantomData,
        };
        Ok((frame, written))
    }

    /// The words `r`, which must lie in the arena and outside the output.
    pub fn read(&self, r: Range<usize>) -> Result<&'a [f32], String> {
        let disjoint = r.end <= self.out.start || r.start >= self.out.end || r.is_empty();
        if r.start > r.end || r.end > self.len || !disjoint {
            return Err(format!(
                "internal error: operand words {r:?} overlap the output {:?} or leave an arena of {}",
                self.out, self.len
            ));
        }
        // SAFETY: in bounds and disjoint from the only mutable slice (checked above).
        Ok(unsafe { std::slice::from_raw_parts(self.base.add(r.start), r.len()) })
    }
}

/// `words` viewed as the i32 values stored in them.
pub fn as_i32(words: &[f32]) -> &[i32] {
    bytemuck::cast_slice(words)
}

/// `words` viewed as i32 slots to write.
pub fn as_i32_mut(words: &mut [f32]) -> &mut [i32] {
    bytemuck::cast_slice_mut(words)
}
