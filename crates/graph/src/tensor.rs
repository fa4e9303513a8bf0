//! `Tensor`: an array on the device plus what autograd needs (its inputs and backward rule).

use crate::Result;
use kiln_ops::conv::{self, Conv2dSpec};
use kiln_ops::elementwise::{self, Binary, Unary};
use kiln_ops::pool::{self, Pool2dSpec};
use kiln_ops::reduce::{self, Reduce};
use kiln_ops::{layout, matmul, softmax, Array, DType, Device, OpError};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Computes the gradients of a node's inputs from the gradient of its output
/// (`None` for an input that needs none).
type BackwardFn = Box<dyn Fn(&Device, &Array) -> Result<Vec<Option<Array>>> + Send + Sync>;

/// How a node passes its gradient to its inputs.
enum Backward {
    /// A rule giving each input's whole gradient.
    Rule(BackwardFn),
    /// A slice of input 0, `start ..` along `axis`: the backward pass adds the gradient into
    /// that slice of the input's gradient, in place where the pass made that buffer itself. So
    /// many slices of one tensor (an RNN's time steps, an LSTM's gates) cost one zero-filled
    /// gradient and a copy each, not a zero-filled full-size gradient and a full-size add each.
    Slice { axis: usize, start: usize },
}

struct Node {
    id: u64,
    dev: Device,
    data: Array,
    /// Atomic so a parameter can be frozen after it is made (fine-tuning).
    requires_grad: std::sync::atomic::AtomicBool,
    grad: Mutex<Option<Array>>,
    inputs: Vec<Tensor>,
    backward: Option<(&'static str, Backward)>,
}

/// A device array with autograd. Cloning is cheap and shares the node (like a PyTorch reference).
#[derive(Clone)]
pub struct Tensor(Arc<Node>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, requires_grad={})",
            self.shape(),
            self.needs_grad()
        )
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    static AUTOCAST_F16: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with matmuls (and so Linear layers and attention projections) in mixed precision, as
/// `torch.autocast(dtype=torch.float16)`: f32 operands are cast to f16, products are summed in f32
/// and results stay f32; the parameters themselves stay f32 (master weights), and their
/// gradients arrive in f32. The f16 products run on cooperative matrices where the adapter has
/// them and are widened to f32 elsewhere, so forward values are the same on every adapter;
/// backward, only cooperative matrices round the output gradients to f16 (after a power-of-two
/// scaling, see `kiln_ops::matmul::matmul_backward`).
pub fn autocast_f16<T>(f: impl FnOnce() -> T) -> T {
    let prev = AUTOCAST_F16.with(|a| a.replace(true));
    let out = f();
    AUTOCAST_F16.with(|a| a.set(prev));
    out
}

/// [`autocast_f16`] where `enabled`, else `f` as it stands (`torch.autocast(enabled=...)`).
pub fn autocast_f16_when<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if enabled {
        autocast_f16(f)
    } else {
        f()
    }
}

/// Whether matmuls on this thread run in mixed precision ([`autocast_f16`]).
pub fn is_autocast_f16() -> bool {
    AUTOCAST_F16.with(|a| a.get())
}

/// Runs `f` without recording gradients (evaluation, inference), as `torch.no_grad()`.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    let out = f();
    GRAD_ENABLED.with(|g| g.set(prev));
    out
}

/// Whether ops record gradients on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Stores a leaf's final gradient from a backward pass (added to what an earlier pass left, as
/// PyTorch accumulates) and tells the caller's hook.
fn finish_leaf(
    dev: &Device,
    leaf: &Tensor,
    g: Array,
    on_leaf: &mut dyn FnMut(&Tensor) -> Result<()>,
) -> Result<()> {
    {
        let mut slot = leaf.0.grad.lock().unwrap();
        *slot = Some(match slot.take() {
            Some(prev) => elementwise::binary(dev, &prev, &g, Binary::Add)?,
            None => g,
        });
    }
    on_leaf(leaf)
}

impl Tensor {
    fn make(
        dev: &Device,
        data: Array,
        requires_grad: bool,
        inputs: Vec<Tensor>,
        backward: Option<(&'static str, Backward)>,
    ) -> Tensor {
        Tensor(Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            dev: dev.clone(),
            data,
            requires_grad: std::sync::atomic::AtomicBool::new(requires_grad),
            grad: Mutex::new(None),
            inputs,
            backward,
        }))
    }

    /// A tensor wrapping an array (a leaf).
    pub fn from_array(dev: &Device, data: Array, requires_grad: bool) -> Tensor {
        Tensor::make(dev, data, requires_grad, Vec::new(), None)
    }

    /// A leaf from f32 data.
    pub fn from_f32(dev: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_array(
            dev,
            Array::from_f32(dev, data, shape)?,
            false,
        ))
    }

    /// A leaf from i32 data (labels).
    pub fn from_i32(dev: &Device, data: &[i32], shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_array(
            dev,
            Array::from_i32(dev, data, shape)?,
            false,
        ))
    }

    /// A leaf of `value`s.
    pub fn full(dev: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        Ok(Tensor::from_array(
            dev,
            Array::full(dev, shape, value)?,
            false,
        ))
    }

    /// The same data as a leaf that requires grad (a parameter).
    pub fn requires_grad(self, yes: bool) -> Tensor {
        Tensor::make(&self.0.dev, self.0.data.clone(), yes, Vec::new(), None)
    }

    /// Records an op's result: a graph node when grad mode is on and any input requires grad.
    fn record(
        &self,
        data: Array,
        inputs: Vec<Tensor>,
        name: &'static str,
        backward: BackwardFn,
    ) -> Tensor {
        self.record_as(data, inputs, name, Backward::Rule(backward))
    }

    fn record_as(
        &self,
        data: Array,
        inputs: Vec<Tensor>,
        name: &'static str,
        backward: Backward,
    ) -> Tensor {
        if is_grad_enabled()
            && inputs
                .iter()
                .any(|t| t.0.requires_grad.load(Ordering::Relaxed))
        {
            Tensor::make(&self.0.dev, data, true, inputs, Some((name, backward)))
        } else {
            Tensor::make(&self.0.dev, data, false, Vec::new(), None)
        }
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.0.data.shape
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.data.numel()
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.0.data.dtype()
    }
    /// The same values as `dtype` (f32 or f16). Gradients pass through unchanged, in f32.
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        let out = kiln_ops::half::cast(&self.0.dev, &self.0.data, dtype)?;
        let backward: BackwardFn = Box::new(|_, g| Ok(vec![Some(g.clone())]));
        Ok(self.record(out, vec![self.clone()], "cast", backward))
    }
    /// The device array.
    pub fn array(&self) -> &Array {
        &self.0.data
    }
    /// The device.
    pub fn device(&self) -> &Device {
        &self.0.dev
    }
    /// Whether gradients flow to or through this tensor.
    pub fn needs_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }

    /// Freezes (false) or unfreezes a leaf, as PyTorch's `requires_grad_`: a frozen parameter
    /// gets no gradient, so optimizers leave it unchanged. Ops recorded afterwards see the change.
    pub fn set_requires_grad(&self, yes: bool) {
        self.0.requires_grad.store(yes, Ordering::Relaxed);
        if !yes {
            self.zero_grad();
        }
    }
    /// True for a tensor no op produced (inputs, parameters).
    pub fn is_leaf(&self) -> bool {
        self.0.backward.is_none()
    }
    /// Reads the values back (submits pending work).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.0.data.to_f32(&self.0.dev)
    }
    /// Reads a one-element tensor back.
    pub fn item(&self) -> Result<f32> {
        Ok(self.to_vec()?[0])
    }
    /// The accumulated gradient of a leaf after [`Tensor::backward`].
    pub fn grad(&self) -> Option<Array> {
        self.0.grad.lock().unwrap().clone()
    }
    /// Clears the gradient (as `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap() = None;
    }
    /// The same data, cut from the graph.
    pub fn detach(&self) -> Tensor {
        Tensor::from_array(&self.0.dev, self.0.data.clone(), false)
    }
    /// True when both handles are the same node.
    pub fn same(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Back-propagates from this scalar: every leaf that requires grad gets (or accumulates) its
    /// gradient. Intermediate gradients are freed as soon as they are used.
    pub fn backward(&self) -> Result<()> {
        self.backward_with(&mut |_| Ok(()))
    }

    /// [`Tensor::backward`], calling `on_leaf` with each leaf as soon as its gradient is final
    /// (as PyTorch's post-accumulate-grad hooks): right after the last op that reads the leaf has
    /// passed its gradient back, so the last layer's parameters come first. Data-parallel
    /// training starts sending a group of gradients while the rest of backward still runs.
    pub fn backward_with(&self, on_leaf: &mut dyn FnMut(&Tensor) -> Result<()>) -> Result<()> {
        if self.numel() != 1 {
            return Err(OpError::Shape {
                op: "backward",
                expected: "a scalar (1 element) to start from".into(),
                got: format!("{:?}", self.shape()),
            });
        }
        let dev = &self.0.dev;
        // Reverse topological order by depth-first search (iterative: deep graphs, e.g. RNNs).
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![(self.clone(), false)];
        while let Some((t, done)) = stack.pop() {
            if done {
                order.push(t);
                continue;
            }
            if !t.0.requires_grad.load(Ordering::Relaxed) || !seen.insert(t.0.id) {
                continue;
            }
            stack.push((t.clone(), true));
            for i in &t.0.inputs {
                stack.push((i.clone(), false));
            }
        }
        // For each leaf, the edges into it from the nodes backward will visit: once all of them
        // have passed their part on, the leaf's gradient is final, however much later the leaf
        // itself comes in `order`.
        let mut waiting: HashMap<u64, usize> = HashMap::new();
        for t in order.iter().filter(|t| !t.is_leaf()) {
            for i in t.0.inputs.iter().filter(|i| i.is_leaf() && i.needs_grad()) {
                *waiting.entry(i.0.id).or_default() += 1;
            }
        }
        let mut grads: HashMap<u64, Array> = HashMap::new();
        // Nodes whose gradient so far is a buffer this pass allocated and nothing else holds
        // (a sum it made), which slices may add into in place.
        let mut owned: HashSet<u64> = HashSet::new();
        grads.insert(self.0.id, Array::full(dev, self.shape(), 1.0)?);
        for t in order.iter().rev() {
            if let Some(g) = grads.remove(&t.0.id) {
                match &t.0.backward {
                    // Reached only when backward starts from a leaf: others finish below.
                    None => finish_leaf(dev, t, g, on_leaf)?,
                    Some((_, Backward::Slice { axis, start })) => {
                        let inp = &t.0.inputs[0];
                        if inp.0.requires_grad.load(Ordering::Relaxed) {
                            let acc = match grads.remove(&inp.0.id) {
                                Some(prev) if owned.contains(&inp.0.id) => prev,
                                Some(prev) => layout::copy(dev, &prev)?,
                                None => Array::full(dev, inp.shape(), 0.0)?,
                            };
                            layout::slice_add(dev, &acc, &g, *axis, *start)?;
                            grads.insert(inp.0.id, acc);
                            owned.insert(inp.0.id);
                        }
                    }
                    Some((_, Backward::Rule(f))) => {
                        let input_grads = f(dev, &g)?;
                        for (inp, ig) in t.0.inputs.iter().zip(input_grads) {
                            let Some(ig) = ig else { continue };
                            if !inp.0.requires_grad.load(Ordering::Relaxed) {
                                continue;
                            }
                            let id = inp.0.id;
                            let acc = match grads.remove(&id) {
                                Some(prev) => {
                                    owned.insert(id);
                                    elementwise::binary(dev, &prev, &ig, Binary::Add)?
                                }
                                // A rule's result may be shared (an add passes g to both sides):
                                // not owned.
                                None => ig,
                            };
                            grads.insert(id, acc);
                        }
                    }
                }
            }
            // This node has passed its part on (or had none to pass).
            if t.is_leaf() {
                continue;
            }
            for inp in t.0.inputs.iter().filter(|i| i.is_leaf() && i.needs_grad()) {
                let Some(n) = waiting.get_mut(&inp.0.id) else {
                    continue;
                };
                *n -= 1;
                if *n == 0 {
                    if let Some(g) = grads.remove(&inp.0.id) {
                        finish_leaf(dev, inp, g, on_leaf)?;
                    }
                }
            }
        }
        Ok(())
    }

    // ---- element-wise ----

    fn binary_op(&self, other: &Tensor, op: Binary) -> Result<Tensor> {
        let dev = &self.0.dev;
        let out = elementwise::binary(dev, &self.0.data, &other.0.data, op)?;
        let (a, b) = (self.0.data.clone(), other.0.data.clone());
        let backward: BackwardFn = Box::new(move |dev, g| {
            use Binary::*;
            let (ga, gb) = match op {
                Add => (g.clone(), g.clone()),
                Sub => (g.clone(), elementwise::unary(dev, g, Unary::Neg)?),
                Mul => (
                    elementwise::binary(dev, g, &b, Mul)?,
                    elementwise::binary(dev, g, &a, Mul)?,
                ),
                Div => {
                    let ga = elementwise::binary(dev, g, &b, Div)?;
                    // d(a/b)/db = -a/b^2 = -(a/b)/b
                    let q = elementwise::binary(dev, &a, &b, Div)?;
                    let q = elementwise::binary(dev, &q, &b, Div)?;
                    let gb = elementwise::binary(dev, g, &q, Mul)?;
                    (ga, elementwise::unary(dev, &gb, Unary::Neg)?)
                }
                _ => {
                    return Err(OpError::Invalid {
                        op: "backward",
                        message: format!("{op:?} has no gradient"),
                    })
                }
            };
            Ok(vec![
                Some(reduce::sum_to(dev, &ga, &a.shape)?),
                Some(reduce::sum_to(dev, &gb, &b.shape)?),
            ])
        });
        Ok(self.record(out, vec![self.clone(), other.clone()], "binary", backward))
    }

    /// self + other (broadcasting).
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, Binary::Add)
    }
    /// self - other (broadcasting).
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, Binary::Sub)
    }
    /// self * other (broadcasting).
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, Binary::Mul)
    }
    /// self / other (broadcasting).
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, Binary::Div)
    }
    /// Element-wise comparison or max/min without gradient (masks).
    pub fn compare(&self, other: &Tensor, op: Binary) -> Result<Tensor> {
        let out = elementwise::binary(&self.0.dev, &self.0.data, &other.0.data, op)?;
        Ok(Tensor::from_array(&self.0.dev, out, false))
    }

    /// y = f(x) for a unary function.
    pub fn unary(&self, op: Unary) -> Result<Tensor> {
        let out = elementwise::unary(&self.0.dev, &self.0.data, op)?;
        let x = self.0.data.clone();
        let backward: BackwardFn =
            Box::new(move |dev, g| Ok(vec![Some(elementwise::unary_backward(dev, &x, g, op)?)]));
        Ok(self.record(out, vec![self.clone()], "unary", backward))
    }
    /// max(x, 0).
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(Unary::Relu)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(Unary::Sigmoid)
    }
    /// tanh.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(Unary::Tanh)
    }
    /// GELU (erf form).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(Unary::Gelu)
    }
    /// e^x.
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(Unary::Exp)
    }
    /// ln x.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(Unary::Log)
    }
    /// -x.
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(Unary::Neg)
    }
    /// x^2.
    pub fn square(&self) -> Result<Tensor> {
        self.unary(Unary::Square)
    }
    /// alpha * x + beta.
    pub fn affine(&self, alpha: f32, beta: f32) -> Result<Tensor> {
        self.unary(Unary::Affine(alpha, beta))
    }

    // ---- shape ----

    /// The same data under another shape (free).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let out = self.0.data.reshape(shape)?;
        let orig = self.0.data.shape.clone();
        let backward: BackwardFn = Box::new(move |_, g| Ok(vec![Some(g.reshape(&orig)?)]));
        Ok(self.record(out, vec![self.clone()], "reshape", backward))
    }
    /// Flattens every dimension after the first: [N, ...] -> [N, rest].
    pub fn flatten(&self) -> Result<Tensor> {
        let n = *self.shape().first().unwrap_or(&1);
        self.reshape(&[n, self.numel() / n.max(1)])
    }
    /// Reorders dimensions.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let out = layout::permute(&self.0.dev, &self.0.data, perm)?;
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let backward: BackwardFn =
            Box::new(move |dev, g| Ok(vec![Some(layout::permute(dev, g, &inv)?)]));
        Ok(self.record(out, vec![self.clone()], "permute", backward))
    }
    /// Swaps two dimensions.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let mut perm: Vec<usize> = (0..self.shape().len()).collect();
        if a >= perm.len() || b >= perm.len() {
            return Err(OpError::Invalid {
                op: "transpose",
                message: format!("axes ({a}, {b}) for shape {:?}", self.shape()),
            });
        }
        perm.swap(a, b);
        self.permute(&perm)
    }
    /// A slice along one axis.
    pub fn slice(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let out = layout::slice(&self.0.dev, &self.0.data, axis, start, len)?;
        let backward = Backward::Slice { axis, start };
        Ok(self.record_as(out, vec![self.clone()], "slice", backward))
    }
    /// Joins tensors along an axis.
    pub fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
        let first = parts.first().ok_or(OpError::Invalid {
            op: "concat",
            message: "no tensors".into(),
        })?;
        let arrays: Vec<&Array> = parts.iter().map(|t| &t.0.data).collect();
        let out = layout::concat(&first.0.dev, &arrays, axis)?;
        let lens: Vec<usize> = parts.iter().map(|t| t.shape()[axis]).collect();
        let backward: BackwardFn = Box::new(move |dev, g| {
            let mut at = 0;
            lens.iter()
                .map(|&l| {
                    let s = layout::slice(dev, g, axis, at, l);
                    at += l;
                    s.map(Some)
                })
                .collect()
        });
        Ok(first.record(
            out,
            parts.iter().map(|t| (*t).clone()).collect(),
            "concat",
            backward,
        ))
    }

    // ---- reductions ----

    /// Sum along an axis.
    pub fn sum(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(axis, keepdim, Reduce::Sum)
    }
    /// Mean along an axis.
    pub fn mean(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(axis, keepdim, Reduce::Mean)
    }
    fn reduce(&self, axis: usize, keepdim: bool, op: Reduce) -> Result<Tensor> {
        let out = reduce::reduce(&self.0.dev, &self.0.data, axis, op, keepdim)?;
        let shape = self.0.data.shape.clone();
        let backward: BackwardFn = Box::new(move |dev, g| {
            let mut kept = shape.clone();
            kept[axis] = 1;
            let g = layout::broadcast_to(dev, &g.reshape(&kept)?, &shape)?;
            Ok(vec![Some(match op {
                Reduce::Mean => {
                    elementwise::unary(dev, &g, Unary::Affine(1.0 / shape[axis] as f32, 0.0))?
                }
                _ => g,
            })])
        });
        if op == Reduce::Max {
            return Ok(Tensor::from_array(&self.0.dev, out, false));
        }
        Ok(self.record(out, vec![self.clone()], "reduce", backward))
    }
    /// Sum of all elements, shape `[1]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reshape(&[1, self.numel()])?.sum(1, false)
    }
    /// Mean of all elements, shape `[1]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.reshape(&[1, self.numel()])?.mean(1, false)
    }
    /// Index of the maximum along an axis (i32, no gradient).
    pub fn argmax(&self, axis: usize) -> Result<Array> {
        Ok(reduce::argmax(&self.0.dev, &self.0.data, axis)?.1)
    }

    // ---- linear algebra and layers ----

    /// op(self) op(other) (+ bias), batched; see [`matmul::matmul`].
    pub fn matmul_t(
        &self,
        other: &Tensor,
        ta: bool,
        tb: bool,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        if is_autocast_f16() && self.dtype() == DType::F32 && other.dtype() == DType::F32 {
            let (a, b) = (self.cast(DType::F16)?, other.cast(DType::F16)?);
            return a.matmul_t(&b, ta, tb, bias);
        }
        let dev = &self.0.dev;
        let out = matmul::matmul(
            dev,
            &self.0.data,
            &other.0.data,
            ta,
            tb,
            bias.map(|b| &b.0.data),
        )?;
        let (a, b) = (self.0.data.clone(), other.0.data.clone());
        let has_bias = bias.is_some();
        // The network's input or a frozen weight needs no gradient: skip its product.
        let need = [
            self.needs_grad(),
            other.needs_grad(),
            bias.is_some_and(|b| b.needs_grad()),
        ];
        let backward: BackwardFn = Box::new(move |dev, g| {
            let (da, db, dbias) = matmul::matmul_backward(dev, &a, &b, ta, tb, g, need)?;
            let mut v = vec![da, db];
            if has_bias {
                v.push(dbias);
            }
            Ok(v)
        });
        let mut inputs = vec![self.clone(), other.clone()];
        inputs.extend(bias.cloned());
        Ok(self.record(out, inputs, "matmul", backward))
    }
    /// self @ other.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_t(other, false, false, None)
    }
    /// x @ w^T + b with PyTorch's Linear layout (w: [out, in]).
    pub fn linear(&self, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.matmul_t(w, false, true, b)
    }

    /// 2-D convolution (NCHW) with PyTorch's weight layout [Co, Ci, KH, KW].
    pub fn conv2d(&self, w: &Tensor, b: Option<&Tensor>, spec: Conv2dSpec) -> Result<Tensor> {
        let dev = &self.0.dev;
        let out = conv::conv2d(dev, &self.0.data, &w.0.data, b.map(|b| &b.0.data), &spec)?;
        let (x, wa) = (self.0.data.clone(), w.0.data.clone());
        let (need_x, has_bias) = (self.needs_grad(), b.is_some());
        let backward: BackwardFn = Box::new(move |dev, g| {
            // The network's input needs no gradient: skip the most expensive product.
            let dx = if need_x {
                Some(conv::conv2d_backward_input(dev, g, &wa, &x.shape, &spec)?)
            } else {
                None
            };
            Ok(if has_bias {
                let (dw, db) = conv::conv2d_backward_weight_bias(dev, g, &x, &wa.shape, &spec)?;
                vec![dx, Some(dw), Some(db)]
            } else {
                vec![
                    dx,
                    Some(conv::conv2d_backward_weight(dev, g, &x, &wa.shape, &spec)?),
                ]
            })
        });
        let mut inputs = vec![self.clone(), w.clone()];
        inputs.extend(b.cloned());
        Ok(self.record(out, inputs, "conv2d", backward))
    }

    /// Max pooling.
    pub fn max_pool2d(&self, spec: Pool2dSpec) -> Result<Tensor> {
        let (out, idx) = pool::max_pool2d(&self.0.dev, &self.0.data, &spec)?;
        let shape = self.0.data.shape.clone();
        let backward: BackwardFn = Box::new(move |dev, g| {
            Ok(vec![Some(pool::max_pool2d_backward(
                dev, g, &idx, &shape, &spec,
            )?)])
        });
        Ok(self.record(out, vec![self.clone()], "max_pool2d", backward))
    }
    /// Average pooling.
    pub fn avg_pool2d(&self, spec: Pool2dSpec) -> Result<Tensor> {
        let out = pool::avg_pool2d(&self.0.dev, &self.0.data, &spec)?;
        let shape = self.0.data.shape.clone();
        let backward: BackwardFn = Box::new(move |dev, g| {
            Ok(vec![Some(pool::avg_pool2d_backward(
                dev, g, &shape, &spec,
            )?)])
        });
        Ok(self.record(out, vec![self.clone()], "avg_pool2d", backward))
    }

    /// Dropout with drop probability `p`, drawing its mask from the generator state in `rng`
    /// (see [`kiln_ops::dropout::DropoutRng`]). The backward pass reuses the same mask.
    pub fn dropout(&self, p: f32, rng: &kiln_ops::Buffer) -> Result<Tensor> {
        let out = kiln_ops::dropout::dropout(&self.0.dev, &self.0.data, p, rng)?;
        let rng = rng.clone();
        let backward: BackwardFn =
            Box::new(move |dev, g| Ok(vec![Some(kiln_ops::dropout::dropout(dev, g, p, &rng)?)]));
        Ok(self.record(out, vec![self.clone()], "dropout", backward))
    }

    /// Layer normalisation over the last axis with affine parameters `[cols]`.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let (out, saved) = kiln_ops::norm::layer_norm(
            &self.0.dev,
            &self.0.data,
            &gamma.0.data,
            &beta.0.data,
            eps,
        )?;
        let (x, g) = (self.0.data.clone(), gamma.0.data.clone());
        let backward: BackwardFn = Box::new(move |dev, dy| {
            let (dx, dg, db) = kiln_ops::norm::layer_norm_backward(dev, &x, &g, &saved, dy)?;
            Ok(vec![Some(dx), Some(dg), Some(db)])
        });
        Ok(self.record(
            out,
            vec![self.clone(), gamma.clone(), beta.clone()],
            "layer_norm",
            backward,
        ))
    }

    /// Rows of this table `[vocab, dim]` picked by i32 `ids` (shape ids + `[dim]`).
    pub fn embedding(&self, ids: &Array) -> Result<Tensor> {
        let out = kiln_ops::norm::embedding(&self.0.dev, ids, &self.0.data)?;
        let (ids, shape) = (ids.clone(), self.0.data.shape.clone());
        let backward: BackwardFn = Box::new(move |dev, g| {
            Ok(vec![Some(kiln_ops::norm::embedding_backward(
                dev, &ids, &shape, g,
            )?)])
        });
        Ok(self.record(out, vec![self.clone()], "embedding", backward))
    }

    /// One fused LSTM step (PyTorch's gates i, f, g, o): self is the input term of the gate
    /// pre-activations [B, 4H], `hg` the recurrent term, `c_prev` the cell state [B, H].
    /// Returns [B, 2H]: the new hidden state and cell state side by side (slice them apart).
    pub fn lstm_cell(&self, hg: &Tensor, c_prev: &Tensor) -> Result<Tensor> {
        use kiln_ops::rnn;
        let (xg, hgd, cp) = (&self.0.data, &hg.0.data, &c_prev.0.data);
        let out = rnn::lstm_cell(&self.0.dev, xg, hgd, cp)?;
        let (xg, hgd, cp) = (xg.clone(), hgd.clone(), cp.clone());
        let backward: BackwardFn = Box::new(move |dev, g| {
            let (dpre, dc) = rnn::lstm_cell_backward(dev, &xg, &hgd, &cp, g)?;
            Ok(vec![Some(dpre.clone()), Some(dpre), Some(dc)])
        });
        let inputs = vec![self.clone(), hg.clone(), c_prev.clone()];
        Ok(self.record(out, inputs, "lstm_cell", backward))
    }

    /// The input side of a recurrence whose gate pre-activations add an input term and a
    /// recurrent one, g_t = xw[:, t] + h_{t-1} w^T (LSTM; RNN; not GRU, whose reset gate scales
    /// part of the recurrent term). self is xw [B, T, G], all steps' input terms; w is [G, H].
    ///
    /// Then dg_t, the gradient of both terms, is xw's gradient at step t, so w's gradient
    /// (the sum over steps of dg_t^T h_{t-1}) is one product of xw's whole gradient and the
    /// hidden states, taken once after every step's gradient is in, as cuDNN does, instead of a
    /// product and a sum per step. Returns xw again as a new node (same values, no copy) to slice
    /// the steps' input terms from, and the [`Recurrence`] that gives the steps' recurrent terms
    /// and must be given the hidden states when the steps are done.
    pub fn recurrence(&self, w: &Tensor) -> Result<(Tensor, Recurrence)> {
        let (xs, ws) = (self.shape(), w.shape());
        if xs.len() != 3 || ws.len() != 2 || ws[0] != xs[2] {
            return Err(OpError::Shape {
                op: "recurrence",
                expected: "input terms [B, T, G] and a weight [G, H]".into(),
                got: format!("{xs:?} and {ws:?}"),
            });
        }
        let states: Arc<Mutex<Option<(Array, Array)>>> = Arc::default();
        let held = states.clone();
        let need_w = w.needs_grad();
        let backward: BackwardFn = Box::new(move |dev, g| {
            let (h0, seq) = held
                .lock()
                .unwrap()
                .clone()
                .ok_or_else(|| OpError::Invalid {
                    op: "recurrence",
                    message: "backward before Recurrence::finish gave the hidden states".into(),
                })?;
            if !need_w {
                return Ok(vec![Some(g.clone()), None]);
            }
            let (b, t, gates) = (g.shape[0], g.shape[1], g.shape[2]);
            let hd = h0.shape[1];
            // h_{t-1} for every step: h_0, then the hidden states but the last.
            let first = h0.reshape(&[b, 1, hd])?;
            let prev = if t == 1 {
                first
            } else {
                let rest = layout::slice(dev, &seq, 1, 0, t - 1)?;
                layout::concat(dev, &[&first, &rest], 1)?
            };
            let dw = matmul::matmul(
                dev,
                &g.reshape(&[b * t, gates])?,
                &prev.reshape(&[b * t, hd])?,
                true,
                false,
                None,
            )?;
            Ok(vec![Some(g.clone()), Some(dw)])
        });
        let node = self.record(
            self.0.data.clone(),
            vec![self.clone(), w.clone()],
            "recurrence",
            backward,
        );
        Ok((
            node,
            Recurrence {
                w: w.detach(),
                shape: [xs[0], xs[1], ws[1]],
                states,
            },
        ))
    }

    /// One fused GRU step (PyTorch's gates r, z, n): self is the input term of the gate
    /// pre-activations [B, 3H], `hg` the recurrent term with its bias, `h_prev` the hidden state
    /// [B, H]. Returns the new hidden state [B, H].
    pub fn gru_cell(&self, hg: &Tensor, h_prev: &Tensor) -> Result<Tensor> {
        use kiln_ops::rnn;
        let (xg, hgd, hp) = (&self.0.data, &hg.0.data, &h_prev.0.data);
        let out = rnn::gru_cell(&self.0.dev, xg, hgd, hp)?;
        let (xg, hgd, hp) = (xg.clone(), hgd.clone(), hp.clone());
        let backward: BackwardFn = Box::new(move |dev, g| {
            let (dx, dh, dp) = rnn::gru_cell_backward(dev, &xg, &hgd, &hp, g)?;
            Ok(vec![Some(dx), Some(dh), Some(dp)])
        });
        let inputs = vec![self.clone(), hg.clone(), h_prev.clone()];
        Ok(self.record(out, inputs, "gru_cell", backward))
    }

    /// Fused scaled-dot-product attention (self is Q: [B, H, Tq, D]; K, V: [B, H, Tk, D]) with an
    /// optional causal mask and key-padding mask (i32 [B, Tk], nonzero = ignore).
    pub fn attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        key_padding_mask: Option<&Array>,
        spec: kiln_ops::attention::AttentionSpec,
    ) -> Result<Tensor> {
        use kiln_ops::attention as att;
        let (out, saved) = att::attention(
            &self.0.dev,
            &self.0.data,
            &k.0.data,
            &v.0.data,
            key_padding_mask,
            &spec,
        )?;
        let (q, ka, va, pad) = (
            self.0.data.clone(),
            k.0.data.clone(),
            v.0.data.clone(),
            key_padding_mask.cloned(),
        );
        let backward: BackwardFn = Box::new(move |dev, g| {
            let (dq, dk, dv) =
                att::attention_backward(dev, &q, &ka, &va, pad.as_ref(), &spec, &saved, g)?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        });
        Ok(self.record(
            out,
            vec![self.clone(), k.clone(), v.clone()],
            "attention",
            backward,
        ))
    }

    /// softmax along the last axis.
    pub fn softmax(&self) -> Result<Tensor> {
        self.softmax_impl(false)
    }
    /// log_softmax along the last axis.
    pub fn log_softmax(&self) -> Result<Tensor> {
        self.softmax_impl(true)
    }
    fn softmax_impl(&self, log: bool) -> Result<Tensor> {
        let out = softmax::softmax(&self.0.dev, &self.0.data, log)?;
        let y = out.clone();
        let backward: BackwardFn =
            Box::new(move |dev, g| Ok(vec![Some(softmax::softmax_backward(dev, &y, g, log)?)]));
        Ok(self.record(out, vec![self.clone()], "softmax", backward))
    }

    /// Mean cross-entropy of these logits `[N, C]` against i32 labels `[N]` (shape `[1]`).
    pub fn cross_entropy(&self, labels: &Array, ignore_index: Option<i32>) -> Result<Tensor> {
        let ce = softmax::cross_entropy(&self.0.dev, &self.0.data, labels, ignore_index)?;
        let loss = ce.loss.reshape(&[2])?;
        // The forward keeps [mean, count]; the tensor shows the mean only.
        let mean = Array {
            buf: loss
                .buf
                .view(1, kiln_ops::DType::F32)
                .expect("view of 2 floats"),
            shape: vec![1],
        };
        let backward: BackwardFn =
            Box::new(move |dev, g| Ok(vec![Some(softmax::cross_entropy_backward(dev, &ce, g)?)]));
        Ok(self.record(mean, vec![self.clone()], "cross_entropy", backward))
    }

    /// Mean squared error against a target of the same shape (shape `[1]`).
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        self.sub(target)?.square()?.mean_all()
    }
}

/// The recurrent side of [`Tensor::recurrence`].
pub struct Recurrence {
    /// The weight, cut from the graph: its gradient comes from the recurrence node.
    w: Tensor,
    /// [B, T, H].
    shape: [usize; 3],
    states: Arc<Mutex<Option<(Array, Array)>>>,
}

impl Recurrence {
    /// One step's recurrent term h_{t-1} w^T [B, G]; the gradient reaches h_{t-1} only.
    pub fn step(&self, h_prev: &Tensor) -> Result<Tensor> {
        h_prev.linear(&self.w, None)
    }

    /// Gives the hidden states the steps took, h_0 [B, H] and h_1 .. h_T as [B, T, H], for the
    /// weight's gradient. Call it once the steps are recorded, before the backward pass.
    pub fn finish(&self, h0: &Tensor, seq: &Tensor) -> Result<()> {
        let [b, t, h] = self.shape;
        if h0.shape() != [b, h] || seq.shape() != [b, t, h] {
            return Err(OpError::Shape {
                op: "Recurrence::finish",
                expected: format!("h_0 [{b}, {h}] and the hidden states [{b}, {t}, {h}]"),
                got: format!("{:?} and {:?}", h0.shape(), seq.shape()),
            });
        }
        *self.states.lock().unwrap() = Some((h0.array().clone(), seq.array().clone()));
        Ok(())
    }
}
