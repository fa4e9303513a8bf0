//! int8 inference: symmetric quantization (per output channel for weights, per tensor for
//! activations), and kernels on packed 4 x 8-bit dot products with i32 accumulation. A layer is a
//! convolution or a Linear layer (the 1x1 convolution of 1x1 images); both run as one GEMM over
//! rows = (image, output pixel) and k = (input channel, kernel tap), described by [`LayerGeom`].

pub use crate::geometry::{Conv2dSpec, LayerGeom};
use crate::{Array, Buffer, DType, Device, OpError, Params, Result};

/// Symmetric int8 quantization of `rows` rows of length `k`, one scale per row:
/// scale = max|v| / 127, q = round(v / scale) in [-127, 127]. Returns (q, scales).
pub fn quantize_rows(v: &[f32], rows: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(v.len());
    let mut scales = Vec::with_capacity(rows);
    for r in v.chunks(k).take(rows) {
        let max = r.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let s = scale_for(max);
        q.extend(r.iter().map(|x| quantize_value(*x, s)));
        scales.push(s);
    }
    (q, scales)
}

/// The symmetric scale for values up to `max_abs` (1 when the range is empty).
pub fn scale_for(max_abs: f32) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() {
        max_abs / 127.0
    } else {
        1.0
    }
}

/// One value to int8 as the kernels do it: round half to even, clamp to [-127, 127].
pub fn quantize_value(v: f32, scale: f32) -> i8 {
    (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// One scale for a whole tensor, from a calibration range (max |v| seen).
pub fn quantize_tensor(v: &[f32], max_abs: f32) -> (Vec<i8>, f32) {
    let s = scale_for(max_abs);
    (v.iter().map(|x| quantize_value(*x, s)).collect(), s)
}

/// Packs rows of `k` int8 values into u32 words along K (element 4j+i in bits 8i..), padding K to
/// a multiple of 4 with zeros.
pub fn pack_rows(q: &[i8], k: usize) -> Vec<u32> {
    let k4 = k.div_ceil(4);
    q.chunks(k)
        .flat_map(|r| {
            (0..k4).map(move |j| {
                (0..4).fold(0u32, |w, i| {
                    let v = r.get(4 * j + i).copied().unwrap_or(0);
                    w | ((v as u8 as u32) << (8 * i))
                })
            })
        })
        .collect()
}

fn groups(threads: usize) -> [u32; 3] {
    [threads.div_ceil(64) as u32, 1, 1]
}

/// Quantizes and packs the layer's input as GEMM rows (the int8 im2col): [rows, ceil(k / 4)] words.
pub fn pack_input(dev: &Device, x: &Array, g: &LayerGeom, x_scale: f32) -> Result<Buffer> {
    g.check_input("pack_input", x)?;
    if !(x_scale > 0.0 && x_scale.is_finite()) {
        return Err(OpError::Invalid {
            op: "pack_input",
            message: format!("activation scale must be positive and finite, got {x_scale}"),
        });
    }
    let (rows, k4) = (g.rows(), g.k().div_ceil(4));
    let out = dev.alloc(rows * k4, DType::U32)?;
    let kern = dev.kernel("int8", "pack_i8", &[])?;
    let p = g.window_params(
        Params::new()
            .u(rows as u32)
            .u(g.m as u32)
            .u(g.k() as u32)
            .u(k4 as u32),
    );
    dev.launch(&kern, &[&x.buf, &out], &p.f(x_scale), groups(rows * k4))?;
    Ok(out)
}

/// CPU reference of [`pack_input`] before packing: the int8 GEMM rows, [rows, k].
pub fn cpu_pack_input(x: &[f32], g: &LayerGeom, x_scale: f32) -> Vec<i8> {
    (0..g.rows() * g.k())
        .map(|e| quantize_value(g.tap(x, e / g.k(), e % g.k()), x_scale))
        .collect()
}

fn check_packed(
    op: &'static str,
    x: &Buffer,
    w: &Buffer,
    rows: usize,
    m: usize,
    k: usize,
) -> Result<usize> {
    let k4 = k.div_ceil(4);
    if x.len() != rows * k4
        || w.len() != m * k4
        || x.dtype() != DType::U32
        || w.dtype() != DType::U32
    {
        return Err(OpError::Shape {
            op,
            expected: format!(
                "packed u32 operands of {} and {} words (rows {rows}, M {m}, K {k})",
                rows * k4,
                m * k4
            ),
            got: format!(
                "{} x {} and {} x {}",
                x.len(),
                x.dtype(),
                w.len(),
                w.dtype()
            ),
        });
    }
    if rows == 0 || m == 0 {
        return Err(OpError::Shape {
            op,
            expected: "at least one row and one output channel".into(),
            got: format!("rows {rows}, M {m}"),
        });
    }
    Ok(k4)
}

/// Exact i32 sums acc[n, m] = sum_k x[n, k] w[m, k] of packed int8 operands.
pub fn matmul_i8(
    dev: &Device,
    x: &Buffer,
    w: &Buffer,
    n: usize,
    m: usize,
    k: usize,
) -> Result<Buffer> {
    let k4 = check_packed("matmul_i8", x, w, n, m, k)?;
    let out = dev.alloc(n * m, DType::I32)?;
    let kern = dev.kernel("int8", "matmul_i8", &[])?;
    let g = LayerGeom::linear("matmul_i8", &[n, k], &[m, k])?;
    let p = g.window_params(
        Params::new()
            .u(n as u32)
            .u(m as u32)
            .u(k as u32)
            .u(k4 as u32),
    );
    dev.launch(
        &kern,
        &[x, w, &out],
        &p.f(1.0),
        groups(n.div_ceil(4) * m.div_ceil(4)),
    )?;
    Ok(out)
}

/// The layer's f32 output from packed int8 input rows ([`pack_input`]) and packed int8 weights
/// `[m, k]`: `y = acc * x_scale * w_scale[m] + bias[m]`, in the output's shape (NCHW for a conv).
pub fn matmul_i8_dequant(
    dev: &Device,
    xq: &Buffer,
    x_scale: f32,
    wq: &Buffer,
    w_scale: &Buffer,
    bias: &Buffer,
    g: &LayerGeom,
) -> Result<Array> {
    let (rows, m, k) = (g.rows(), g.m, g.k());
    let k4 = check_packed("matmul_i8_dequant", xq, wq, rows, m, k)?;
    if w_scale.len() != m || bias.len() != m {
        return Err(OpError::Shape {
            op: "matmul_i8_dequant",
            expected: format!("{m} scales and biases"),
            got: format!("{} and {}", w_scale.len(), bias.len()),
        });
    }
    let y = Array::empty(dev, &g.output_shape())?;
    let kern = dev.kernel("int8", "matmul_i8_dequant", &[])?;
    let p = g.window_params(
        Params::new()
            .u(rows as u32)
            .u(m as u32)
            .u(k as u32)
            .u(k4 as u32),
    );
    dev.launch(
        &kern,
        &[xq, wq, w_scale, bias, &y.buf],
        &p.f(x_scale),
        groups(rows.div_ceil(4) * m.div_ceil(4)),
    )?;
    Ok(y)
}

/// A whole int8 layer: quantize and pack the input with `x_scale`, multiply by the packed weights,
/// dequantize and add the bias.
pub fn layer_i8(
    dev: &Device,
    x: &Array,
    x_scale: f32,
    wq: &Buffer,
    w_scale: &Buffer,
    bias: &Buffer,
    g: &LayerGeom,
) -> Result<Array> {
    let xq = pack_input(dev, x, g, x_scale)?;
    matmul_i8_dequant(dev, &xq, x_scale, wq, w_scale, bias, g)
}

/// CPU reference of the integer arithmetic: acc[n, m] = sum_k x[n, k] w[m, k].
pub fn cpu_matmul_i8(x: &[i8], w: &[i8], n: usize, m: usize, k: usize) -> Vec<i32> {
    (0..n * m)
        .map(|e| {
            (0..k)
                .map(|j| x[e / m * k + j] as i32 * w[e % m * k + j] as i32)
                .sum()
        })
        .collect()
}
