//! `Dropout`, as PyTorch's `nn.Dropout`, with its mask drawn on the device.

use crate::error::Result;
use crate::init::with_default_rng;
use crate::module::Module;
use kiln_graph::{Device, Tensor};
use kiln_ops::dropout::DropoutRng;
use std::sync::{Arc, Mutex};

/// A [`Dropout`]'s probability and generator seed (default p = 0.5, as PyTorch; the seed is
/// drawn from this thread's default generator unless given).
#[derive(Clone, Debug)]
pub struct DropoutConfig {
    /// Probability of zeroing an element.
    pub p: f32,
    /// Seed of the mask generator.
    pub seed: Option<u64>,
}

impl Default for DropoutConfig {
    /// p = 0.5, as `torch.nn.Dropout()`.
    fn default() -> Self {
        DropoutConfig::new(0.5)
    }
}

impl DropoutConfig {
    /// Drop probability `p`.
    pub fn new(p: f32) -> Self {
        DropoutConfig { p, seed: None }
    }
    /// Seed of the mask generator.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// The module, in training mode.
    pub fn init(&self, dev: &Device) -> Result<Dropout> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(crate::error::NnError::Config(format!(
                "dropout probability {} is outside [0, 1)",
                self.p
            )));
        }
        let seed = self
            .seed
            .unwrap_or_else(|| with_default_rng(|r| r.next_u64()));
        Ok(Dropout {
            p: self.p,
            training: true,
            dev: dev.clone(),
            rng: Arc::new(Mutex::new(DropoutRng::new(dev, seed)?)),
        })
    }
}

/// Zeroes activations with probability `p` while training (scaling the rest by 1/(1-p));
/// the identity in evaluation mode. A clone shares the generator (its offset moves for both) and
/// keeps its own training flag.
#[derive(Clone)]
pub struct Dropout {
    p: f32,
    training: bool,
    dev: Device,
    rng: Arc<Mutex<DropoutRng>>,
}

impl Dropout {
    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }
    /// Whether it drops (training mode), as PyTorch's `module.training`.
    pub fn is_training(&self) -> bool {
        self.training
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        Ok(x.dropout(self.p, self.rng.lock().unwrap().buffer())?)
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn advance_rng(&self) -> Result<()> {
        Ok(self.rng.lock().unwrap().advance(&self.dev)?)
    }
    fn rng_offsets(&self) -> Vec<u32> {
        vec![self.rng.lock().unwrap().offset()]
    }
    fn set_rng_offsets(&self, offsets: &[u32]) -> Result<usize> {
        match offsets.first() {
            Some(&o) => {
                self.rng.lock().unwrap().set_offset(&self.dev, o)?;
                Ok(1)
            }
            None => Ok(0),
        }
    }
}
