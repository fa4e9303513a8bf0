//! Recurrent layers with PyTorch's equations, gate order and parameter names (`weight_ih_l0`,
//! `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`), multi-layer, batch-first ([B, T, features]).
//! Built from tested ops: the input projection of every step in one matmul, then per step a
//! matmul with the hidden state and element-wise gates.

use crate::layers::{prefixed, Module};
use crate::Result;
use kiln_graph::{Device, Tensor};
use kiln_ops::testing::Rng;

/// Which recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
    RnnTanh,
    /// h' = relu(W_ih x + b_ih + W_hh h + b_hh)
    RnnRelu,
    /// Gates i, f, g, o (PyTorch's order): c' = f c + i g, h' = o tanh(c').
    Lstm,
    /// Gates r, z, n: n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h.
    Gru,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::RnnTanh | Cell::RnnRelu => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

struct Layer {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

/// A multi-layer recurrent network (nn.RNN, nn.LSTM, nn.GRU with batch_first=True).
pub struct Recurrent {
    cell: Cell,
    hidden: usize,
    layers: Vec<Layer>,
}

/// Outputs of a recurrent pass.
pub struct RecurrentOutput {
    /// [B, T, hidden]: the last layer's hidden state at every step.
    pub output: Tensor,
    /// Final hidden state of each layer, [B, hidden] each.
    pub h_n: Vec<Tensor>,
    /// Final cell state of each LSTM layer.
    pub c_n: Vec<Tensor>,
}

impl Recurrent {
    /// `layers` stacked cells; parameters uniform in +-1/sqrt(hidden) as PyTorch.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        cell: Cell,
        input: usize,
        hidden: usize,
        layers: usize,
    ) -> Result<Recurrent> {
        let g = cell.gates() * hidden;
        let bound = 1.0 / (hidden as f64).sqrt();
        let mut p = |shape: &[usize]| -> Result<Tensor> {
            let n = shape.iter().product();
            Ok(Tensor::from_f32(dev, &rng.vec(n, -bound, bound), shape)?.requires_grad(true))
        };
        let mut ls = Vec::new();
        for l in 0..layers {
            let inp = if l == 0 { input } else { hidden };
            ls.push(Layer {
                w_ih: p(&[g, inp])?,
                w_hh: p(&[g, hidden])?,
                b_ih: p(&[g])?,
                b_hh: p(&[g])?,
            });
        }
        Ok(Recurrent {
            cell,
            hidden,
            layers: ls,
        })
    }

    /// Runs the sequence x: [B, T, input] from zero (or given) initial states.
    pub fn run(
        &self,
        x: &Tensor,
        h0: Option<&[Tensor]>,
        c0: Option<&[Tensor]>,
    ) -> Result<RecurrentOutput> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let hd = self.hidden;
        let dev = x.device().clone();
        let mut seq = x.clone();
        let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
        for (l, layer) in self.layers.iter().enumerate() {
            let inp = seq.shape()[2];
            let g = self.cell.gates() * hd;
            // Except in GRU's candidate gate, where r scales it, b_hh adds to the gates as b_ih
            // does: folded into the input projection, it costs no reduction or gradient sum per
            // step.
            let fold = self.cell != Cell::Gru;
            let (b_x, b_h) = if fold {
                (layer.b_ih.add(&layer.b_hh)?, None)
            } else {
                (layer.b_ih.clone(), Some(&layer.b_hh))
            };
            // All steps' input projections at once: [B*T, inp] x [inp, G].
            let xw = seq
                .reshape(&[b * t, inp])?
                .linear(&layer.w_ih, Some(&b_x))?
                .reshape(&[b, t, g])?;
            // Where the gates add the two terms, w_hh's gradient is one product after the steps.
            let (xw, rec) = if fold {
                let (xw, rec) = xw.recurrence(&layer.w_hh)?;
                (xw, Some(rec))
            } else {
                (xw, None)
            };
            let mut h = match h0 {
                Some(h) => h[l].clone(),
                None => Tensor::full(&dev, &[b, hd], 0.0)?,
            };
            let h_first = h.clone();
            let mut c = match c0 {
                Some(c) => c[l].clone(),
                None => Tensor::full(&dev, &[b, hd], 0.0)?,
            };
            let mut outs = Vec::with_capacity(t);
            for step in 0..t {
                let xg = xw.slice(1, step, 1)?.reshape(&[b, g])?;
                let hg = match &rec {
                    Some(rec) => rec.step(&h)?,
                    None => h.linear(&layer.w_hh, b_h)?,
                };
                h = match self.cell {
                    Cell::RnnTanh => xg.add(&hg)?.tanh()?,
                    Cell::RnnRelu => xg.add(&hg)?.relu()?,
                    Cell::Lstm => {
                        // One fused kernel for the gates and the cell update.
                        let hc = xg.lstm_cell(&hg, &c)?;
                        c = hc.slice(1, hd, hd)?;
                        hc.slice(1, 0, hd)?
                    }
                    Cell::Gru => xg.gru_cell(&hg, &h)?,
                };
                outs.push(h.reshape(&[b, 1, hd])?);
            }
            let refs: Vec<&Tensor> = outs.iter().collect();
            seq = Tensor::concat(&refs, 1)?;
            if let Some(rec) = &rec {
                rec.finish(&h_first, &seq)?;
            }
            h_n.push(h);
            if self.cell == Cell::Lstm {
                c_n.push(c);
            }
        }
        Ok(RecurrentOutput {
            output: seq,
            h_n,
            c_n,
        })
    }
}

impl Module for Recurrent {
    /// The output sequence [B, T, hidden].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.run(x, None, None)?.output)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(l, p)| {
                [
                    (format!("weight_ih_l{l}"), p.w_ih.clone()),
                    (format!("weight_hh_l{l}"), p.w_hh.clone()),
                    (format!("bias_ih_l{l}"), p.b_ih.clone()),
                    (format!("bias_hh_l{l}"), p.b_hh.clone()),
                ]
            })
            .collect()
    }
}

/// A recurrent network over [B, T, input] whose last step's hidden state feeds a linear head
/// (the seed's nn.RNN classifier).
pub struct LastStepClassifier {
    /// The recurrent layers.
    pub rnn: Recurrent,
    /// The head.
    pub fc: crate::layers::Linear,
}

impl LastStepClassifier {
    /// `layers` cells of `hidden` units over `input` features, `classes` outputs.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        cell: Cell,
        input: usize,
        hidden: usize,
        layers: usize,
        classes: usize,
    ) -> Result<Self> {
        Ok(LastStepClassifier {
            rnn: Recurrent::new(dev, rng, cell, input, hidden, layers)?,
            fc: crate::layers::Linear::new(dev, rng, hidden, classes, true)?,
        })
    }
}

impl Module for LastStepClassifier {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.rnn.forward(x)?;
        let (b, t, h) = (out.shape()[0], out.shape()[1], out.shape()[2]);
        if t == 0 {
            return Err(crate::NnError::Invalid(
                "a sequence of length 0 has no last step to classify".into(),
            ));
        }
        self.fc.forward(&out.slice(1, t - 1, 1)?.reshape(&[b, h])?)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = prefixed("rnn", self.rnn.named_parameters());
        v.extend(prefixed("fc", self.fc.named_parameters()));
        v
    }
}

/// The toy task of the rnn_sequence example: `n` random 0/1 sequences of length `t` ([n, t, 1])
/// labelled 1 when they hold more ones than zeros.
pub fn majority_task(n: usize, t: usize, rng: &mut Rng) -> (Vec<f32>, Vec<i32>) {
    let x: Vec<f32> = (0..n * t).map(|_| rng.below(2) as f32).collect();
    if t == 0 {
        // Empty sequences hold no ones: never a majority.
        return (x, vec![0; n]);
    }
    let y = x
        .chunks(t)
        .map(|s| i32::from(s.iter().sum::<f32>() > t as f32 / 2.0))
        .collect();
    (x, y)
}
