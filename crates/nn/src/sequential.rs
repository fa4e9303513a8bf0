//! `Sequential`: modules applied in order, as PyTorch's `nn.Sequential`.

use crate::error::Result;
use crate::module::Module;
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
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers
            .iter()
            .map(|(n, m)| (n.clone(), m.as_ref()))
            .collect()
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        self.layers
            .iter_mut()
            .map(|(n, m)| (n.clone(), m.as_mut() as &mut dyn Module))
            .collect()
    }
}
