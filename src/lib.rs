//! # kiln
//!
//! kiln trains neural networks on the GPU through portable WGSL compute shaders: the same Rust
//! code runs through [wgpu](https://wgpu.rs) on Vulkan, Metal and DX12, and on the software
//! Vulkan driver (lavapipe) on machines without a GPU. Every kernel is checked against a CPU
//! reference and every gradient against finite differences.
//!
//! ## The crates
//!
//! Dependencies point one way, from the top of this list down:
//!
//! | crate | re-exported as | what it holds |
//! |---|---|---|
//! | `kiln-dist` | `dist` (feature `dist`, on by default) | data-parallel training over MPI as PyTorch's DistributedDataParallel: parameters broadcast from rank 0, gradients all-reduced in buckets, a distributed sampler, `no_sync` |
//! | `kiln-train` | [`train`] | `fit` / `evaluate` / `predict`, the language-model loop, training checkpoints, history, CSV/SVG reports, progress |
//! | `kiln-nn` | [`nn`] | modules with PyTorch's names, layouts and defaults, built from configs (`LinearConfig::new(784, 256).init(&dev)`); losses; optimizers (`Sgd`, `Adam`, `AdamW`, `RmsProp`); schedules; seeded initialisers; data readers; safetensors files |
//! | `kiln-nn` (its `hf` module) | [`hf`] | Hugging Face folders: `config.json`, `model.safetensors` by Hugging Face's names, `tokenizer.json` (the `tokenizers` crate); `BertModel` and sentence embeddings, `GPT2LMHeadModel` with a key/value-cache generator; folders written back as `transformers` reads them |
//! | `kiln-graph` | [`graph`] | [`graph::Tensor`] with reverse-mode autograd, `no_grad`, `autocast_f16`, [`graph::StepPlan`] (record a training step once, replay it with one submission per step), [`graph::gradcheck()`] |
//! | `kiln-ops` | [`ops`] | one module per op family: shape checks, WGSL launchers, backward rules, CPU references; the [`ops::op::Op`] trait that built-in and user ops implement |
//! | `kiln-device` | [`device`] | adapter choice, limits and features, buffers and their pool, shaders and cached pipelines, launch, readback, timing |
//!
//! ## A training loop
//!
//! A model is a struct of modules: `forward` says how they compose, and `children` names them
//! (PyTorch's `named_children`); parameter names (`fc1.weight`), `train()` / `eval()`, the
//! dropout generators that checkpoints save, and `freeze()` all come from those names.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kiln::device::Device;
//! use kiln::graph::{StepPlan, Tensor};
//! use kiln::nn::{Dropout, DropoutConfig, Linear, LinearConfig, Module, NnError, Sgd};
//!
//! struct Mlp {
//!     fc1: Linear,
//!     drop: Dropout,
//!     fc2: Linear,
//! }
//!
//! impl Module for Mlp {
//!     fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
//!         let h = self.fc1.forward(&x.flatten()?)?.relu()?;
//!         self.fc2.forward(&self.drop.forward(&h)?)
//!     }
//!     fn children(&self) -> Vec<(String, &dyn Module)> {
//!         vec![("fc1".into(), &self.fc1), ("drop".into(), &self.drop), ("fc2".into(), &self.fc2)]
//!     }
//!     fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
//!         vec![
//!             ("fc1".into(), &mut self.fc1),
//!             ("drop".into(), &mut self.drop),
//!             ("fc2".into(), &mut self.fc2),
//!         ]
//!     }
//! }
//!
//! let dev = Device::new()?;
//! let model = Mlp {
//!     fc1: LinearConfig::new(784, 128).init(&dev)?, // fc1.weight [128, 784], fc1.bias [128]
//!     drop: DropoutConfig::new(0.1).init(&dev)?,
//!     fc2: LinearConfig::new(128, 10).init(&dev)?,
//! }; // or a ready-made one: kiln::nn::lenet::lenet5(&dev, 0)?
//! let mut opt = Sgd::new(0.05).with_momentum(0.9).init(&dev, model.parameters())?;
//! let (images, labels) = (vec![0.0f32; 64 * 784], vec![0i32; 64]);
//! let x = Tensor::from_f32(&dev, &images, &[64, 1, 28, 28])?;
//! let y = Tensor::from_i32(&dev, &labels, &[64])?;
//! // Forward, backward and update, recorded once (and run once)...
//! let (step, loss) = StepPlan::record(&dev, || {
//!     let loss = model.forward(&x)?.cross_entropy(&y, None)?;
//!     loss.backward()?;
//!     opt.step()?;
//!     Ok::<_, NnError>(loss)
//! })?;
//! // ...then replayed on each new batch: write it into the same tensors, one submission
//! // (a model with dropout calls model.advance_rng() first for a fresh mask).
//! for _ in 0..10 {
//!     x.copy_from_slice(&images)?;
//!     y.copy_from_slice(&labels)?;
//!     model.advance_rng()?;
//!     opt.replay(&step)?; // begins the optimizer's step (learning rate, bias corrections)
//! }
//! println!("loss {}", loss.item()?);
//! # Ok(()) }
//! ```
//!
//! [`train::fit()`] runs such loops over a [`train::Dataset`] (shuffling, a plan per batch size,
//! validation, checkpoints, history); the loss is given once and the rest of the run is a
//! [`train::FitConfig`] with Keras' defaults, set by name:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kiln::nn::{lenet::lenet5, Module, Sgd};
//! use kiln::train::{fit, ArrayDataset, FitConfig, Loss};
//!
//! let dev = kiln::device::Device::new()?;
//! let model = lenet5(&dev, 0)?;
//! let mut opt = Sgd::new(0.05).with_momentum(0.9).init(&dev, model.parameters())?;
//! let (images, labels) = (vec![0.0f32; 640 * 784], vec![0i32; 640]);
//! let train = ArrayDataset::classes(&images, &[1, 28, 28], &labels);
//! let test = ArrayDataset::classes(&images[..64 * 784], &[1, 28, 28], &labels[..64]);
//! let cfg = FitConfig::default()
//!     .with_epochs(3)
//!     .with_batch_size(64)
//!     .with_validation(&test)
//!     .with_callback(|s| println!("epoch {}: loss {:.4}", s.epoch, s.train_loss));
//! // `.with_distributed(&mut ddp)` trains as one of several processes (kiln::dist).
//! let history = fit(&dev, &model, &mut opt, Loss::CrossEntropy, &train, cfg)?;
//! # let _ = history; Ok(()) }
//! ```
//!
//! Its batches come from a [`train::DataLoader`] (a seeded shuffle, each process's share, read
//! on a background thread) over any [`train::Dataset`]: in-memory arrays, MNIST's IDX files,
//! token shards. [`train::Compiled`] gives it Keras's `compile` / `fit` / `evaluate` /
//! `predict` face.
//!
//! ## A pretrained model
//!
//! Hugging Face models and tokenizers come with the `hf` feature
//! (`kiln = { version = "0.1", features = ["hf"] }`); data-parallel training over MPI with `dist`.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kiln::hf::{BertModel, Tokenizer};
//! let dev = kiln::device::Device::new()?;
//! let dir = kiln::hf::minilm_dir()?; // all-MiniLM-L6-v2, fetched once by scripts/setup.sh --tests
//! let model = BertModel::from_folder(&dev, &dir)?;
//! let tok = Tokenizer::for_model(&dir, model.config().vocab_size, model.max_length())?;
//! let batch = tok.encode_batch(&["The weather is lovely today.", "It's so sunny outside!"])?;
//! let e = kiln::nn::no_grad(|| model.sentence_embeddings(&batch))?.to_vec()?;
//! let cosine: f32 = e[..384].iter().zip(&e[384..]).map(|(a, b)| a * b).sum();
//! # let _ = cosine; Ok(()) }
//! ```
//!
//! `examples/bert_finetune.rs` fine-tunes it contrastively and saves a folder that
//! `transformers` loads; `examples/generate.rs` generates with any GPT-2 folder.
//!
//! ## Your own op
//!
//! A user op is a WGSL kernel (or any composition of kiln's ops) with a backward pass, given to
//! autograd through [`ops::op::Op`] and run with [`graph::Tensor::apply`]; recorded steps replay
//! it like any built-in op, and [`graph::gradcheck()`] checks its backward against finite
//! differences. kiln appends a prelude to user WGSL (`KILN_WG`, `kiln_index`), the launch
//! helpers of [`ops::launch`] size the grid, and a parameter block declared with
//! [`device::kernel_params!`] is checked against the WGSL struct before the first launch. An op
//! declares its arity, may have several outputs ([`graph::Tensor::apply_multi`]) or a backward
//! written with tensor ops ([`graph::Function`]), and [`nn::Lambda`] puts it in a `Sequential`.
//! `examples/custom_op.rs` writes swish this way, checks it and trains with it.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kiln::device::Device;
//! use kiln::graph::{gradcheck, Tensor};
//! use kiln::ops::op::{Ctx, Forward, Op};
//! use kiln::ops::{launch, Array, Result};
//!
//! kiln::device::kernel_params! { struct N { n: u32 } }
//!
//! const SRC: &str = "
//! struct N { n: u32 }
//! @group(0) @binding(0) var<storage, read> x: array<f32>;
//! @group(0) @binding(1) var<storage, read> dy: array<f32>;
//! @group(0) @binding(2) var<storage, read_write> out: array<f32>;
//! @group(0) @binding(3) var<uniform> p: N;
//! @compute @workgroup_size(KILN_WG)
//! fn fwd(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
//!        @builtin(local_invocation_index) l: u32) {
//!     let i = kiln_index(w, n, l);
//!     if (i < p.n) { out[i] = max(x[i], 0.0) * max(x[i], 0.0); }
//! }
//! @compute @workgroup_size(KILN_WG)
//! fn bwd(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
//!        @builtin(local_invocation_index) l: u32) {
//!     let i = kiln_index(w, n, l);
//!     if (i < p.n) { out[i] = dy[i] * 2.0 * max(x[i], 0.0); }
//! }";
//!
//! /// Squared ReLU: max(x, 0)^2.
//! #[derive(Clone, Copy)]
//! struct ReluSquared;
//!
//! fn run(dev: &Device, entry: &str, bufs: &[&Array]) -> Result<Array> {
//!     let out = Array::empty_like(dev, bufs[0])?;
//!     let k = dev.kernel_from_source("relu_squared", SRC, entry, &[])?;
//!     let mut b: Vec<_> = bufs.iter().map(|a| &a.buf).collect();
//!     b.push(&out.buf);
//!     let n = out.numel();
//!     launch::elementwise(dev, &k, &b, &N { n: n as u32 }, n)?;
//!     Ok(out)
//! }
//!
//! impl Op for ReluSquared {
//!     fn name(&self) -> &str {
//!         "relu_squared"
//!     }
//!     fn arity(&self) -> Option<usize> {
//!         Some(1)
//!     }
//!     fn forward(&self, dev: &Device, x: &[&Array]) -> Result<Forward> {
//!         Ok(run(dev, "fwd", x)?.into())
//!     }
//!     fn backward(&self, dev: &Device, ctx: &Ctx, dy: &Array) -> Result<Vec<Option<Array>>> {
//!         Ok(vec![Some(run(dev, "bwd", &[ctx.inputs[0], dy])?)])
//!     }
//! }
//!
//! let dev = Device::new()?;
//! let x = Tensor::from_f32(&dev, &[-1.0, 0.5, 2.0], &[3])?.requires_grad_(true)?;
//! let y = Tensor::apply(ReluSquared, &[&x])?;
//! gradcheck(|t| Tensor::apply(ReluSquared, &[&t[0]]), &[x])?;
//! # Ok(()) }
//! ```
//!
//! ## Where it runs
//!
//! [`device::Device::new`] takes a GPU where there is one and a software adapter otherwise
//! (`WGPU_BACKEND` and `WGPU_ADAPTER_NAME` choose); a missing adapter is an error naming the
//! driver to install (`scripts/setup.sh` installs lavapipe). Optional features (f16, subgroups,
//! cooperative matrices, timestamps) are used where the adapter has them, with fallbacks.

pub use kiln_device as device;
#[cfg(feature = "dist")]
pub use kiln_dist as dist;
pub use kiln_graph as graph;
pub use kiln_nn as nn;
#[cfg(feature = "hf")]
pub use kiln_nn::hf;
pub use kiln_ops as ops;
pub use kiln_train as train;
