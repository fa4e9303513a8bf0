//! f32 matmul throughput (GFLOP/s from GPU timestamps where available), one JSON line per size.
//! Run: cargo bench --bench matmul [-- sizes...]
use kiln::device::Device;
use kiln::ops::{matmul, Array};

fn main() -> anyhow::Result<()> {
    let dev = Device::new()?;
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if args.is_empty() {
        if dev.adapter().is_software {
            vec![256, 512]
        } else {
            vec![1024, 2048, 4096]
        }
    } else {
        args
    };
    for n in sizes {
        let a = Array::full(&dev, &[n, n], 0.5)?;
        let b = Array::full(&dev, &[n, n], 0.25)?;
        let _ = matmul::matmul(&dev, &a, &b, false, false, None)?; // compile and warm up
        dev.wait()?;
        let reps = if dev.adapter().is_software { 3 } else { 20 };
        let t = dev.time(|| {
            for _ in 0..reps {
                matmul::matmul(&dev, &a, &b, false, false, None)?;
            }
            Ok::<(), kiln::ops::OpError>(())
        })?;
        let gflops = 2.0 * (n as f64).powi(3) * reps as f64 / t.seconds / 1e9;
        println!(
            "{{\"bench\":\"matmul_f32\",\"n\":{n},\"gflops\":{gflops:.2},\"seconds_per_call\":{:.6},\"timing\":\"{:?}\",\"adapter\":{:?}}}",
            t.seconds / reps as f64,
            t.source,
            dev.adapter().name
        );
    }
    Ok(())
}
