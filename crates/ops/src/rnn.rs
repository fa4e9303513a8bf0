//! The fused LSTM cell (shaders/rnn.wgsl): one dispatch per step each way for the gate
//! nonlinearities and the cell update, which as separate element-wise ops take a dozen.

use crate::{expect_dtype, launch_1d, Array, DType, Device, OpError, Params, Result};

/// (rows, units) from xg [B, 4H], hg [B, 4H] and c_prev [B, H].
fn dims(op: &'static str, xg: &Array, hg: &Array, c_prev: &Array) -> Result<(usize, usize)> {
    for a in [xg, hg, c_prev] {
        expect_dtype(op, a, DType::F32)?;
    }
    let [rows, units] = c_prev.shape[..] else {
        return Err(OpError::Shape {
            op,
            expected: "c_prev [B, H]".into(),
            got: format!("{:?}", c_prev.shape),
        });
    };
    if xg.shape != [rows, 4 * units] || hg.shape != xg.shape {
        return Err(OpError::Shape {
            op,
            expected: format!("xg and hg [{rows}, {}]", 4 * units),
            got: format!("{:?} and {:?}", xg.shape, hg.shape),
        });
    }
    Ok((rows, units))
}

fn params(rows: usize, units: usize) -> Params {
    Params::new().u(rows as u32).u(units as u32)
}

/// One LSTM step from its gate pre-activations `xg + hg` ([B, 4H], gates i, f, g, o as
/// PyTorch) and the previous cell state `c_prev` [B, H]: returns [B, 2H], the new hidden state
/// h and cell state c side by side.
pub fn lstm_cell(dev: &Device, xg: &Array, hg: &Array, c_prev: &Array) -> Result<Array> {
    let (rows, units) = dims("lstm_cell", xg, hg, c_prev)?;
    let hc = Array::empty(dev, &[rows, 2 * units])?;
    let k = dev.kernel("rnn", "lstm_cell", &[])?;
    let bufs = [&xg.buf, &hg.buf, &c_prev.buf, &hc.buf];
    launch_1d(dev, &k, &bufs, &params(rows, units), rows * units)?;
    Ok(hc)
}

/// The gradients of [`lstm_cell`] for `dhc` ([B, 2H]: dh, dc): (d(pre) [B, 4H], which is the
/// gradient of xg and of hg alike, and d(c_prev) [B, H]).
pub fn lstm_cell_backward(
    dev: &Device,
    xg: &Array,
    hg: &Array,
    c_prev: &Array,
    dhc: &Array,
) -> Result<(Array, Array)> {
    let (rows, units) = dims("lstm_cell_backward", xg, hg, c_prev)?;
    if dhc.shape != [rows, 2 * units] {
        return Err(OpError::Shape {
            op: "lstm_cell_backward",
            expected: format!("d(hc) [{rows}, {}]", 2 * units),
            got: format!("{:?}", dhc.shape),
        });
    }
    let dpre = Array::empty(dev, &xg.shape)?;
    let dc_prev = Array::empty(dev, &c_prev.shape)?;
    let k = dev.kernel("rnn", "lstm_cell_backward", &[])?;
    let bufs = [
        &xg.buf,
        &hg.buf,
        &c_prev.buf,
        &dhc.buf,
        &dpre.buf,
        &dc_prev.buf,
    ];
    launch_1d(dev, &k, &bufs, &params(rows, units), rows * units)?;
    Ok((dpre, dc_prev))
}

/// CPU reference in f64.
pub mod cpu {
    /// [`super::lstm_cell`] on pre = xg + hg [B, 4H] and c_prev [B, H]: [B, 2H].
    pub fn lstm_cell(pre: &[f64], c_prev: &[f64], units: usize) -> Vec<f64> {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut hc = Vec::with_capacity(2 * c_prev.len());
        for (r, cp) in c_prev.chunks(units).enumerate() {
            let g = &pre[r * 4 * units..(r + 1) * 4 * units];
            let c: Vec<f64> = (0..units)
                .map(|j| sig(g[units + j]) * cp[j] + sig(g[j]) * g[2 * units + j].tanh())
                .collect();
            hc.extend((0..units).map(|j| sig(g[3 * units + j]) * c[j].tanh()));
            hc.extend(c);
        }
        hc
    }
}
