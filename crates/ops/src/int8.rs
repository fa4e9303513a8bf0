//! int8 quantized matmul: symmetric quantization (per output channel for weights, per tensor for
//! activations) on the host, and a kernel on packed 4 x 8-bit dot products with i32 accumulation.

use crate::{Buffer, DType, Device, OpError, Params, Result};

/// Symmetric int8 quantization of `rows` rows of length `k`, one scale per row:
/// scale = max|v| / 127, q = round(v / scale) in [-127, 127]. Returns (q, scales).
pub fn quantize_rows(v: &[f32], rows: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(v.len());
    let mut scales = Vec::with_capacity(rows);
    for r in v.chunks(k).take(rows) {
        let max = r.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        q.extend(r.iter().map(|x| (x / s).round().clamp(-127.0, 127.0) as i8));
        scales.push(s);
    }
    (q, scales)
}

/// One scale for a whole tensor, from a calibration range (max |v| seen).
pub fn quantize_tensor(v: &[f32], max_abs: f32) -> (Vec<i8>, f32) {
    let s = if max_abs > 0.0 { max_abs / 127.0 } else { 1.0 };
    (
        v.iter()
            .map(|x| (x / s).round().clamp(-127.0, 127.0) as i8)
            .collect(),
        s,
    )
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

fn check(op: &'static str, x: &Buffer, w: &Buffer, n: usize, m: usize, k: usize) -> Result<usize> {
    let k4 = k.div_ceil(4);
    if x.len() != n * k4 || w.len() != m * k4 || x.dtype() != DType::U32 || w.dtype() != DType::U32
    {
        return Err(OpError::Shape {
            op,
            expected: format!(
                "packed u32 operands of {} and {} words (N {n}, M {m}, K {k})",
                n * k4,
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
    let k4 = check("matmul_i8", x, w, n, m, k)?;
    let out = dev.alloc(n * m, DType::I32)?;
    let kern = dev.kernel("int8", "matmul_i8", &[])?;
    let p = Params::new().u(n as u32).u(m as u32).u(k4 as u32).f(1.0);
    dev.launch(
        &kern,
        &[x, w, &out],
        &p,
        [(n * m).div_ceil(64) as u32, 1, 1],
    )?;
    Ok(out)
}

/// y[n, m] = acc[n, m] * x_scale * w_scale[m] + bias[m] (f32), in one kernel.
#[allow(clippy::too_many_arguments)]
pub fn matmul_i8_dequant(
    dev: &Device,
    x: &Buffer,
    x_scale: f32,
    w: &Buffer,
    w_scale: &Buffer,
    bias: &Buffer,
    n: usize,
    m: usize,
    k: usize,
) -> Result<Buffer> {
    let k4 = check("matmul_i8_dequant", x, w, n, m, k)?;
    if w_scale.len() != m || bias.len() != m {
        return Err(OpError::Shape {
            op: "matmul_i8_dequant",
            expected: format!("{m} scales and biases"),
            got: format!("{} and {}", w_scale.len(), bias.len()),
        });
    }
    let out = dev.alloc(n * m, DType::F32)?;
    let kern = dev.kernel("int8", "matmul_i8_dequant", &[])?;
    let p = Params::new()
        .u(n as u32)
        .u(m as u32)
        .u(k4 as u32)
        .f(x_scale);
    dev.launch(
        &kern,
        &[x, w, w_scale, bias, &out],
        &p,
        [(n * m).div_ceil(64) as u32, 1, 1],
    )?;
    Ok(out)
}

/// CPU reference of the same integer arithmetic.
pub fn cpu_matmul_i8(x: &[i8], w: &[i8], n: usize, m: usize, k: usize) -> Vec<i32> {
    (0..n * m)
        .map(|e| {
            (0..k)
                .map(|j| x[e / m * k + j] as i32 * w[e % m * k + j] as i32)
                .sum()
        })
        .collect()
}
