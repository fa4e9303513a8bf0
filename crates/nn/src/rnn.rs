//! Recurrent layers with PyTorch's equations, gate order and parameter names (`weight_ih_l0`,
//! `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`), multi-layer, batch-first ([B, T, features]).
//! Built from tested ops: the input projection of every step in one matmul, then per step a
//! matmul with the hidden state and element-wise gates.

use crate::error::{NnError, Result};
use crate::init::{with_default_rng, Init, Rng};
use crate::linear::{Linear, LinearConfig};
use crate::module::Module;
use kiln_graph::{Device, Tensor};

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

/// A [`Recurrent`] network's cell, sizes and depth (PyTorch's `nn.RNN`, `nn.LSTM`, `nn.GRU`
/// with `batch_first=True`; parameters U(-1/sqrt(hidden), 1/sqrt(hidden))).
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::rnn::RecurrentConfig;
/// let dev = kiln_graph::Device::shared()?;
/// let lstm = RecurrentConfig::lstm(16, 32).with_num_layers(2).init(&dev)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RecurrentConfig {
    /// The recurrence.
    pub cell: Cell,
    /// Features of each input step.
    pub input_size: usize,
    /// Units of each layer's hidden state.
    pub hidden_size: usize,
    /// Stacked layers.
    pub num_layers: usize,
}

impl RecurrentConfig {
    /// One layer of `cell`.
    pub fn new(cell: Cell, input_size: usize, hidden_size: usize) -> Self {
        RecurrentConfig {
            cell,
            input_size,
            hidden_size,
            num_layers: 1,
        }
    }
    /// An LSTM (`nn.LSTM`).
    pub fn lstm(input_size: usize, hidden_size: usize) -> Self {
        Self::new(Cell::Lstm, input_size, hidden_size)
    }
    /// A GRU (`nn.GRU`).
    pub fn gru(input_size: usize, hidden_size: usize) -> Self {
        Self::new(Cell::Gru, input_size, hidden_size)
    }
    /// A tanh RNN (`nn.RNN`).
    pub fn rnn(input_size: usize, hidden_size: usize) -> Self {
        Self::new(Cell::RnnTanh, input_size, hidden_size)
    }
    /// Stacked layers (PyTorch's `num_layers`).
    pub fn with_num_layers(mut self, num_layers: usize) -> Self {
        self.num_layers = num_layers;
        self
    }
    /// The network, drawn from this thread's default generator.
    pub fn init(&self, dev: &Device) -> Result<Recurrent> {
        with_default_rng(|rng| self.init_with(dev, rng))
    }
    /// The network, drawn from `rng` (per layer: w_ih, w_hh, b_ih, b_hh).
    pub fn init_with(&self, dev: &Device, rng: &mut Rng) -> Result<Recurrent> {
        if self.hidden_size == 0 || self.num_layers == 0 || self.input_size == 0 {
            return Err(NnError::Config(format!(
                "a recurrent network needs positive sizes: input {}, hidden {}, layers {}",
                self.input_size, self.hidden_size, self.num_layers
            )));
        }
        let (hidden, g) = (self.hidden_size, self.cell.gates() * self.hidden_size);
        let bound = 1.0 / (hidden as f64).sqrt();
        let init = Init::Uniform {
            low: -bound,
            high: bound,
        };
        let mut p = |shape: &[usize]| init.param(dev, rng, shape, shape);
        let mut layers = Vec::new();
        for l in 0..self.num_layers {
            let inp = if l == 0 { self.input_size } else { hidden };
            layers.push(Layer {
                w_ih: p(&[g, inp])?,
                w_hh: p(&[g, hidden])?,
                b_ih: p(&[g])?,
                b_hh: p(&[g])?,
            });
        }
        Ok(Recurrent {
            cell: self.cell,
            hidden,
            layers,
        })
    }
}

/// A multi-layer recurrent network over batch-first sequences [B, T, features].
pub struct Recurrent {
    cell: Cell,
    hidden: usize,
    layers: Vec<Layer>,
}

/// Outputs of a recurrent pass, as PyTorch returns them.
pub struct RecurrentOutput {
    /// [B, T, hidden]: the last layer's hidden state at every step.
    pub output: Tensor,
    /// [num_layers, B, hidden]: each layer's final hidden state.
    pub h_n: Tensor,
    /// [num_layers, B, hidden]: each LSTM layer's final cell state (None for other cells).
    pub c_n: Option<Tensor>,
}

impl Recurrent {
    /// Runs the sequence x: [B, T, input] from zero initial states, or from `h0` (and, for an
    /// LSTM, `c0`), each [num_layers, B, hidden].
    pub fn run(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
    ) -> Result<RecurrentOutput> {
        let (b, t) = match x.shape() {
            [b, t, f] if *t > 0 && *b > 0 && *f == self.layers[0].w_ih.shape()[1] => (*b, *t),
            s => {
                return Err(NnError::Op(kiln_graph::OpError::Shape {
                    op: "Recurrent::run",
                    expected: format!(
                        "x [batch, steps, {}] with at least one step",
                        self.layers[0].w_ih.shape()[1]
                    ),
                    got: format!("{s:?}"),
                }))
            }
        };
        let hd = self.hidden;
        let states = [b, hd];
        let want = [self.layers.len(), b, hd];
        for (name, s) in [("h0", h0), ("c0", c0)] {
            if let Some(s) = s {
                if s.shape() != want {
                    return Err(NnError::Op(kiln_graph::OpError::Shape {
                        op: "Recurrent::run",
                        expected: format!("{name} {want:?}"),
                        got: format!("{:?}", s.shape()),
                    }));
                }
            }
        }
        let layer_state = |s: Option<&Tensor>, l: usize| -> Result<Tensor> {
            Ok(match s {
                Some(s) => s.slice(0, l, 1)?.reshape(&states)?,
                None => Tensor::zeros(x.device(), &states)?,
            })
        };
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
            let mut h = layer_state(h0, l)?;
            let h_first = h.clone();
            let mut c = layer_state(c0, l)?;
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
            h_n.push(h.reshape(&[1, b, hd])?);
            c_n.push(c.reshape(&[1, b, hd])?);
        }
        let stack = |v: &[Tensor]| Tensor::concat(&v.iter().collect::<Vec<_>>(), 0);
        Ok(RecurrentOutput {
            output: seq,
            h_n: stack(&h_n)?,
            c_n: if self.cell == Cell::Lstm {
                Some(stack(&c_n)?)
            } else {
                None
            },
        })
    }
}

impl Module for Recurrent {
    /// The output sequence [B, T, hidden].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.run(x, None, None)?.output)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
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
    pub fc: Linear,
}

impl LastStepClassifier {
    /// The recurrent network `rnn` with a linear head to `classes` outputs, drawn from this
    /// thread's default generator.
    pub fn new(dev: &Device, rnn: &RecurrentConfig, classes: usize) -> Result<Self> {
        with_default_rng(|rng| Self::new_with(dev, rng, rnn, classes))
    }
    /// The same drawn from `rng`.
    pub fn new_with(
        dev: &Device,
        rng: &mut Rng,
        rnn: &RecurrentConfig,
        classes: usize,
    ) -> Result<Self> {
        Ok(LastStepClassifier {
            rnn: rnn.init_with(dev, rng)?,
            fc: LinearConfig::new(rnn.hidden_size, classes).init_with(dev, rng)?,
        })
    }
}

impl Module for LastStepClassifier {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.rnn.forward(x)?;
        let (b, t, h) = (out.shape()[0], out.shape()[1], out.shape()[2]);
        if t == 0 {
            return Err(crate::error::NnError::Invalid(
                "a sequence of length 0 has no last step to classify".into(),
            ));
        }
        self.fc.forward(&out.slice(1, t - 1, 1)?.reshape(&[b, h])?)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("rnn".into(), &self.rnn), ("fc".into(), &self.fc)]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![("rnn".into(), &mut self.rnn), ("fc".into(), &mut self.fc)]
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
