//! Record-once/replay: equal to eager, one submission per replayed step, no memory growth.
//! A single test in its own binary, so no other test's submissions touch the counters.

use kiln_graph::{Device, StepPlan, Tensor};
use kiln_nn::{Adam, LinearConfig, Module, Relu, Sequential};
use kiln_ops::random::Rng;

fn mlp(d: &Device) -> Sequential {
    let mut r = Rng::new(99);
    Sequential::new()
        .push(LinearConfig::new(20, 16).init_with(d, &mut r).unwrap())
        .push(Relu)
        .push(LinearConfig::new(16, 5).init_with(d, &mut r).unwrap())
}

fn batch(step: usize) -> (Vec<f32>, Vec<i32>) {
    let mut r = Rng::new(1000 + step as u64);
    (
        r.vec(8 * 20, -1.0, 1.0),
        (0..8).map(|_| r.below(5) as i32).collect(),
    )
}

fn params(m: &Sequential) -> Vec<f32> {
    m.parameters()
        .iter()
        .flat_map(|p| p.to_vec().unwrap())
        .collect()
}

#[test]
fn replay_matches_eager_with_one_submission_per_step_and_stable_memory() {
    let d = Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)");

    // Eager: every step builds its graph anew.
    let eager = mlp(&d);
    let mut opt_e = Adam::new(1e-2).init(&d, eager.parameters()).unwrap();
    for step in 0..5 {
        let (x, y) = batch(step);
        opt_e.zero_grad();
        let x = Tensor::from_f32(&d, &x, &[8, 20]).unwrap();
        let y = Tensor::from_i32(&d, &y, &[8]).unwrap();
        eager
            .forward(&x)
            .unwrap()
            .cross_entropy(&y, None)
            .unwrap()
            .backward()
            .unwrap();
        opt_e.step().unwrap();
    }

    // Replayed: step 0 records, later steps only write the batch and replay.
    let replayed = mlp(&d);
    let mut opt_r = Adam::new(1e-2).init(&d, replayed.parameters()).unwrap();
    let (x0, y0) = batch(0);
    let x = Tensor::from_f32(&d, &x0, &[8, 20]).unwrap();
    let y = Tensor::from_i32(&d, &y0, &[8]).unwrap();
    let (plan, loss) = StepPlan::record(&d, || {
        let loss = replayed.forward(&x)?.cross_entropy(&y, None)?;
        loss.backward()?;
        opt_r.step()?;
        Ok::<_, kiln_nn::NnError>(loss)
    })
    .unwrap();
    assert!(plan.dispatches() > 10);
    for step in 1..5 {
        let (xb, yb) = batch(step);
        x.copy_from_slice(&xb).unwrap();
        y.copy_from_slice(&yb).unwrap();
        d.flush().unwrap();
        let before = d.counters().submissions;
        opt_r.replay(&plan).unwrap();
        assert_eq!(
            d.counters().submissions - before,
            1,
            "one submission per replayed step"
        );
    }
    // Same kernels in the same order on the same data: bitwise equal.
    assert_eq!(params(&eager), params(&replayed));
    assert!(loss.item().unwrap().is_finite());

    // Memory: what the pool holds after step 10 is what it holds after step 1,000, and replays
    // with host writes never submit more than once per step.
    let mut at_10 = None;
    let start = d.counters().submissions;
    for step in 5..1000 {
        let (xb, yb) = batch(step % 7);
        x.copy_from_slice(&xb).unwrap();
        y.copy_from_slice(&yb).unwrap();
        opt_r.replay(&plan).unwrap();
        if step == 10 {
            d.wait().unwrap();
            at_10 = Some(d.pool_stats().bytes_allocated);
        }
    }
    d.wait().unwrap();
    assert_eq!(d.counters().submissions - start, 995);
    assert_eq!(Some(d.pool_stats().bytes_allocated), at_10);
    assert!(
        loss.item().unwrap() < 1.0,
        "the replayed steps trained the model"
    );
}
