//! Boolean attention masks (i32, nonzero = not allowed, as PyTorch's `True`) turned into the
//! additive form that is added to attention scores before the softmax, on the device, so a
//! recorded step that is fed new masks sees them.

use crate::{expect_dtype, launch_1d, Array, DType, Device, Params, Result};

/// What a masked position adds to its score: finite, so a fully masked row stays finite and two
/// masks add without overflow, yet exp(MASKED - max) is exactly 0 in f32.
pub const MASKED: f32 = -1e30;

/// out = `value` where `mask` is nonzero, else 0 (f32, the mask's shape).
pub fn additive_mask(dev: &Device, mask: &Array, value: f32) -> Result<Array> {
    expect_dtype("additive_mask", mask, DType::I32)?;
    let out = Array::empty(dev, &mask.shape)?;
    let n = mask.numel();
    if n > 0 {
        let k = dev.kernel("mask", "additive_mask", &[])?;
        let p = Params::new().u(n as u32).f(value);
        launch_1d(dev, &k, &[&mask.buf, &out.buf], &p, n)?;
    }
    Ok(out)
}

/// CPU reference.
pub fn cpu_additive_mask(mask: &[i32], value: f32) -> Vec<f64> {
    mask.iter()
        .map(|&m| if m != 0 { value as f64 } else { 0.0 })
        .collect()
}
