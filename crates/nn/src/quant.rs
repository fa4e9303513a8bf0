//! Post-training quantization for inference. Linear and Conv2d weights become int8 (symmetric, one
//! f32 scale per output channel) or f16; each quantized layer's input gets one int8 scale from a
//! calibration pass over a few batches (min/max or a percentile of |x|). Other modules (ReLU,
//! pooling, LayerNorm...) stay f32. Kernels are chosen from the adapter: packed 4 x 8-bit dot
//! products for int8 and f16-weight kernels where `SHADER_F16` exists, else the f32 layers on the
//! dequantized weights.
//!
//! Files are safetensors with PyTorch's names: `fc1.weight` (I8 or F16, PyTorch's shape),
//! `fc1.weight_scale` (F32 `[out]`), `fc1.input_scale` (F32 `[1]`), `fc1.bias` (F32), marked by the
//! metadata key `kiln.quantized`.

use crate::error::{NnError, Result};
use crate::serialize::{self, RawTensor, QUANTIZED_KEY};
use crate::{Conv2d, Linear, Module, Sequential};
use half::f16;
use kiln_graph::{no_grad, Device, Tensor};
use kiln_ops::conv::Conv2dSpec;
use kiln_ops::int8::{self, LayerGeom};
use kiln_ops::{half as f16_ops, Buffer};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;

/// How weights are stored and multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// int8 weights per output channel, int8 activations per tensor, i32 accumulation.
    Int8,
    /// f16 weights, f32 activations and accumulation.
    F16,
}

impl Precision {
    fn name(self) -> &'static str {
        match self {
            Precision::Int8 => "int8",
            Precision::F16 => "f16",
        }
    }
}

/// How each layer's activation range is taken from the calibration batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Calibration {
    /// The largest |x| seen.
    MinMax,
    /// This percentile of |x| (e.g. 99.99): outliers saturate instead of coarsening every step.
    Percentile(f32),
}

/// Quantization settings.
#[derive(Clone, Debug)]
pub struct QuantConfig {
    /// Weight (and activation) precision.
    pub precision: Precision,
    /// Activation range rule (int8 only).
    pub calibration: Calibration,
    /// Examples per calibration batch.
    pub batch_size: usize,
    /// Calibration batches at most (from the start of the calibration set).
    pub batches: usize,
}

impl Default for QuantConfig {
    /// [`QuantConfig::int8`].
    fn default() -> Self {
        QuantConfig::int8()
    }
}

impl QuantConfig {
    /// int8 with min/max calibration over 4 batches of 64.
    pub fn int8() -> QuantConfig {
        QuantConfig {
            precision: Precision::Int8,
            calibration: Calibration::MinMax,
            batch_size: 64,
            batches: 4,
        }
    }
    /// f16 weights (no calibration needed).
    pub fn f16() -> QuantConfig {
        QuantConfig {
            precision: Precision::F16,
            ..QuantConfig::int8()
        }
    }
}

fn bad(message: impl Into<String>) -> NnError {
    NnError::Quantization(message.into())
}

/// Stored weights of one quantized layer.
enum Weights {
    Int8 {
        q: Vec<i8>,
        scales: Vec<f32>,
        x_scale: f32,
    },
    F16(Vec<f16>),
}

/// How a quantized layer runs on this adapter.
enum Exec {
    Int8 {
        packed: Buffer,
        scales: Buffer,
    },
    F16(Buffer),
    /// The f32 layer on the dequantized weights.
    F32 {
        weight: Tensor,
    },
}

/// A Linear or Conv2d layer with quantized weights (inference only).
pub struct QuantizedLayer {
    /// None for Linear.
    conv: Option<Conv2dSpec>,
    /// PyTorch's weight shape.
    shape: Vec<usize>,
    weights: Weights,
    bias: Option<Vec<f32>>,
    /// The bias on the device (zeros when the layer has none).
    bias_tensor: Tensor,
    exec: Exec,
    dev: Device,
}

impl QuantizedLayer {
    fn new(
        dev: &Device,
        conv: Option<Conv2dSpec>,
        shape: Vec<usize>,
        weights: Weights,
        bias: Option<Vec<f32>>,
        f32_only: bool,
    ) -> Result<QuantizedLayer> {
        let m = shape[0];
        let b = bias.clone().unwrap_or_else(|| vec![0.0; m]);
        let bias_tensor = Tensor::from_f32(dev, &b, &[m])?;
        let k = shape[1..].iter().product::<usize>();
        let dequantized = || -> Vec<f32> {
            match &weights {
                Weights::Int8 { q, scales, .. } => q
                    .iter()
                    .enumerate()
                    .map(|(i, v)| *v as f32 * scales[i / k])
                    .collect(),
                Weights::F16(w) => w.iter().map(|v| v.to_f32()).collect(),
            }
        };
        let exec = match &weights {
            Weights::Int8 { q, scales, .. } if !f32_only && int8_supported(dev) => Exec::Int8 {
                packed: dev.upload(&int8::pack_rows(q, k))?,
                scales: dev.upload(scales)?,
            },
            Weights::F16(w) if !f32_only && f16_ops::supported(dev) => Exec::F16(dev.upload(w)?),
            _ => Exec::F32 {
                weight: Tensor::from_f32(dev, &dequantized(), &shape)?,
            },
        };
        Ok(QuantizedLayer {
            conv,
            shape,
            weights,
            bias,
            bias_tensor,
            exec,
            dev: dev.clone(),
        })
    }

    /// Whether this layer runs on its int8 or f16 kernel (false: the f32 fallback).
    pub fn uses_quantized_kernel(&self) -> bool {
        !matches!(self.exec, Exec::F32 { .. })
    }

    fn geom(&self, x: &[usize]) -> kiln_ops::Result<LayerGeom> {
        match self.conv {
            None => LayerGeom::linear("quantized linear", x, &self.shape),
            Some(spec) => LayerGeom::conv("quantized conv2d", x, &self.shape, spec),
        }
    }

    fn raw(&self, name: &str) -> Vec<RawTensor> {
        let mut out = Vec::new();
        match &self.weights {
            Weights::Int8 { q, scales, x_scale } => {
                out.push(RawTensor {
                    name: format!("{name}.weight"),
                    dtype: Dtype::I8,
                    shape: self.shape.clone(),
                    data: q.iter().map(|v| *v as u8).collect(),
                });
                out.push(RawTensor::f32(
                    &format!("{name}.weight_scale"),
                    &[scales.len()],
                    scales,
                ));
                out.push(RawTensor::f32(
                    &format!("{name}.input_scale"),
                    &[1],
                    &[*x_scale],
                ));
            }
            Weights::F16(w) => out.push(RawTensor {
                name: format!("{name}.weight"),
                dtype: Dtype::F16,
                shape: self.shape.clone(),
                data: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }),
        }
        if let Some(b) = &self.bias {
            out.push(RawTensor::f32(&format!("{name}.bias"), &[b.len()], b));
        }
        out
    }
}

/// Whether the int8 kernels build on this adapter (packed dot products are core WGSL; naga
/// lowers them where the hardware lacks them, but a driver may still refuse).
fn int8_supported(dev: &Device) -> bool {
    dev.kernel("int8", "pack_i8", &[]).is_ok()
        && dev.kernel("int8", "matmul_i8_dequant", &[]).is_ok()
}

impl Module for QuantizedLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.geom(x.shape())?;
        let y = match &self.exec {
            Exec::Int8 { packed, scales } => {
                let Weights::Int8 { x_scale, .. } = &self.weights else {
                    unreachable!("int8 execution holds int8 weights")
                };
                int8::layer_i8(
                    &self.dev,
                    x.array(),
                    *x_scale,
                    packed,
                    scales,
                    &self.bias_tensor.array().buf,
                    &g,
                )?
            }
            Exec::F16(w) => {
                f16_ops::layer_f16w(&self.dev, x.array(), w, &self.bias_tensor.array().buf, &g)?
            }
            Exec::F32 { weight } => {
                return Ok(match self.conv {
                    None => x.linear(weight, Some(&self.bias_tensor))?,
                    Some(spec) => x.conv2d(weight, Some(&self.bias_tensor), spec)?,
                })
            }
        };
        Ok(Tensor::from_array(&self.dev, y))
    }
}

/// A model whose Linear and Conv2d layers are quantized; runs forward only (use it with
/// `train::evaluate` and `train::predict`).
pub struct QuantizedModel {
    layers: Sequential,
    precision: Precision,
    example_shape: Vec<usize>,
}

/// Flattens nested `Sequential`s into dotted names (`block.0`), as their parameters are named.
fn flatten(prefix: &str, seq: Sequential) -> Vec<(String, Box<dyn Module>)> {
    let mut out = Vec::new();
    for (name, m) in seq.into_layers() {
        let name = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        if (*m).as_any().is::<Sequential>() {
            let inner = m.into_any().downcast::<Sequential>().expect("checked type");
            out.extend(flatten(&name, *inner));
        } else {
            out.push((name, m));
        }
    }
    out
}

/// (conv spec or None for Linear, weight, bias) of a quantizable module.
fn quantizable(m: &dyn Module) -> Option<(Option<Conv2dSpec>, &Tensor, Option<&Tensor>)> {
    let any = m.as_any();
    if let Some(l) = any.downcast_ref::<Linear>() {
        return Some((None, &l.weight, l.bias.as_ref()));
    }
    any.downcast_ref::<Conv2d>()
        .map(|c| (Some(c.spec), &c.weight, c.bias.as_ref()))
}

/// Running range statistics of one layer's input.
enum Stats {
    Max(f32),
    Values(Vec<f32>),
}

impl Stats {
    fn add(&mut self, v: &[f32]) {
        match self {
            Stats::Max(m) => *m = v.iter().fold(*m, |a, x| a.max(x.abs())),
            Stats::Values(all) => all.extend(v.iter().map(|x| x.abs())),
        }
    }
    fn range(self, rule: Calibration) -> f32 {
        match (self, rule) {
            (Stats::Max(m), _) => m,
            (Stats::Values(mut all), Calibration::Percentile(p)) => {
                if all.is_empty() {
                    return 0.0;
                }
                let i = (((p as f64 / 100.0) * (all.len() - 1) as f64).round() as usize)
                    .min(all.len() - 1);
                *all.select_nth_unstable_by(i, f32::total_cmp).1
            }
            (Stats::Values(all), Calibration::MinMax) => all.iter().fold(0.0, |a, x| a.max(*x)),
        }
    }
}

/// Quantizes `model`, calibrating activation ranges on `x` (examples of `example_shape`, e.g.
/// [1, 28, 28]; the first `cfg.batches` batches are used).
pub fn quantize(
    dev: &Device,
    model: Sequential,
    x: &[f32],
    example_shape: &[usize],
    cfg: &QuantConfig,
) -> Result<QuantizedModel> {
    let width: usize = example_shape.iter().product();
    if width == 0 || x.is_empty() || !x.len().is_multiple_of(width) {
        return Err(bad(format!(
            "calibration set: expected whole examples of shape {example_shape:?} ({width} values each), got {} values",
            x.len()
        )));
    }
    if let Calibration::Percentile(p) = cfg.calibration {
        if !(p > 0.0 && p <= 100.0) {
            return Err(bad(format!("percentile must be in (0, 100], got {p}")));
        }
    }
    if cfg.batch_size == 0 || cfg.batches == 0 {
        return Err(bad(
            "calibration needs at least one batch of at least one example",
        ));
    }
    let layers = flatten("", model);
    let mut stats: HashMap<usize, Stats> = HashMap::new();
    let n = (x.len() / width).min(cfg.batch_size * cfg.batches);
    no_grad(|| -> Result<()> {
        for start in (0..n).step_by(cfg.batch_size) {
            let b = cfg.batch_size.min(n - start);
            let shape: Vec<usize> = std::iter::once(b)
                .chain(example_shape.iter().copied())
                .collect();
            let mut h = Tensor::from_f32(dev, &x[start * width..(start + b) * width], &shape)?;
            for (i, (name, m)) in layers.iter().enumerate() {
                if quantizable(m.as_ref()).is_some() && cfg.precision == Precision::Int8 {
                    let s = stats.entry(i).or_insert_with(|| match cfg.calibration {
                        Calibration::MinMax => Stats::Max(0.0),
                        Calibration::Percentile(_) => Stats::Values(Vec::new()),
                    });
                    s.add(&h.to_vec()?);
                }
                h = m.forward(&h).map_err(|e| {
                    bad(format!(
                        "calibration examples of shape {example_shape:?} do not fit the model at layer `{name}`: {e}"
                    ))
                })?;
            }
        }
        Ok(())
    })?;
    let mut out = Vec::with_capacity(layers.len());
    for (i, (name, m)) in layers.into_iter().enumerate() {
        let Some((conv, w, b)) = quantizable(m.as_ref()) else {
            out.push((name, m));
            continue;
        };
        let shape = w.shape().to_vec();
        let values = w.to_vec()?;
        let weights = match cfg.precision {
            Precision::Int8 => {
                let k = values.len() / shape[0];
                let (q, scales) = int8::quantize_rows(&values, shape[0], k);
                let range = stats.remove(&i).map_or(0.0, |s| s.range(cfg.calibration));
                Weights::Int8 {
                    q,
                    scales,
                    x_scale: int8::scale_for(range),
                }
            }
            Precision::F16 => Weights::F16(f16_ops::to_f16(&values)),
        };
        let bias = b.map(|b| b.to_vec()).transpose()?;
        let layer = QuantizedLayer::new(dev, conv, shape, weights, bias, false)?;
        out.push((name, Box::new(layer) as Box<dyn Module>));
    }
    Ok(QuantizedModel {
        layers: Sequential::from_layers(out),
        precision: cfg.precision,
        example_shape: example_shape.to_vec(),
    })
}

impl QuantizedModel {
    /// The weight precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The per-example input shape it was calibrated for.
    pub fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }

    fn quantized(&self) -> impl Iterator<Item = (&str, &QuantizedLayer)> {
        self.layers
            .layers()
            .filter_map(|(n, m)| m.as_any().downcast_ref::<QuantizedLayer>().map(|q| (n, q)))
    }

    /// Whether every quantized layer runs on its int8 or f16 kernel on this adapter.
    pub fn uses_quantized_kernels(&self) -> bool {
        self.quantized().all(|(_, q)| q.uses_quantized_kernel())
    }

    /// The same model on the f32 fallback path (dequantized weights), to compare against.
    pub fn to_f32_fallback(
        &self,
        dev: &Device,
        architecture: Sequential,
    ) -> Result<QuantizedModel> {
        self.rebuild(dev, architecture, true)
    }

    fn rebuild(
        &self,
        dev: &Device,
        architecture: Sequential,
        f32_only: bool,
    ) -> Result<QuantizedModel> {
        let mut tensors: HashMap<String, RawTensor> = self
            .to_raw()?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let meta = self.metadata();
        from_raw(
            dev,
            &mut tensors,
            &meta,
            architecture,
            f32_only,
            Path::new("<memory>"),
        )
    }

    fn metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            (QUANTIZED_KEY.to_string(), self.precision.name().to_string()),
            (
                SHAPE_KEY.to_string(),
                self.example_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ])
    }

    fn to_raw(&self) -> Result<Vec<RawTensor>> {
        let mut out = Vec::new();
        for (name, m) in self.layers.layers() {
            match m.as_any().downcast_ref::<QuantizedLayer>() {
                Some(q) => out.extend(q.raw(name)),
                None => {
                    for (p, t) in m.named_parameters() {
                        out.push(RawTensor::f32(
                            &format!("{name}.{p}"),
                            t.shape(),
                            &t.to_vec()?,
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Writes the model as safetensors (atomically, with a checksum).
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta: Vec<(String, String)> = self.metadata().into_iter().collect();
        serialize::save_raw(path, self.to_raw()?, &meta)
    }

    /// Loads a file written by [`QuantizedModel::save`] into `architecture` (the f32 model it was
    /// quantized from, freshly built: its Linear and Conv2d layers are replaced). Every tensor must
    /// match by name, dtype and shape.
    pub fn load(dev: &Device, path: &Path, architecture: Sequential) -> Result<QuantizedModel> {
        let (mut tensors, meta) = serialize::read_raw(path)?;
        from_raw(dev, &mut tensors, &meta, architecture, false, path)
    }
}

const SHAPE_KEY: &str = "kiln.example_shape";

fn take(
    tensors: &mut HashMap<String, RawTensor>,
    path: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
) -> Result<RawTensor> {
    let t = tensors
        .remove(name)
        .ok_or_else(|| serialize::err(path, format!("missing tensor `{name}`")))?;
    if t.dtype != dtype || t.shape != shape {
        return Err(serialize::err(
            path,
            format!(
                "`{name}`: expected {dtype:?} {shape:?}, the file holds {:?} {:?}",
                t.dtype, t.shape
            ),
        ));
    }
    Ok(t)
}

fn from_raw(
    dev: &Device,
    tensors: &mut HashMap<String, RawTensor>,
    meta: &HashMap<String, String>,
    architecture: Sequential,
    f32_only: bool,
    path: &Path,
) -> Result<QuantizedModel> {
    let precision = match meta.get(QUANTIZED_KEY).map(String::as_str) {
        Some("int8") => Precision::Int8,
        Some("f16") => Precision::F16,
        Some(other) => {
            return Err(serialize::err(
                path,
                format!("unknown quantization `{other}`"),
            ))
        }
        None => return Err(serialize::err(
            path,
            "not a quantized model file (it holds f32 parameters: load it with checkpoint::load)",
        )),
    };
    let example_shape = meta
        .get(SHAPE_KEY)
        .and_then(|s| {
            s.split(',')
                .map(|d| d.parse().ok())
                .collect::<Option<Vec<usize>>>()
        })
        .ok_or_else(|| serialize::err(path, format!("missing or bad `{SHAPE_KEY}` metadata")))?;
    let mut layers = Vec::new();
    for (name, m) in flatten("", architecture) {
        let Some((conv, w, b)) = quantizable(m.as_ref()) else {
            // f32 parameters of the other modules, written into the architecture's tensors.
            for (p, t) in m.named_parameters() {
                let raw = take(tensors, path, &format!("{name}.{p}"), Dtype::F32, t.shape())?;
                t.copy_from_slice(&raw.to_f32())?;
            }
            layers.push((name, m));
            continue;
        };
        let shape = w.shape().to_vec();
        let m_out = shape[0];
        let weights = match precision {
            Precision::Int8 => {
                let q = take(tensors, path, &format!("{name}.weight"), Dtype::I8, &shape)?;
                let scales = take(
                    tensors,
                    path,
                    &format!("{name}.weight_scale"),
                    Dtype::F32,
                    &[m_out],
                )?;
                let xs = take(
                    tensors,
                    path,
                    &format!("{name}.input_scale"),
                    Dtype::F32,
                    &[1],
                )?;
                Weights::Int8 {
                    q: q.data.iter().map(|v| *v as i8).collect(),
                    scales: scales.to_f32(),
                    x_scale: xs.to_f32()[0],
                }
            }
            Precision::F16 => {
                let w = take(tensors, path, &format!("{name}.weight"), Dtype::F16, &shape)?;
                Weights::F16(
                    w.data
                        .chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                )
            }
        };
        let bias = match b {
            Some(_) => {
                Some(take(tensors, path, &format!("{name}.bias"), Dtype::F32, &[m_out])?.to_f32())
            }
            None => None,
        };
        let layer = QuantizedLayer::new(dev, conv, shape, weights, bias, f32_only)?;
        layers.push((name, Box::new(layer) as Box<dyn Module>));
    }
    if !tensors.is_empty() {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        return Err(serialize::err(
            path,
            format!("tensors the architecture does not have: {names:?}"),
        ));
    }
    Ok(QuantizedModel {
        layers: Sequential::from_layers(layers),
        precision,
        example_shape,
    })
}

impl Module for QuantizedModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.shape().get(1..) != Some(&self.example_shape[..]) {
            return Err(bad(format!(
                "expected inputs [batch, {}] (the calibrated example shape), got {:?}",
                self.example_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                x.shape()
            )));
        }
        self.layers.forward(x)
    }
    /// The stack's layers (a quantized model's names are its source model's).
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.children()
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        self.layers.children_mut()
    }
}
