//! Dropout with a counter-based generator (Philox4x32-10): the mask is a pure function of
//! (seed, offset, element index), so replays and the backward pass reproduce it exactly.

use crate::{expect_dtype, launch_1d, Array, Buffer, DType, Device, OpError, Params, Result};

/// The generator state on the device: [seed_lo, seed_hi, offset] (u32). The host advances the
/// offset between steps with [`DropoutRng::advance`]; kernels read it when they run.
pub struct DropoutRng {
    buf: Buffer,
    seed: u64,
    offset: u32,
}

impl DropoutRng {
    /// A generator at offset 0.
    pub fn new(dev: &Device, seed: u64) -> Result<DropoutRng> {
        let buf = dev.upload(&[seed as u32, (seed >> 32) as u32, 0u32])?;
        Ok(DropoutRng {
            buf,
            seed,
            offset: 0,
        })
    }
    /// The current offset (one per step).
    pub fn offset(&self) -> u32 {
        self.offset
    }
    /// Moves to the next offset: the next step draws a fresh mask.
    pub fn advance(&mut self, dev: &Device) -> Result<()> {
        self.set_offset(dev, self.offset.wrapping_add(1))
    }
    /// Jumps to an offset (exact resume).
    pub fn set_offset(&mut self, dev: &Device, offset: u32) -> Result<()> {
        self.offset = offset;
        dev.write(
            &self.buf,
            &[self.seed as u32, (self.seed >> 32) as u32, offset],
        )?;
        Ok(())
    }
    /// The device buffer the kernel reads.
    pub fn buffer(&self) -> &Buffer {
        &self.buf
    }
}

fn threshold(op: &'static str, p: f32) -> Result<(u32, f32)> {
    if !(0.0..1.0).contains(&p) {
        return Err(OpError::Invalid {
            op,
            message: format!("drop probability {p} outside [0, 1)"),
        });
    }
    Ok((
        (p as f64 * 4294967296.0).min(u32::MAX as f64) as u32,
        1.0 / (1.0 - p),
    ))
}

/// Zeroes each element with probability `p` and scales the rest by 1/(1-p). The backward pass is
/// the same call on dy with the same generator state.
pub fn dropout(dev: &Device, x: &Array, p: f32, rng: &Buffer) -> Result<Array> {
    expect_dtype("dropout", x, DType::F32)?;
    let (t, scale) = threshold("dropout", p)?;
    let out = Array::empty(dev, &x.shape)?;
    let k = dev.kernel("dropout", "dropout", &[])?;
    launch_1d(
        dev,
        &k,
        &[&x.buf, rng, &out.buf],
        &Params::new().u(x.numel() as u32).u(t).f(scale),
        x.numel(),
    )?;
    Ok(out)
}

/// CPU reference: Philox4x32-10 and the keep mask.
pub mod cpu {
    /// Philox4x32-10 of a counter under a key.
    pub fn philox(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
        for _ in 0..10 {
            let m0 = 0xD251_1F53u64 * c[0] as u64;
            let m1 = 0xCD9E_8D57u64 * c[2] as u64;
            c = [
                ((m1 >> 32) as u32) ^ c[1] ^ k[0],
                m1 as u32,
                ((m0 >> 32) as u32) ^ c[3] ^ k[1],
                m0 as u32,
            ];
            k = [
                k[0].wrapping_add(0x9E37_79B9),
                k[1].wrapping_add(0xBB67_AE85),
            ];
        }
        c
    }

    /// Whether element `i` is kept at drop probability `p`.
    pub fn keep(seed: u64, offset: u32, i: u32, p: f32) -> bool {
        let t = (p as f64 * 4294967296.0).min(u32::MAX as f64) as u32;
        philox([i, offset, 0, 0], [seed as u32, (seed >> 32) as u32])[0] >= t
    }
}

/// Dropout with probability `p` as an op, its mask drawn from the generator state in `rng` (see
/// [`DropoutRng`]); the backward pass applies the same mask.
#[derive(Clone, Debug)]
pub struct Dropout {
    /// Drop probability.
    pub p: f32,
    /// The generator state buffer.
    pub rng: Buffer,
}

impl crate::op::Op for Dropout {
    fn name(&self) -> &str {
        "dropout"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(dropout(dev, inputs[0], self.p, &self.rng)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        _ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        Ok(vec![Some(dropout(dev, dy, self.p, &self.rng)?)])
    }
}
