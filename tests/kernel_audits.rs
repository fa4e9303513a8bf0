//! Audits of what a recorded training step launches, read from the plan's dispatches: on a
//! GPU's profile, every row kernel (softmax, log_softmax, layer norm, cross-entropy) over 2,048
//! rows spreads its rows over at least 256 workgroups or 256 subgroups of 32, whatever the row
//! width, and no kernel whose work grows with its input runs as a single workgroup. The step
//! is recorded (and runs) on this adapter; only the dispatch sizes are read, so the GPU's
//! choices are audited without a GPU.

use kiln::device::{AdapterProfile, Device, DispatchInfo, KernelPolicy};
use kiln::graph::{StepPlan, Tensor};
use kiln::nn::init::Rng;
use kiln::nn::{LayerNormConfig, LinearConfig, Module, Sgd};

const ROWS: usize = 2048;

/// The finishing passes that may run as one workgroup: cross-entropy's mean adds one value per
/// row in a fixed order (so the loss is the same on every run), and a two-pass reduction's
/// second pass adds one partial per block of 256 rows (only right after a first pass, which
/// layer norm runs for two outputs at once).
/// Element-wise kernels (and the per-parameter optimizer update) are launched over one
/// invocation per element (or quad) by construction, so they run one workgroup only on inputs of
/// at most a workgroup's elements (here the loss, a bias of 10).
fn single_workgroup_ok(entry: &str, previous: &[DispatchInfo]) -> bool {
    let shader = entry.split("::").next().unwrap_or("");
    ["elementwise", "fill", "optim"].contains(&shader)
        || entry == "rows::xent_mean"
        || (["reduce::reduce", "reduce::reduce4", "reduce::reduce_wide"].contains(&entry)
            && previous.iter().any(|p| p.kernel.contains("_blocks{")))
}

/// The dispatches of one SGD step of LayerNorm -> Linear -> GELU -> Linear -> log_softmax ->
/// softmax -> cross-entropy over `ROWS` rows of `width` classes, planned as on `profile`.
fn step_dispatches(profile: AdapterProfile, width: usize) -> Vec<DispatchInfo> {
    let dev = Device::shared()
        .expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
        .with_policy(KernelPolicy::default().with_profile(profile));
    let mut rng = Rng::new(1);
    let hidden = 96;
    let norm = LayerNormConfig::new(hidden).init(&dev).unwrap();
    let fc1 = LinearConfig::new(hidden, 128)
        .init_with(&dev, &mut rng)
        .unwrap();
    let fc2 = LinearConfig::new(128, width)
        .init_with(&dev, &mut rng)
        .unwrap();
    let mut params = norm.parameters();
    params.extend(fc1.parameters());
    params.extend(fc2.parameters());
    let mut opt = Sgd::new(0.1).init(&dev, params).unwrap();
    let x = Tensor::from_f32(&dev, &rng.vec(ROWS * hidden, -1.0, 1.0), &[ROWS, hidden]).unwrap();
    let labels: Vec<i32> = (0..ROWS).map(|i| (i % width) as i32).collect();
    let y = Tensor::from_i32(&dev, &labels, &[ROWS]).unwrap();
    let (step, _) = StepPlan::record(&dev, || {
        let h = fc1.forward(&norm.forward(&x)?)?.gelu()?;
        let logits = fc2.forward(&h)?;
        // softmax and log_softmax as ops of their own (a distillation loss would use them),
        // cross-entropy on the logits.
        let soft = logits.log_softmax()?.softmax()?.sum_all()?;
        let loss = logits
            .cross_entropy(&y, None)?
            .add(&soft.affine(0.0, 0.0)?)?;
        loss.backward()?;
        opt.step()?;
        Ok::<_, kiln::nn::NnError>(loss)
    })
    .unwrap();
    step.plan().dispatches()
}

/// The override constant `name` in a kernel label such as `rows_sg::softmax{LPR=4,OP=0}`.
fn constant(label: &str, name: &str) -> Option<usize> {
    let inner = label.split_once('{')?.1.trim_end_matches('}');
    inner
        .split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as usize)
}

#[test]
fn row_kernels_spread_2048_rows_over_the_gpu_and_nothing_scales_on_one_workgroup() {
    let mut rows_checked = 0;
    for profile in [
        AdapterProfile::nvidia_hopper(),
        AdapterProfile::webgpu_default(),
    ] {
        let name = profile.name.clone();
        // Widths from LeNet's 10 classes to a vocabulary wide enough for a workgroup a row
        // (GPT-2's 50,257 plans alike, but 2,048 rows of it exceed this adapter's bindings).
        for width in [10, 65, 768, 8192] {
            let dispatches = step_dispatches(profile.clone(), width);
            assert!(!dispatches.is_empty());
            for (i, d) in dispatches.iter().enumerate() {
                let shader = d.kernel.split("::").next().unwrap_or("");
                let entry = d.kernel.split('{').next().unwrap_or("");
                if (shader == "rows" || shader == "rows_sg") && entry != "rows::xent_mean" {
                    let lanes = constant(&d.kernel, "LPR").expect("row kernels name LPR");
                    let subgroups = (ROWS * lanes).div_ceil(32);
                    println!(
                        "{name} width {width}: {} {} workgroups, {subgroups} subgroups of 32 busy",
                        d.kernel,
                        d.workgroups()
                    );
                    assert!(
                        d.workgroups() >= 256 || subgroups >= 256,
                        "{name} width {width}: {} runs {} workgroups, {subgroups} subgroups",
                        d.kernel,
                        d.workgroups()
                    );
                    rows_checked += 1;
                }
                if d.workgroups() == 1 {
                    let previous = &dispatches[i.saturating_sub(2)..i];
                    assert!(
                        single_workgroup_ok(entry, previous),
                        "{name} width {width}: {} runs on a single workgroup",
                        d.kernel
                    );
                }
            }
        }
    }
    // Each step runs layer norm (forward, input gradient), log_softmax and softmax (forward,
    // backward) and cross-entropy (forward, backward): 8 row kernels.
    assert!(
        rows_checked >= 2 * 4 * 8,
        "checked {rows_checked} row-kernel dispatches"
    );
}
