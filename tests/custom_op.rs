//! A user-written WGSL op with a backward (examples/common/swish.rs): its forward against a CPU
//! reference, its backward against finite differences through the public gradcheck (which
//! catches a wrong backward), in a recorded training step equal to eager steps, and the tape's
//! errors for an op without a backward or with mis-shaped gradients.

#[path = "../examples/common/swish.rs"]
mod swish;

use kiln::device::Device;
use kiln::graph::{gradcheck, Function, FunctionCtx, GradCheck, GradCheckError, StepPlan, Tensor};
use kiln::nn::init::Rng;
use kiln::nn::{LinearConfig, Module, Sgd};
use kiln::ops::elementwise::{self, Binary, Unary};
use kiln::ops::numeric::assert_close;
use kiln::ops::op::{Ctx, Forward, Op};
use kiln::ops::{Array, Result};
use swish::{swish_cpu, Swish};

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

fn apply(op: impl Op + Clone) -> impl Fn(&[Tensor]) -> Result<Tensor> {
    move |t: &[Tensor]| Tensor::apply(op.clone(), &[&t[0]])
}

/// Swish with a wrong backward (the sigmoid only, missing x s (1 - s)): gradcheck must fail.
#[derive(Clone)]
struct WrongSwish;
impl Op for WrongSwish {
    fn name(&self) -> &str {
        "wrong_swish"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
        Swish.forward(dev, inputs)
    }
    fn backward(&self, dev: &Device, ctx: &Ctx, dy: &Array) -> Result<Vec<Option<Array>>> {
        let s = elementwise::unary(dev, ctx.inputs[0], Unary::Sigmoid)?;
        Ok(vec![Some(elementwise::binary(dev, dy, &s, Binary::Mul)?)])
    }
}

#[test]
fn user_op_forward_and_backward_match_references() {
    let d = dev();
    let mut rng = Rng::new(3);
    // 1,000 elements: more than one workgroup, not a multiple of 256.
    let v = rng.vec(1000, -6.0, 6.0);
    let x = Tensor::from_f32(&d, &v, &[10, 100])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let y = Tensor::apply(Swish, &[&x]).unwrap();
    let want = swish_cpu(&v.iter().map(|&a| a as f64).collect::<Vec<_>>());
    assert_close("swish forward", &y.to_vec().unwrap(), &want, 1e-6, 1e-5);

    let small = Tensor::from_f32(&d, &rng.vec(40, -4.0, 4.0), &[5, 8])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    gradcheck(apply(Swish), std::slice::from_ref(&small)).unwrap();
    GradCheck::new()
        .with_eps(1e-4)
        .with_atol(1e-5)
        .with_rtol(1e-4)
        .with_reference(|v| swish_cpu(&v[0]))
        .check(apply(Swish), std::slice::from_ref(&small))
        .unwrap();
    // The check can fail: a backward that drops a term is caught, and names the input.
    match gradcheck(apply(WrongSwish), &[small]) {
        Err(GradCheckError::Mismatch { what, .. }) => assert!(what.starts_with("input 0")),
        other => panic!("a wrong backward passed gradcheck: {other:?}"),
    }
}

/// Linear -> swish -> Linear -> MSE, 5 SGD steps: eager graphs and one recorded, replayed step
/// reach the same parameters.
#[test]
fn user_op_trains_in_a_recorded_step_as_eager_steps_do() {
    let d = dev();
    let model = |d: &Device| {
        let mut r = Rng::new(5);
        (
            LinearConfig::new(6, 16).init_with(d, &mut r).unwrap(),
            LinearConfig::new(16, 2).init_with(d, &mut r).unwrap(),
        )
    };
    let batch = |step: u64| {
        let mut r = Rng::new(100 + step);
        (r.vec(4 * 6, -1.0, 1.0), r.vec(4 * 2, -1.0, 1.0))
    };
    let loss_of = |m: &(kiln::nn::Linear, kiln::nn::Linear), x: &Tensor, y: &Tensor| {
        let h = Tensor::apply(Swish, &[&m.0.forward(x)?])?;
        Ok::<_, kiln::nn::NnError>(m.1.forward(&h)?.mse_loss(y)?)
    };
    let params = |m: &(kiln::nn::Linear, kiln::nn::Linear)| -> Vec<f32> {
        m.0.parameters()
            .iter()
            .chain(m.1.parameters().iter())
            .flat_map(|p| p.to_vec().unwrap())
            .collect()
    };
    let all = |m: &(kiln::nn::Linear, kiln::nn::Linear)| {
        let mut p = m.0.parameters();
        p.extend(m.1.parameters());
        p
    };

    let eager = model(&d);
    let mut opt = Sgd::new(0.1)
        .with_momentum(0.9)
        .init(&d, all(&eager))
        .unwrap();
    for step in 0..5 {
        let (x, y) = batch(step);
        opt.zero_grad();
        let x = Tensor::from_f32(&d, &x, &[4, 6]).unwrap();
        let y = Tensor::from_f32(&d, &y, &[4, 2]).unwrap();
        loss_of(&eager, &x, &y).unwrap().backward().unwrap();
        opt.step().unwrap();
    }

    let replayed = model(&d);
    let mut opt = Sgd::new(0.1)
        .with_momentum(0.9)
        .init(&d, all(&replayed))
        .unwrap();
    let (x0, y0) = batch(0);
    let x = Tensor::from_f32(&d, &x0, &[4, 6]).unwrap();
    let y = Tensor::from_f32(&d, &y0, &[4, 2]).unwrap();
    let (plan, _loss) = StepPlan::record(&d, || {
        let loss = loss_of(&replayed, &x, &y)?;
        loss.backward()?;
        opt.step()?;
        Ok::<_, kiln::nn::NnError>(loss)
    })
    .unwrap();
    for step in 1..5 {
        let (xb, yb) = batch(step);
        x.copy_from_slice(&xb).unwrap();
        y.copy_from_slice(&yb).unwrap();
        opt.replay(&plan).unwrap();
    }
    let (a, b) = (params(&eager), params(&replayed));
    assert_ne!(a, params(&model(&d)), "the steps trained");
    let want: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    assert_close("recorded vs eager", &b, &want, 1e-6, 1e-5);
}

/// An op with no backward runs where nothing needs a gradient, and names itself when one does.
#[test]
fn tape_errors_name_the_op_without_backward_or_with_bad_gradients() {
    struct ForwardOnly;
    impl Op for ForwardOnly {
        fn name(&self) -> &str {
            "forward_only"
        }
        fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
            Ok(elementwise::unary(dev, inputs[0], Unary::Exp)?.into())
        }
    }
    /// Gives a gradient of the wrong shape.
    struct BadShape;
    impl Op for BadShape {
        fn name(&self) -> &str {
            "bad_shape"
        }
        fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
            Ok(elementwise::unary(dev, inputs[0], Unary::Exp)?.into())
        }
        fn backward(&self, dev: &Device, _: &Ctx, _: &Array) -> Result<Vec<Option<Array>>> {
            Ok(vec![Some(Array::full(dev, &[3], 1.0)?)])
        }
    }
    let d = dev();
    let x = Tensor::from_f32(&d, &[0.0, 1.0], &[2]).unwrap();
    let y = Tensor::apply(ForwardOnly, &[&x]).unwrap();
    assert_close("exp", &y.to_vec().unwrap(), &[1.0, 1f64.exp()], 1e-6, 1e-6);
    let x = x.requires_grad_(true).unwrap();
    let e = Tensor::apply(ForwardOnly, &[&x])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap_err()
        .to_string();
    assert!(e.contains("forward_only has no backward pass"), "{e}");
    let e = Tensor::apply(BadShape, &[&x])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad_shape") && e.contains("[3]"), "{e}");
}

/// An op declares how many inputs it takes: another count is a typed error naming it, before
/// its forward runs (which would otherwise index past `inputs`).
#[test]
fn declared_arity_is_checked_before_the_forward_runs() {
    let d = dev();
    let x = Tensor::from_f32(&d, &[1.0, 2.0], &[2]).unwrap();
    let e = Tensor::apply(Swish, &[&x, &x]).unwrap_err().to_string();
    assert!(e.contains("swish takes 1 input, 2 were given"), "{e}");
    let e = Tensor::apply(Swish, &[]).unwrap_err().to_string();
    assert!(e.contains("swish takes 1 input, 0 were given"), "{e}");
}

/// (exp x, tanh x) from one op with two outputs: each output's gradient reaches the op's
/// backward, also when only one of them is used.
#[derive(Clone)]
struct ExpTanh;
impl Op for ExpTanh {
    fn name(&self) -> &str {
        "exp_tanh"
    }
    fn arity(&self) -> Option<usize> {
        Some(1)
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
        let e = elementwise::unary(dev, inputs[0], Unary::Exp)?;
        let t = elementwise::unary(dev, inputs[0], Unary::Tanh)?;
        Forward::outputs(vec![e, t])
    }
    fn backward_outputs(
        &self,
        dev: &Device,
        ctx: &Ctx,
        dys: &[Option<&Array>],
    ) -> Result<Vec<Option<Array>>> {
        // d exp = exp, d tanh = 1 - tanh^2: dx = de * e + dt * (1 - t^2).
        let (e, t) = (ctx.outputs[0], ctx.outputs[1]);
        let mut dx = Array::full(dev, &e.shape, 0.0)?;
        if let Some(de) = dys[0] {
            let g = elementwise::binary(dev, de, e, Binary::Mul)?;
            dx = elementwise::binary(dev, &dx, &g, Binary::Add)?;
        }
        if let Some(dt) = dys[1] {
            let t2 = elementwise::unary(dev, t, Unary::Square)?;
            let dtanh = elementwise::unary(dev, &t2, Unary::Affine(-1.0, 1.0))?;
            let g = elementwise::binary(dev, dt, &dtanh, Binary::Mul)?;
            dx = elementwise::binary(dev, &dx, &g, Binary::Add)?;
        }
        Ok(vec![Some(dx)])
    }
}

#[test]
fn an_op_with_two_outputs_gets_both_gradients() {
    let d = dev();
    let mut rng = Rng::new(9);
    let x = Tensor::from_f32(&d, &rng.vec(12, -2.0, 2.0), &[3, 4])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let outs = Tensor::apply_multi(ExpTanh, &[&x]).unwrap();
    assert_eq!(outs.len(), 2);
    let xv: Vec<f64> = x.to_vec().unwrap().iter().map(|&v| v as f64).collect();
    let tanh: Vec<f64> = xv.iter().map(|v| v.tanh()).collect();
    assert_close("tanh", &outs[1].to_vec().unwrap(), &tanh, 1e-6, 1e-5);
    // Both outputs in the loss, and each alone.
    let both = |t: &[Tensor]| {
        let o = Tensor::apply_multi(ExpTanh, &[&t[0]])?;
        o[0].mul(&o[1].affine(3.0, 0.5)?)
    };
    gradcheck(both, std::slice::from_ref(&x)).unwrap();
    for i in 0..2 {
        let one = move |t: &[Tensor]| Tensor::apply_multi(ExpTanh, &[&t[0]])?[i].square();
        gradcheck(one, std::slice::from_ref(&x)).unwrap();
    }
}

/// Swish with its backward written with tensor ops (a `Function`), instead of a second kernel.
struct TensorSwish;
impl Function for TensorSwish {
    fn name(&self) -> &str {
        "tensor_swish"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
        Swish.forward(dev, inputs)
    }
    fn backward(&self, ctx: &FunctionCtx, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        // dx = dy * (s + x s (1 - s)) = dy * (s + y (1 - s)), s = sigmoid(x), y = x s.
        let s = ctx.inputs[0].sigmoid()?;
        let one_minus_s = s.affine(-1.0, 1.0)?;
        let ds = s.add(&ctx.output.mul(&one_minus_s)?)?;
        Ok(vec![Some(dy.mul(&ds)?)])
    }
}

#[test]
fn a_backward_written_with_tensor_ops_passes_gradcheck() {
    let d = dev();
    let x = Tensor::from_f32(&d, &Rng::new(4).vec(30, -4.0, 4.0), &[5, 6])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let f = |t: &[Tensor]| Tensor::apply_fn(TensorSwish, &[&t[0]]);
    gradcheck(f, std::slice::from_ref(&x)).unwrap();
    // The same gradients as the kernel-written backward.
    Tensor::apply_fn(TensorSwish, &[&x])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let a = x.grad().unwrap().to_f32(&d).unwrap();
    x.zero_grad();
    Tensor::apply(Swish, &[&x])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let b = x.grad().unwrap().to_f32(&d).unwrap();
    let want: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    assert_close("tensor-op backward", &a, &want, 1e-6, 1e-5);
}

/// A parameter block that does not match the kernel's WGSL struct is refused before launch,
/// naming both layouts.
#[test]
fn a_mismatched_parameter_block_is_a_typed_error() {
    kiln::device::kernel_params! { struct Wrong { n: f32 } }
    kiln::device::kernel_params! { struct Longer { n: u32, scale: f32 } }
    let d = dev();
    let src = "struct P { n: u32 }
        @group(0) @binding(0) var<storage, read_write> y: array<f32>;
        @group(0) @binding(1) var<uniform> p: P;
        @compute @workgroup_size(KILN_WG)
        fn main(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
                @builtin(local_invocation_index) l: u32) {
            let i = kiln_index(w, n, l);
            if (i < p.n) { y[i] = f32(i); }
        }";
    let k = d
        .kernel_from_source("params_check", src, "main", &[])
        .unwrap();
    let y = Array::empty(&d, &[300]).unwrap();
    for e in [
        kiln::ops::launch::elementwise(&d, &k, &[&y.buf], &Wrong { n: 300.0 }, 300),
        kiln::ops::launch::elementwise(&d, &k, &[&y.buf], &Longer { n: 300, scale: 1.0 }, 300),
    ] {
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("does not match the WGSL struct") && e.contains("WGSL [n: U32 @0]"),
            "{e}"
        );
    }
    kiln::device::kernel_params! { struct Right { n: u32 } }
    kiln::ops::launch::elementwise(&d, &k, &[&y.buf], &Right { n: 300 }, 300).unwrap();
    let want: Vec<f64> = (0..300).map(|i| i as f64).collect();
    assert_close(
        "kiln_index over two workgroups",
        &y.to_f32(&d).unwrap(),
        &want,
        0.0,
        0.0,
    );
    // op::map needs an input to shape its output like.
    let e = kiln::ops::op::map(&d, &k, &[], &Right { n: 0 }).unwrap_err();
    assert!(e.to_string().contains("takes at least one input"), "{e}");
}

/// An op (or any tensor function) as a module in a Sequential, without a wrapper type.
#[test]
fn lambda_puts_an_op_in_a_sequential() {
    use kiln::nn::{Lambda, Sequential};
    let d = dev();
    let mut r = Rng::new(2);
    let model = Sequential::new()
        .push(LinearConfig::new(3, 4).init_with(&d, &mut r).unwrap())
        .push(Lambda::op(Swish))
        .push(Lambda::new("double", |x| x.affine(2.0, 0.0)));
    let x = Tensor::from_f32(&d, &r.vec(6, -1.0, 1.0), &[2, 3]).unwrap();
    let got = model.forward(&x).unwrap().to_vec().unwrap();
    let lin = model
        .layers()
        .next()
        .unwrap()
        .1
        .forward(&x)
        .unwrap()
        .to_vec()
        .unwrap();
    let want: Vec<f64> = swish_cpu(&lin.iter().map(|&v| v as f64).collect::<Vec<_>>())
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    assert_close("lambda", &got, &want, 1e-6, 1e-5);
    assert_eq!(model.parameters().len(), 2, "lambdas add no parameters");
}
