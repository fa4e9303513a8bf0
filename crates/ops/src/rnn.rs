//! The fused LSTM and GRU cells (shaders/rnn.wgsl): one dispatch per step each way for the gate
//! nonlinearities and the state update, which as separate element-wise ops take a dozen.

use crate::{expect_dtype, launch_1d, Array, DType, Device, OpError, Params, Result};

/// (rows, units) from xg [B, G*H], hg [B, G*H] and the previous state [B, H], for `g` gates.
fn dims(
    op: &'static str,
    xg: &Array,
    hg: &Array,
    state: &Array,
    g: usize,
) -> Result<(usize, usize)> {
    for a in [xg, hg, state] {
        expect_dtype(op, a, DType::F32)?;
    }
    let [rows, units] = state.shape[..] else {
        return Err(OpError::Shape {
            op,
            expected: "a state [B, H]".into(),
            got: format!("{:?}", state.shape),
        });
    };
    if xg.shape != [rows, g * units] || hg.shape != xg.shape {
        return Err(OpError::Shape {
            op,
            expected: format!("xg and hg [{rows}, {}]", g * units),
            got: format!("{:?} and {:?}", xg.shape, hg.shape),
        });
    }
    Ok((rows, units))
}

/// Runs `entry` of rnn.wgsl, one invocation per (row, unit).
fn launch(
    dev: &Device,
    entry: &str,
    bufs: &[&crate::Buffer],
    rows: usize,
    units: usize,
) -> Result<()> {
    let k = dev.kernel("rnn", entry, &[])?;
    let p = Params::new().u(rows as u32).u(units as u32);
    launch_1d(dev, &k, bufs, &p, rows * units)
}

/// One LSTM step from its gate pre-activations `xg + hg` ([B, 4H], gates i, f, g, o as
/// PyTorch) and the previous cell state `c_prev` [B, H]: returns [B, 2H], the new hidden state
/// h and cell state c side by side.
pub fn lstm_cell(dev: &Device, xg: &Array, hg: &Array, c_prev: &Array) -> Result<Array> {
    let (rows, units) = dims("lstm_cell", xg, hg, c_prev, 4)?;
    let hc = Array::empty(dev, &[rows, 2 * units])?;
    let bufs = [&xg.buf, &hg.buf, &c_prev.buf, &hc.buf];
    launch(dev, "lstm_cell", &bufs, rows, units)?;
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
    let (rows, units) = dims("lstm_cell_backward", xg, hg, c_prev, 4)?;
    if dhc.shape != [rows, 2 * units] {
        return Err(OpError::Shape {
            op: "lstm_cell_backward",
            expected: format!("d(hc) [{rows}, {}]", 2 * units),
            got: format!("{:?}", dhc.shape),
        });
    }
    let dpre = Array::empty(dev, &xg.shape)?;
    let dc_prev = Array::empty(dev, &c_prev.shape)?;
    let bufs = [
        &xg.buf,
        &hg.buf,
        &c_prev.buf,
        &dhc.buf,
        &dpre.buf,
        &dc_prev.buf,
    ];
    launch(dev, "lstm_cell_backward", &bufs, rows, units)?;
    Ok((dpre, dc_prev))
}

/// One GRU step from the input term `xg` and the recurrent term `hg` (with its bias) of the gate
/// pre-activations ([B, 3H], gates r, z, n as PyTorch) and the previous hidden state `h_prev`
/// [B, H]: returns the new hidden state [B, H].
pub fn gru_cell(dev: &Device, xg: &Array, hg: &Array, h_prev: &Array) -> Result<Array> {
    let (rows, units) = dims("gru_cell", xg, hg, h_prev, 3)?;
    let h = Array::empty(dev, &h_prev.shape)?;
    let bufs = [&xg.buf, &hg.buf, &h_prev.buf, &h.buf];
    launch(dev, "gru_cell", &bufs, rows, units)?;
    Ok(h)
}

/// The gradients of [`gru_cell`] for `dh` [B, H]: (d(xg), d(hg), d(h_prev)), the last only
/// the direct path (h_prev's part in hg comes back through the recurrent matmul).
pub fn gru_cell_backward(
    dev: &Device,
    xg: &Array,
    hg: &Array,
    h_prev: &Array,
    dh: &Array,
) -> Result<(Array, Array, Array)> {
    let (rows, units) = dims("gru_cell_backward", xg, hg, h_prev, 3)?;
    if dh.shape != h_prev.shape {
        return Err(OpError::Shape {
            op: "gru_cell_backward",
            expected: format!("dh {:?}", h_prev.shape),
            got: format!("{:?}", dh.shape),
        });
    }
    let dxg = Array::empty(dev, &xg.shape)?;
    let dhg = Array::empty(dev, &hg.shape)?;
    let dh_prev = Array::empty(dev, &h_prev.shape)?;
    let bufs = [
        &xg.buf,
        &hg.buf,
        &h_prev.buf,
        &dh.buf,
        &dxg.buf,
        &dh_prev.buf,
        &dhg.buf,
    ];
    launch(dev, "gru_cell_backward", &bufs, rows, units)?;
    Ok((dxg, dhg, dh_prev))
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

    /// [`super::gru_cell`] on xg, hg [B, 3H] and h_prev [B, H]: [B, H].
    pub fn gru_cell(xg: &[f64], hg: &[f64], h_prev: &[f64], units: usize) -> Vec<f64> {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut h = Vec::with_capacity(h_prev.len());
        for (row, hp) in h_prev.chunks(units).enumerate() {
            let (x, g) = (&xg[row * 3 * units..], &hg[row * 3 * units..]);
            h.extend((0..units).map(|j| {
                let r = sig(x[j] + g[j]);
                let z = sig(x[units + j] + g[units + j]);
                let n = (x[2 * units + j] + r * g[2 * units + j]).tanh();
                (1.0 - z) * n + z * hp[j]
            }));
        }
        h
    }
}

/// [`lstm_cell`] as an op: inputs xg, hg, c_prev; xg and hg share one gradient.
#[derive(Clone, Copy, Debug)]
pub struct LstmCell;

impl crate::op::Op for LstmCell {
    fn name(&self) -> &str {
        "lstm_cell"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(lstm_cell(dev, inputs[0], inputs[1], inputs[2])?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let i = ctx.inputs;
        let (dpre, dc) = lstm_cell_backward(dev, i[0], i[1], i[2], dy)?;
        Ok(vec![Some(dpre.clone()), Some(dpre), Some(dc)])
    }
}

/// [`gru_cell`] as an op: inputs xg, hg (with its bias), h_prev.
#[derive(Clone, Copy, Debug)]
pub struct GruCell;

impl crate::op::Op for GruCell {
    fn name(&self) -> &str {
        "gru_cell"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(gru_cell(dev, inputs[0], inputs[1], inputs[2])?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let i = ctx.inputs;
        let (dx, dh, dp) = gru_cell_backward(dev, i[0], i[1], i[2], dy)?;
        Ok(vec![Some(dx), Some(dh), Some(dp)])
    }
}
