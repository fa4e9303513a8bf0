//! A user-written WGSL op with a backward (examples/common/swish.rs): its forward against a CPU
//! reference, its backward against finite differences through the public gradcheck (which
//! catches a wrong backward), in a recorded training step equal to eager steps, and the tape's
//! errors for an op without a backward or with mis-shaped gradients.

#[path = "../examples/common/swish.rs"]
mod swish;

use kiln::device::Device;
use kiln::graph::{gradcheck, GradCheck, GradCheckError, StepPlan, Tensor};
use kiln::nn::init::Rng;
use kiln::nn::{LinearConfig, Module, Sgd};
use kiln::ops::elementwise::{self, Binary, Unary};
use kiln::ops::op::{Ctx, Forward, Op};
use kiln::ops::testing::assert_close;
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
        .eps(1e-4)
        .atol(1e-5)
        .rtol(1e-4)
        .reference(|v| swish_cpu(&v[0]))
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
    let mut opt = Sgd::new(0.1).momentum(0.9).init(&d, all(&eager)).unwrap();
    for step in 0..5 {
        let (x, y) = batch(step);
        opt.zero_grad();
        opt.begin_step().unwrap();
        let x = Tensor::from_f32(&d, &x, &[4, 6]).unwrap();
        let y = Tensor::from_f32(&d, &y, &[4, 2]).unwrap();
        loss_of(&eager, &x, &y).unwrap().backward().unwrap();
        opt.step().unwrap();
    }

    let replayed = model(&d);
    let mut opt = Sgd::new(0.1)
        .momentum(0.9)
        .init(&d, all(&replayed))
        .unwrap();
    let (x0, y0) = batch(0);
    let x = Tensor::from_f32(&d, &x0, &[4, 6]).unwrap();
    let y = Tensor::from_f32(&d, &y0, &[4, 2]).unwrap();
    opt.begin_step().unwrap();
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
        opt.begin_step().unwrap();
        plan.replay().unwrap();
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
