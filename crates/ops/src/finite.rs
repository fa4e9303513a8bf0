//! Finding NaN and infinite values on the device, without a readback per tensor: each check adds
//! one dispatch that records, in a slot of a shared flag buffer, how many elements of a tensor are
//! not finite and the first one's index. A training loop reads the flag buffer back with its loss.
//!
//!   finite_check: `x: [n] f32; flags: [2 * slots] u32` = (count, first index) per slot

use crate::{launch_1d, Buffer, DType, Device, OpError, Params, Result};

/// The flag words of one slot before any check: no bad element, first index "none".
pub const CLEAR: [u32; 2] = [0, u32::MAX];

/// Adds the non-finite elements of `x` (f32) to slot `slot` of `flags` (u32, two words per slot:
/// the count and the lowest index, which start at [`CLEAR`]). Recorded like any op.
pub fn finite_check(dev: &Device, x: &Buffer, flags: &Buffer, slot: usize) -> Result<()> {
    let invalid = |message: String| OpError::Invalid {
        op: "finite_check",
        message,
    };
    if x.dtype() != DType::F32 || flags.dtype() != DType::U32 {
        return Err(invalid(format!(
            "expected f32 values and u32 flags, got {} and {}",
            x.dtype(),
            flags.dtype()
        )));
    }
    if flags.len() < 2 * (slot + 1) {
        return Err(invalid(format!(
            "slot {slot} needs {} flag words, the buffer has {}",
            2 * (slot + 1),
            flags.len()
        )));
    }
    let n = u32::try_from(x.len())
        .map_err(|_| invalid(format!("{} elements exceed u32 indices", x.len())))?;
    let k = dev.kernel("finite", "finite_check", &[])?;
    launch_1d(
        dev,
        &k,
        &[x, flags],
        &Params::new().u(n).u(slot as u32),
        x.len(),
    )
}

/// CPU reference: (count of non-finite elements, index of the first, u32::MAX when none).
pub fn cpu(x: &[f32]) -> [u32; 2] {
    let mut out = CLEAR;
    for (i, v) in x.iter().enumerate() {
        if !v.is_finite() {
            out[0] += 1;
            out[1] = out[1].min(i as u32);
        }
    }
    out
}
