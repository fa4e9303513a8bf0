//! f16 on the device: inference with f16 weights (half the weight memory and file size, f32
//! activations and f32 accumulation), and casts between f32 and f16 arrays. Needs the adapter's
//! `SHADER_F16` ([`supported`]); callers fall back to f32 without it.

use crate::geometry::LayerGeom;
use crate::reduce::Reduce;
use crate::{Array, Buffer, DType, Device, OpError, Params, Result};

/// Whether this adapter can run [`layer_f16w`].
pub fn supported(dev: &Device) -> bool {
    dev.capabilities().f16
}

/// f32 values rounded to f16 (nearest even), as stored in files and on the device.
pub fn to_f16(v: &[f32]) -> Vec<half::f16> {
    v.iter().map(|x| half::f16::from_f32(*x)).collect()
}

/// `x` as an array of `to` (F32 or F16; round to nearest even into f16). Casting to the array's own
/// type returns it unchanged (no copy).
pub fn cast(dev: &Device, x: &Array, to: DType) -> Result<Array> {
    let from = x.dtype();
    if from == to {
        return Ok(x.clone());
    }
    let entry = match (from, to) {
        (DType::F32, DType::F16) => "to_f16",
        (DType::F16, DType::F32) => "to_f32",
        _ => {
            return Err(OpError::Invalid {
                op: "cast",
                message: format!("casts go between f32 and f16; asked for {from} to {to}"),
            })
        }
    };
    let y = Array {
        buf: dev.alloc(x.numel(), to)?,
        shape: x.shape.clone(),
    };
    if x.numel() > 0 {
        let k = dev.kernel("half", entry, &[])?;
        crate::launch_1d(
            dev,
            &k,
            &[&x.buf, &y.buf],
            &Params::new().u(x.numel() as u32),
            x.numel(),
        )?;
    }
    Ok(y)
}

/// `x` rounded to f16 after scaling by a power of two chosen on the device, so that max |x| lands
/// in (2^13, 2^14]: small values such as gradients keep f16's 11 significant bits instead of
/// underflowing. Returns the f16 array and a one-element buffer holding the inverse scale, for
/// the consumer to multiply back in (no host round trip).
pub fn cast_f16_scaled(dev: &Device, x: &Array) -> Result<(Array, Buffer)> {
    crate::expect_dtype("cast_f16_scaled", x, DType::F32)?;
    crate::expect_nonempty("cast_f16_scaled", x)?;
    // max |x| in two passes: per column (coalesced), then across columns.
    let cols = x.shape.last().copied().unwrap_or(1).max(1);
    let rows = x.numel() / cols;
    let col_max = dev.alloc(cols, DType::F32)?;
    crate::reduce::reduce_raw(dev, &x.buf, &col_max, 1, rows, cols, Reduce::AbsMax)?;
    let amax = dev.alloc(1, DType::F32)?;
    crate::reduce::reduce_raw(dev, &col_max, &amax, 1, cols, 1, Reduce::AbsMax)?;
    let y = Array {
        buf: dev.alloc(x.numel(), DType::F16)?,
        shape: x.shape.clone(),
    };
    let inv = dev.alloc(1, DType::F32)?;
    let k = dev.kernel("half", "to_f16_scaled", &[])?;
    crate::launch_1d(
        dev,
        &k,
        &[&x.buf, &y.buf, &amax, &inv],
        &Params::new().u(x.numel() as u32),
        x.numel(),
    )?;
    Ok((y, inv))
}

/// A Linear or Conv2d layer with f16 weights [m, k] (PyTorch's layout, flattened) and an f32 bias:
/// y = x * w^T + bias, in the output's shape (NCHW for a conv).
pub fn layer_f16w(
    dev: &Device,
    x: &Array,
    w: &Buffer,
    bias: &Buffer,
    g: &LayerGeom,
) -> Result<Array> {
    let op = "layer_f16w";
    g.check_input(op, x)?;
    if w.dtype() != DType::F16 || w.len() != g.m * g.k() || bias.len() != g.m {
        return Err(OpError::Shape {
            op,
            expected: format!("f16 weights of {} values and {} biases", g.m * g.k(), g.m),
            got: format!("{} x {} and {}", w.len(), w.dtype(), bias.len()),
        });
    }
    let y = Array::empty(dev, &g.output_shape())?;
    let kern = dev.kernel("half", "conv_f16w", &[])?;
    let p = g.window_params(
        Params::new()
            .u(g.rows() as u32)
            .u(g.m as u32)
            .u(g.k() as u32),
    );
    let threads = g.rows() * g.m.div_ceil(4);
    dev.launch(
        &kern,
        &[&x.buf, w, bias, &y.buf],
        &p,
        [threads.div_ceil(64) as u32, 1, 1],
    )?;
    Ok(y)
}

/// CPU reference of [`layer_f16w`] (f64 accumulation of the f16-rounded weights).
pub fn cpu_layer_f16w(x: &[f32], w: &[half::f16], bias: &[f32], g: &LayerGeom) -> Vec<f64> {
    let (rows, k) = (g.rows(), g.k());
    let mut y = vec![0.0; rows * g.m];
    for r in 0..rows {
        let taps: Vec<f64> = (0..k).map(|c| g.tap(x, r, c) as f64).collect();
        for m in 0..g.m {
            let s: f64 = taps
                .iter()
                .zip(&w[m * k..(m + 1) * k])
                .map(|(a, b)| a * b.to_f64())
                .sum();
            y[g.out_index(r, m)] = s + bias[m] as f64;
        }
    }
    y
}

/// A cast to another float type as an op; the gradient passes through unchanged (in the
/// gradient's own type, f32).
#[derive(Clone, Copy, Debug)]
pub struct Cast(pub DType);

impl crate::op::Op for Cast {
    fn name(&self) -> &str {
        "cast"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(cast(dev, inputs[0], self.0)?.into())
    }
    fn backward(
        &self,
        _dev: &Device,
        _ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        Ok(vec![Some(dy.clone())])
    }
}
