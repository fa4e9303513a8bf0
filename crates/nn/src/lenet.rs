//! LeNet-5, built as a `Sequential` of named layers.

use crate::activation::Relu;
use crate::conv::Conv2dConfig;
use crate::error::Result;
use crate::init::Rng;
use crate::lambda::Flatten;
use crate::linear::LinearConfig;
use crate::pool::MaxPool2d;
use crate::sequential::Sequential;
use kiln_graph::Device;
use kiln_ops::pool::Pool2dSpec;

/// The seed's LeNet-5 for 28x28 inputs: conv 1->6 5x5 pad 2, Relu, max-pool 2; conv 6->16 5x5,
/// Relu, max-pool 2; linear 400->120->84->10 (each pooling runs before its Relu, which gives the
/// same values and gradients for less work). Names as PyTorch: conv1, conv2, fc1, fc2, fc3.
pub fn lenet5(dev: &Device, seed: u64) -> Result<Sequential> {
    lenet5_with_classes(dev, seed, 10)
}

/// LeNet-5 with a `classes`-way last layer (fine-tuning to another label set).
pub fn lenet5_with_classes(dev: &Device, seed: u64, classes: usize) -> Result<Sequential> {
    let mut rng = Rng::new(seed);
    let conv = |cin, cout| Conv2dConfig::new(cin, cout, [5, 5]);
    Ok(Sequential::new()
        // Pooling before Relu: max commutes with Relu (a monotonic function), so outputs and
        // gradients are those of Relu-then-pool, and Relu touches a quarter of the values.
        .push_named(
            "conv1",
            conv(1, 6).with_padding([2, 2]).init_with(dev, &mut rng)?,
        )
        .push_named("pool1", MaxPool2d(Pool2dSpec::square(2)))
        .push_named("relu1", Relu)
        .push_named("conv2", conv(6, 16).init_with(dev, &mut rng)?)
        .push_named("pool2", MaxPool2d(Pool2dSpec::square(2)))
        .push_named("relu2", Relu)
        .push_named("flatten", Flatten)
        .push_named("fc1", LinearConfig::new(400, 120).init_with(dev, &mut rng)?)
        .push_named("relu3", Relu)
        .push_named("fc2", LinearConfig::new(120, 84).init_with(dev, &mut rng)?)
        .push_named("relu4", Relu)
        .push_named(
            "fc3",
            LinearConfig::new(84, classes).init_with(dev, &mut rng)?,
        ))
}
