//! `Sequential`: modules applied in order, as PyTorch's `nn.Sequential`.

use crate::module::{prefixed, Module};
use crate::Result;
use kiln_graph::Tensor;

/// Modules applied in order; parameters named by position (`0.weight`) or by the given names.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<(String, Box<dyn Module>)>,
}

impl Sequential {
    /// An empty stack.
    pub fn new() -> Sequential {
        Sequential::default()
    }
    /// Appends a module named by its position.
    pub fn push(mut self, m: impl Module + 'static) -> Sequential {
        let name = self.layers.len().to_string();
        self.layers.push((name, Box::new(m)));
        self
    }
    /// Appends a module with a name (its parameters become `name.weight`...).
    pub fn push_named(mut self, name: &str, m: impl Module + 'static) -> Sequential {
        self.layers.push((name.to_string(), Box::new(m)));
        self
    }
    /// Appends an already boxed module with a name.
    pub fn push_boxed(mut self, name: &str, m: Box<dyn Module>) -> Sequential {
        self.layers.push((name.to_string(), m));
        self
    }
    /// The modules and their names, in order.
    pub fn layers(&self) -> impl Iterator<Item = (&str, &dyn Module)> {
        self.layers.iter().map(|(n, m)| (n.as_str(), m.as_ref()))
    }
    /// Takes the stack apart into its named modules.
    pub fn into_layers(self) -> Vec<(String, Box<dyn Module>)> {
        self.layers
    }
    /// A stack of named modules, in order (the inverse of [`Sequential::into_layers`]).
    pub fn from_layers(layers: Vec<(String, Box<dyn Module>)>) -> Sequential {
        Sequential { layers }
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (_, m) in &self.layers {
            h = m.forward(&h)?;
        }
        Ok(h)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .flat_map(|(n, m)| prefixed(n, m.named_parameters()))
            .collect()
    }
    fn set_training(&mut self, training: bool) {
        for (_, m) in &mut self.layers {
            m.set_training(training);
        }
    }
    fn advance_rng(&self) -> Result<()> {
        self.layers.iter().try_for_each(|(_, m)| m.advance_rng())
    }
    fn rng_offsets(&self) -> Vec<u32> {
        crate::module::rng_offsets_of(self.layers.iter().map(|(_, m)| m.as_ref()))
    }
    fn set_rng_offsets(&self, offsets: &[u32]) -> Result<usize> {
        crate::module::set_rng_offsets_of(self.layers.iter().map(|(_, m)| m.as_ref()), offsets)
    }
}
