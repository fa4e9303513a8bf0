//! Matmul throughput (GFLOP/s from GPU timestamps where available), one JSON line per size and
//! kernel: kiln's f32 matmul; its f16 matmul (f16 inputs, f32 accumulation) on cooperative matrices
//! where the adapter has them, widened to f32 otherwise (`path` says which); and a naive 16 x 16
//! shared-memory tiled f32 kernel on the same adapter as the baseline.
//! Run: cargo bench --bench matmul [-- sizes...]
use kiln::device::{Device, Params, Timing};
use kiln::ops::{half, matmul, Array, DType};

mod common;

/// The textbook kernel: one output per invocation, 16 x 16 tiles of A and B staged through
/// shared memory. Square n x n, n a multiple of 16.
const NAIVE: &str = r#"
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
var<workgroup> As: array<f32, 256>;
var<workgroup> Bs: array<f32, 256>;
@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    var s = 0.0;
    for (var t = 0u; t < p.n; t += 16u) {
        As[l.y * 16u + l.x] = a[g.y * p.n + t + l.x];
        Bs[l.y * 16u + l.x] = b[(t + l.y) * p.n + g.x];
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) { s += As[l.y * 16u + k] * Bs[k * 16u + l.x]; }
        workgroupBarrier();
    }
    c[g.y * p.n + g.x] = s;
}
"#;

/// One JSON line: `path` names the kernel behind the op where it varies by adapter.
fn report(
    dev: &Device,
    name: &str,
    path: Option<&str>,
    n: usize,
    reps: usize,
    t: &Timing,
) -> anyhow::Result<()> {
    let gflops = 2.0 * (n as f64).powi(3) * reps as f64 / t.seconds / 1e9;
    let mut line = common::JsonLine::bench(name);
    if let Some(p) = path {
        line = line.set("path", p);
    }
    line.set("n", n)
        .num("gflops", gflops, 2)
        .num("seconds_per_call", t.seconds / reps as f64, 6)
        .set("timing", format!("{:?}", t.source))
        .set("adapter", dev.adapter().name.clone())
        .print()
}

fn main() -> anyhow::Result<()> {
    let dev = Device::new()?;
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let software = dev.adapter().is_software;
    let sizes = if args.is_empty() {
        if software {
            vec![256, 512]
        } else {
            vec![1024, 2048, 4096]
        }
    } else {
        args
    };
    let reps = if software { 3 } else { 20 };
    let naive = dev.kernel_from_source("naive_matmul", NAIVE, "main", &[])?;
    for n in sizes {
        let a = Array::full(&dev, &[n, n], 0.5)?;
        let b = Array::full(&dev, &[n, n], 0.25)?;
        let t = common::time_reps(&dev, reps, || {
            matmul::matmul(&dev, &a, &b, false, false, None).map(|_| ())
        })?;
        report(&dev, "matmul_f32", None, n, reps, &t)?;
        if dev.capabilities().f16 {
            let (a16, b16) = (
                half::cast(&dev, &a, DType::F16)?,
                half::cast(&dev, &b, DType::F16)?,
            );
            let path = match kiln::ops::gemm::coop_size(&dev)? {
                Some(s) => format!("coop{s}"),
                None => "widened".into(),
            };
            let t = common::time_reps(&dev, reps, || {
                matmul::matmul(&dev, &a16, &b16, false, false, None).map(|_| ())
            })?;
            let c = matmul::matmul(&dev, &a16, &b16, false, false, None)?;
            let want = 0.125 * n as f32;
            anyhow::ensure!(
                c.to_f32(&dev)?.iter().all(|&v| v == want),
                "f16 matmul gave a wrong product"
            );
            report(&dev, "matmul_f16", Some(&path), n, reps, &t)?;
        }
        if n % 16 == 0 {
            let c = Array::empty(&dev, &[n, n])?;
            let p = Params::new().u(n as u32);
            let groups = [(n / 16) as u32, (n / 16) as u32, 1];
            let t = common::time_reps(&dev, reps, || {
                dev.launch(&naive, &[&a.buf, &b.buf, &c.buf], &p, groups)
            })?;
            let want = 0.125 * n as f32;
            anyhow::ensure!(
                c.to_f32(&dev)?.iter().all(|&v| v == want),
                "naive kernel gave a wrong product"
            );
            report(&dev, "matmul_f32_naive16", None, n, reps, &t)?;
        }
    }
    Ok(())
}
