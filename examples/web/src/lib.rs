//! LeNet-5 trained in the browser: the page (`index.html`, `main.js`) fetches the MNIST subset
//! shipped in `data/mnist`, and this module, built for `wasm32-unknown-unknown` and bound to
//! JavaScript by wasm-bindgen, trains kiln's LeNet-5 on it through the browser's WebGPU (wgpu's
//! `webgpu` backend), reports each loss read back for a live plot, measures held-out accuracy,
//! then classifies digits drawn on a canvas.
//!
//! Nothing here blocks: the GPU's work completes between turns of the page's event loop, so every
//! readback is awaited (`kiln::train::fit_async`, `Tensor::to_vec_async`), and each exported
//! method that waits for the GPU returns a `Promise`.

use kiln_graph::{no_grad, Device, Tensor};
use kiln_nn::data::Mnist;
use kiln_nn::lenet::lenet5;
use kiln_nn::schedule::Schedule;
use kiln_nn::{Module, Optimizer, Sequential, Sgd};
use kiln_train::{evaluate_async, fit_async, ArrayDataset, FitConfig, Loss};
use std::cell::Cell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// Images held out of training (the last of the 10,000), as the main job holds them out.
const HELD_OUT: usize = 2000;

/// A LeNet-5 on the browser's WebGPU adapter, with the MNIST subset it trains on.
#[wasm_bindgen]
pub struct Trainer {
    dev: Device,
    model: Rc<Sequential>,
    mnist: Rc<Mnist>,
    /// Set while a call that uses the GPU is in flight: the page runs one at a time.
    busy: Rc<Cell<bool>>,
}

/// Marks the trainer busy until dropped; refuses a second call while one is in flight.
struct Busy(Rc<Cell<bool>>);

impl Busy {
    fn take(flag: &Rc<Cell<bool>>) -> Result<Busy, JsValue> {
        if flag.replace(true) {
            return Err(js(
                "another training, evaluation or classification is running",
            ));
        }
        Ok(Busy(flag.clone()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

fn js(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// Panics go to the browser's console, not into a silent `unreachable` trap.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&JsValue::from_str(&info.to_string()));
    }));
}

#[wasm_bindgen]
impl Trainer {
    /// The device on the browser's WebGPU adapter and a LeNet-5 initialised from `seed`, over the
    /// MNIST files' gzip-compressed bytes; `kernels` forces kernel variants as `KILN_KERNELS`
    /// does natively (`family=variant,...`; empty for the automatic choice). Rejects, with a
    /// message naming the cause, where the browser offers no WebGPU adapter or the files are not
    /// MNIST's.
    pub async fn create(
        images_gz: Vec<u8>,
        labels_gz: Vec<u8>,
        seed: u32,
        kernels: String,
    ) -> Result<Trainer, JsValue> {
        log_panics();
        let mnist = Mnist::from_gz_bytes(&images_gz, &labels_gz).map_err(js)?;
        if mnist.len() <= HELD_OUT {
            return Err(js(format!(
                "{} images: fewer than the {HELD_OUT} held out",
                mnist.len()
            )));
        }
        let policy = kiln_device::KernelPolicy::parse(&kernels).map_err(js)?;
        let dev = Device::new_async().await.map_err(js)?.with_policy(policy);
        let model = lenet5(&dev, seed as u64).map_err(js)?;
        Ok(Trainer {
            dev,
            model: Rc::new(model),
            mnist: Rc::new(mnist),
            busy: Rc::default(),
        })
    }

    /// The adapter: its name, backend, and whether it is a software one.
    pub fn adapter(&self) -> String {
        let a = self.dev.adapter();
        let l = self.dev.limits();
        format!(
            "{} ({}{}; {} storage buffers per stage, {} KiB workgroup memory)",
            if a.name.is_empty() {
                "unnamed adapter"
            } else {
                &a.name
            },
            a.backend,
            if a.is_software { ", software" } else { "" },
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroup_storage_size / 1024
        )
    }

    /// Trains on the first `train_size` images for `epochs` epochs in batches of `batch` (a new
    /// SGD with momentum 0.9, learning rate `lr` cosine-annealed to zero over the run), calling
    /// `on_loss(step, loss)` for each loss read back (every `log_every` steps). Resolves to a
    /// JSON object: steps, seconds of training (held-out evaluation excluded), steps per second.
    #[allow(clippy::too_many_arguments)]
    pub fn train(
        &self,
        train_size: usize,
        epochs: usize,
        batch: usize,
        lr: f32,
        log_every: usize,
        on_loss: js_sys::Function,
    ) -> js_sys::Promise {
        let (dev, model, mnist) = (self.dev.clone(), self.model.clone(), self.mnist.clone());
        let busy = self.busy.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&busy)?;
            let n = train_size.min(mnist.len() - HELD_OUT).max(1);
            let (x, y) = mnist.split(0..n).map_err(js)?;
            let shape = [1, 28, 28];
            let data = ArrayDataset::classes(&x, &shape, &y);
            let steps = epochs * n.div_ceil(batch.max(1));
            let mut opt: Optimizer = Sgd::new(lr)
                .with_momentum(0.9)
                .init(&dev, model.parameters())
                .map_err(js)?;
            opt.set_schedule(Schedule::Cosine {
                t_max: steps as u64,
                min_lr: 0.0,
            });
            let cfg = FitConfig::default()
                .with_epochs(epochs)
                .with_batch_size(batch)
                .with_log_every(log_every)
                .with_progress(false);
            let history = fit_async(
                &dev,
                model.as_ref(),
                &mut opt,
                Loss::CrossEntropy,
                &data,
                cfg,
                |l| {
                    let _ = on_loss.call2(
                        &JsValue::NULL,
                        &JsValue::from(l.step as u32),
                        &JsValue::from(l.loss),
                    );
                },
            )
            .await
            .map_err(js)?;
            let seconds: f64 = history.iter().map(|h| h.train_seconds).sum();
            let done = opt.steps();
            Ok(JsValue::from_str(&format!(
                "{{\"steps\":{done},\"seconds\":{seconds:.3},\"steps_per_second\":{:.3}}}",
                done as f64 / seconds.max(1e-9)
            )))
        })
    }

    /// Held-out accuracy (the last 2,000 images, never trained on), from 0 to 1.
    pub fn evaluate(&self) -> js_sys::Promise {
        let (dev, model, mnist) = (self.dev.clone(), self.model.clone(), self.mnist.clone());
        let busy = self.busy.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&busy)?;
            let len = mnist.len();
            let (x, y) = mnist.split(len - HELD_OUT..len).map_err(js)?;
            let shape = [1, 28, 28];
            let data = ArrayDataset::classes(&x, &shape, &y);
            let (_, acc) = evaluate_async(&dev, model.as_ref(), &data, Loss::CrossEntropy, 500)
                .await
                .map_err(js)?;
            Ok(JsValue::from(acc.unwrap_or(f32::NAN)))
        })
    }

    /// Class probabilities (10) of a 28 x 28 image given as 784 intensities from 0 (background)
    /// to 1 (ink), as MNIST's pixels are.
    pub fn classify(&self, pixels: Vec<f32>) -> js_sys::Promise {
        let (dev, model) = (self.dev.clone(), self.model.clone());
        let busy = self.busy.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&busy)?;
            if pixels.len() != 784 {
                return Err(js(format!(
                    "{} pixels, expected 28 x 28 = 784",
                    pixels.len()
                )));
            }
            let x: Vec<f32> = pixels.iter().map(|p| (p - 0.1307) / 0.3081).collect();
            let probs = no_grad(|| {
                let x = Tensor::from_f32(&dev, &x, &[1, 1, 28, 28])?;
                Ok::<_, kiln_nn::NnError>(model.forward(&x)?.softmax()?)
            })
            .map_err(js)?;
            let p = probs.to_vec_async().await.map_err(js)?;
            Ok(js_sys::Float32Array::from(&p[..]).into())
        })
    }

    /// Held-out image `i` (0 to 1,999) as 784 intensities from 0 to 1, for showing it.
    pub fn held_out_image(&self, i: usize) -> Vec<f32> {
        let at = self.mnist.len() - HELD_OUT + i.min(HELD_OUT - 1);
        self.mnist.images[at * 784..(at + 1) * 784]
            .iter()
            .map(|v| v * 0.3081 + 0.1307)
            .collect()
    }

    /// The label of held-out image `i`.
    pub fn held_out_label(&self, i: usize) -> i32 {
        self.mnist.labels[self.mnist.len() - HELD_OUT + i.min(HELD_OUT - 1)]
    }
}
