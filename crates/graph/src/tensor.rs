//! `Tensor`: an array on the device plus what autograd needs (the op that made it and its
//! inputs), and the tape's backward pass. The ops themselves live in kiln-ops (see
//! [`kiln_ops::op::Op`]); `methods.rs` has the one-line methods that apply them.

use crate::mode::is_grad_enabled;
use crate::Result;
use kiln_ops::elementwise::{self, Binary};
use kiln_ops::op::{Ctx, Op, Saved};
use kiln_ops::{layout, Array, DType, Device, Element, OpError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How a node passes its gradient to its inputs.
enum Backward {
    /// An op's backward pass, with what its forward pass saved and which inputs wanted a
    /// gradient when it was recorded.
    Op {
        op: Box<dyn Op>,
        saved: Saved,
        needs: Vec<bool>,
        /// The outputs after the first (this node holds the first), for ops with several.
        more: Vec<Array>,
    },
    /// Output `index` (1 or more) of a multi-output op, whose node (output 0) is input 0: the
    /// backward pass hands this gradient to that op's backward with the others.
    Output { index: usize },
    /// A slice of input 0, `start ..` along `axis`: the backward pass adds the gradient into
    /// that slice of the input's gradient, in place where the pass made that buffer itself. So
    /// many slices of one tensor (an RNN's time steps, an LSTM's gates) cost one zero-filled
    /// gradient and a copy each, not a zero-filled full-size gradient and a full-size add each.
    Slice { axis: usize, start: usize },
}

impl Backward {
    fn name(&self) -> &str {
        match self {
            Backward::Op { op, .. } => op.name(),
            Backward::Slice { .. } => "slice",
            Backward::Output { .. } => "output",
        }
    }
}

struct Node {
    id: u64,
    dev: Device,
    data: Array,
    /// Atomic so a parameter can be frozen after it is made (fine-tuning).
    requires_grad: AtomicBool,
    grad: Mutex<Option<Array>>,
    inputs: Vec<Tensor>,
    backward: Option<Backward>,
}

/// A device array with autograd. Cloning is cheap and shares the node (like a PyTorch reference).
#[derive(Clone)]
pub struct Tensor(Arc<Node>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, requires_grad={})",
            self.shape(),
            self.dtype(),
            self.requires_grad()
        )
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Tensor {
    fn make(
        dev: &Device,
        data: Array,
        requires_grad: bool,
        inputs: Vec<Tensor>,
        backward: Option<Backward>,
    ) -> Tensor {
        Tensor(Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            dev: dev.clone(),
            data,
            requires_grad: AtomicBool::new(requires_grad),
            grad: Mutex::new(None),
            inputs,
            backward,
        }))
    }

    /// A leaf wrapping an array; it needs no gradient until [`Tensor::requires_grad_`] says so.
    pub fn from_array(dev: &Device, data: Array) -> Tensor {
        Tensor::make(dev, data, false, Vec::new(), None)
    }

    /// A leaf from f32 data.
    pub fn from_f32(dev: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_array(dev, Array::from_f32(dev, data, shape)?))
    }

    /// A leaf from i32 data (class labels, token ids, masks).
    pub fn from_i32(dev: &Device, data: &[i32], shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_array(dev, Array::from_i32(dev, data, shape)?))
    }

    /// A leaf of `value`s (f32).
    pub fn full(dev: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        Ok(Tensor::from_array(dev, Array::full(dev, shape, value)?))
    }

    /// A leaf of zeros (f32).
    pub fn zeros(dev: &Device, shape: &[usize]) -> Result<Tensor> {
        Tensor::full(dev, shape, 0.0)
    }

    /// Sets whether this leaf needs a gradient, in place, as PyTorch's `requires_grad_`: the
    /// handle (and every clone of it) keeps its identity, so a parameter registered in an
    /// optimizer can be frozen (false: it gets no gradient and the optimizer leaves it as it is)
    /// and unfrozen. Ops recorded afterwards see the change. Returns the same tensor, for
    /// chaining. A tensor an op produced takes its need for a gradient from its inputs: changing
    /// it is an error, as in PyTorch.
    pub fn requires_grad_(&self, yes: bool) -> Result<Tensor> {
        if !self.is_leaf() {
            return Err(OpError::Invalid {
                op: "requires_grad_",
                message: format!(
                    "only a leaf's flag can change; this tensor came from {}: detach() it first",
                    self.op_name().unwrap_or("an op")
                ),
            });
        }
        self.0.requires_grad.store(yes, Ordering::Relaxed);
        if !yes {
            self.zero_grad();
        }
        Ok(self.clone())
    }

    /// Whether gradients flow to or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }

    /// Overwrites the values from the host, keeping the buffer: how a recorded step
    /// ([`crate::StepPlan`]) is fed its next batch (as CUDA graphs' `static_x.copy_(batch)`).
    /// `data` must have this tensor's element count and type.
    pub fn copy_from_slice<T: Element>(&self, data: &[T]) -> Result<()> {
        if data.len() != self.numel() || T::DTYPE != self.dtype() {
            return Err(OpError::Shape {
                op: "copy_from_slice",
                expected: format!(
                    "{} values of {} for {:?}",
                    self.numel(),
                    self.dtype(),
                    self.shape()
                ),
                got: format!("{} values of {}", data.len(), T::DTYPE),
            });
        }
        Ok(self.0.dev.write(&self.0.data.buf, data)?)
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
    /// The device array.
    pub fn array(&self) -> &Array {
        &self.0.data
    }
    /// The device.
    pub fn device(&self) -> &Device {
        &self.0.dev
    }
    /// True for a tensor no op produced (inputs, parameters).
    pub fn is_leaf(&self) -> bool {
        self.0.backward.is_none()
    }
    /// The name of the op that produced this tensor, if one did and the graph recorded it.
    pub fn op_name(&self) -> Option<&str> {
        self.0.backward.as_ref().map(Backward::name)
    }
    /// Reads f32 values back (submits pending work).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.0.data.to_f32(&self.0.dev)
    }
    /// Reads i32 values back (submits pending work).
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        self.0.data.to_i32(&self.0.dev)
    }
    /// Reads f32 values back without blocking: submits pending work and awaits the GPU (in a
    /// browser page, where [`Tensor::to_vec`] cannot wait; natively it is `to_vec`).
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        self.0.data.to_f32_async(&self.0.dev).await
    }
    /// Reads i32 values back without blocking (see [`Tensor::to_vec_async`]).
    pub async fn to_vec_i32_async(&self) -> Result<Vec<i32>> {
        self.0.data.to_i32_async(&self.0.dev).await
    }
    /// Reads a one-element tensor back without blocking (see [`Tensor::to_vec_async`]).
    pub async fn item_async(&self) -> Result<f32> {
        let v = self.to_vec_async().await?;
        self.one(v)
    }
    /// Reads a one-element tensor back.
    pub fn item(&self) -> Result<f32> {
        let v = self.to_vec()?;
        self.one(v)
    }
    fn one(&self, v: Vec<f32>) -> Result<f32> {
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(OpError::Shape {
                op: "item",
                expected: "one element".into(),
                got: format!("{:?}", self.shape()),
            }),
        }
    }
    /// The accumulated gradient of a leaf after [`Tensor::backward`].
    pub fn grad(&self) -> Option<Array> {
        self.0.grad.lock().unwrap().clone()
    }
    /// Replaces the gradient, as assigning PyTorch's `tensor.grad`: `Some` must have this
    /// tensor's shape and be f32; the next backward pass adds into it. Gradient accumulation over
    /// recorded steps keeps each parameter's gradient in one buffer this way.
    pub fn set_grad(&self, grad: Option<Array>) -> Result<()> {
        if let Some(g) = &grad {
            if g.shape != self.shape() || g.dtype() != DType::F32 {
                return Err(OpError::Shape {
                    op: "set_grad",
                    expected: format!("an f32 gradient of {:?}", self.shape()),
                    got: format!("{:?} {}", g.shape, g.dtype()),
                });
            }
        }
        *self.0.grad.lock().unwrap() = grad;
        Ok(())
    }
    /// Clears the gradient (as `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap() = None;
    }
    /// The same data, cut from the graph.
    pub fn detach(&self) -> Tensor {
        Tensor::from_array(&self.0.dev, self.0.data.clone())
    }
    /// True when both handles are the same node.
    pub fn same(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Runs `op` on `inputs` (on their device) and records it on the tape when grad mode is on
    /// and any input needs a gradient: the way every op reaches autograd, kiln's own and users'
    /// alike. The backward pass asks the op only for the gradients of inputs that need one.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), kiln_ops::OpError> {
    /// use kiln_graph::{Device, Tensor};
    /// use kiln_ops::elementwise::Unary;
    /// let dev = Device::shared()?;
    /// let x = Tensor::from_f32(&dev, &[1.0, -2.0], &[2])?.requires_grad_(true)?;
    /// let y = Tensor::apply(Unary::Tanh, &[&x])?; // the same as x.tanh()
    /// y.sum_all()?.backward()?;
    /// # Ok(()) }
    /// ```
    pub fn apply(op: impl Op, inputs: &[&Tensor]) -> Result<Tensor> {
        let mut out = Tensor::apply_multi(op, inputs)?;
        Ok(out.swap_remove(0))
    }

    /// [`Tensor::apply`] for an op with several outputs ([`kiln_ops::op::Forward::outputs`]):
    /// one tensor per output, each with its own gradient; the op's backward gets them together
    /// ([`Op::backward_outputs`], `None` for an output that did not reach the loss).
    pub fn apply_multi(op: impl Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        if let Some(n) = op.arity() {
            if n != inputs.len() {
                return Err(OpError::Invalid {
                    op: "apply",
                    message: format!(
                        "{} takes {n} input{}, {} were given",
                        op.name(),
                        if n == 1 { "" } else { "s" },
                        inputs.len()
                    ),
                });
            }
        }
        let first = inputs.first().ok_or_else(|| OpError::Invalid {
            op: "apply",
            message: format!("{} was given no inputs", op.name()),
        })?;
        let dev = &first.0.dev;
        let arrays: Vec<&Array> = inputs.iter().map(|t| &t.0.data).collect();
        let fwd = op.forward(dev, &arrays)?;
        let needs: Vec<bool> = inputs.iter().map(|t| t.requires_grad()).collect();
        if !(is_grad_enabled() && needs.iter().any(|&n| n)) {
            let outs = std::iter::once(fwd.output).chain(fwd.more);
            return Ok(outs.map(|a| Tensor::from_array(dev, a)).collect());
        }
        let more = fwd.more.clone();
        let backward = Backward::Op {
            op: Box::new(op),
            saved: fwd.saved,
            needs,
            more: fwd.more,
        };
        let inputs = inputs.iter().map(|t| (*t).clone()).collect();
        let main = Tensor::make(dev, fwd.output, true, inputs, Some(backward));
        let mut outs = vec![main.clone()];
        for (i, a) in more.into_iter().enumerate() {
            let out = Backward::Output { index: i + 1 };
            outs.push(Tensor::make(dev, a, true, vec![main.clone()], Some(out)));
        }
        Ok(outs)
    }

    /// A slice along one axis (recorded with the tape's in-place slice gradient).
    pub fn slice(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let out = layout::slice(&self.0.dev, &self.0.data, axis, start, len)?;
        if is_grad_enabled() && self.requires_grad() {
            let backward = Backward::Slice { axis, start };
            Ok(Tensor::make(
                &self.0.dev,
                out,
                true,
                vec![self.clone()],
                Some(backward),
            ))
        } else {
            Ok(Tensor::from_array(&self.0.dev, out))
        }
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
        self.backward_from(Array::full(&self.0.dev, self.shape(), 1.0)?, on_leaf)
    }

    /// Back-propagates `seed`, the gradient of this tensor (its shape, f32), as PyTorch's
    /// `tensor.backward(gradient)`; `on_leaf` as in [`Tensor::backward_with`].
    pub fn backward_from(
        &self,
        seed: Array,
        on_leaf: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        if seed.shape != self.shape() || seed.dtype() != DType::F32 {
            return Err(OpError::Shape {
                op: "backward",
                expected: format!("an f32 gradient of {:?}", self.shape()),
                got: format!("{:?} {}", seed.shape, seed.dtype()),
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
            if !t.requires_grad() || !seen.insert(t.0.id) {
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
            for i in
                t.0.inputs
                    .iter()
                    .filter(|i| i.is_leaf() && i.requires_grad())
            {
                *waiting.entry(i.0.id).or_default() += 1;
            }
        }
        let mut grads: HashMap<u64, Array> = HashMap::new();
        // Gradients of a multi-output op's outputs after the first, by the op's node.
        let mut outputs: HashMap<u64, Vec<Option<Array>>> = HashMap::new();
        // Nodes whose gradient so far is a buffer this pass allocated and nothing else holds
        // (a sum it made), which slices may add into in place.
        let mut owned: HashSet<u64> = HashSet::new();
        grads.insert(self.0.id, seed);
        for t in order.iter().rev() {
            if let Some(g) = grads.remove(&t.0.id) {
                match &t.0.backward {
                    // Reached only when backward starts from a leaf: others finish below.
                    None => finish_leaf(dev, t, g, on_leaf)?,
                    Some(Backward::Slice { axis, start }) => {
                        let inp = &t.0.inputs[0];
                        if inp.requires_grad() {
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
                    Some(Backward::Output { index }) => {
                        let main = &t.0.inputs[0];
                        let slots = outputs.entry(main.0.id).or_default();
                        if slots.len() <= *index {
                            slots.resize(*index + 1, None);
                        }
                        slots[*index] = Some(g);
                    }
                    Some(Backward::Op { .. }) => {
                        // Handled below with the other outputs' gradients.
                        grads.insert(t.0.id, g);
                    }
                }
            }
            if let Some(Backward::Op {
                op,
                saved,
                needs,
                more,
            }) = &t.0.backward
            {
                let g0 = grads.remove(&t.0.id);
                let others = outputs.remove(&t.0.id).unwrap_or_default();
                if g0.is_some() || others.iter().any(Option::is_some) {
                    let arrays: Vec<&Array> = t.0.inputs.iter().map(|i| &i.0.data).collect();
                    let all: Vec<&Array> = std::iter::once(&t.0.data).chain(more).collect();
                    let ctx = Ctx {
                        inputs: &arrays,
                        output: &t.0.data,
                        outputs: &all,
                        saved,
                        needs,
                    };
                    let dys: Vec<Option<&Array>> = (0..all.len())
                        .map(|i| match i {
                            0 => g0.as_ref(),
                            i => others.get(i).and_then(Option::as_ref),
                        })
                        .collect();
                    let input_grads = op.backward_outputs(dev, &ctx, &dys)?;
                    check_grads(op.name(), &arrays, &input_grads)?;
                    for (inp, ig) in t.0.inputs.iter().zip(input_grads) {
                        let Some(ig) = ig else { continue };
                        if !inp.requires_grad() {
                            continue;
                        }
                        let id = inp.0.id;
                        let acc = match grads.remove(&id) {
                            // Nothing else holds the sum so far: add into it (a tensor read by
                            // several ops, such as a tied embedding, keeps one gradient buffer
                            // instead of one per use).
                            Some(prev)
                                if prev.buf.is_unique()
                                    && prev.shape == ig.shape
                                    && !prev.shape.is_empty() =>
                            {
                                owned.insert(id);
                                layout::slice_add(dev, &prev, &ig, 0, 0)?;
                                prev
                            }
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
            // This node has passed its part on (or had none to pass).
            if t.is_leaf() {
                continue;
            }
            for inp in
                t.0.inputs
                    .iter()
                    .filter(|i| i.is_leaf() && i.requires_grad())
            {
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

/// An op's backward pass must give one gradient per input, each of its input's shape: a user
/// op that does not gets an error naming it, not a wrong sum later.
fn check_grads(op: &str, inputs: &[&Array], grads: &[Option<Array>]) -> Result<()> {
    if grads.len() != inputs.len() {
        return Err(OpError::Invalid {
            op: "backward",
            message: format!(
                "{op}'s backward gave {} gradients for {} inputs",
                grads.len(),
                inputs.len()
            ),
        });
    }
    for (i, (x, g)) in inputs.iter().zip(grads).enumerate() {
        if let Some(g) = g {
            if g.shape != x.shape || g.dtype() != DType::F32 {
                return Err(OpError::Invalid {
                    op: "backward",
                    message: format!(
                        "{op}'s backward gave input {i} a gradient of {:?} {}, expected {:?} f32",
                        g.shape,
                        g.dtype(),
                        x.shape
                    ),
                });
            }
        }
    }
    Ok(())
}
