//! Fused causal attention throughput (GFLOP/s from GPU timestamps where available), forward and
//! forward + backward, in f32 and (`--dtype f16`, autocast's operands) f16. Default shape: batch
//! 8, 12 heads, sequence 1024, head_dim 64 on GPUs; batch 1, 2 heads, sequence 256 on software
//! adapters; `--shape B,H,T,D` chooses another. FLOPs count the causal half only: forward
//! 2 * 2 * B*H*T*T*D / 2, backward 2.5 times that, as flash-attention reports do. Each line names
//! the variant the kernel policy chose (`KILN_KERNELS=attention=flash` forces one).
//!
//! Run: cargo bench --bench attention [-- --shape 8,12,256,64 --dtype f32,f16]
//! PyTorch (scaled_dot_product_attention) on the same shapes: benches/pytorch/attention.py.
use clap::Parser;
use kiln::device::Device;
use kiln::ops::attention::{self, AttentionSpec, AttnCall};
use kiln::ops::{half, Array, DType, OpError};

mod common;

#[derive(Parser)]
#[command(about = "Fused causal attention, forward and forward + backward")]
struct Args {
    /// B,H,T,D (default 8,12,1024,64 on GPUs, 1,2,256,64 on software adapters).
    #[arg(long, value_parser = parse_shape)]
    shape: Option<[usize; 4]>,
    /// Operand types, comma-separated: f32, f16 (default f32, and f16 where the adapter has it).
    #[arg(long, value_delimiter = ',', value_parser = ["f32", "f16"])]
    dtype: Vec<String>,
    /// Timed repetitions (default 20 on GPUs, 2 on software adapters).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    reps: Option<u32>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_shape(s: &str) -> Result<[usize; 4], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [b, h, t, d] if b > 0 && h > 0 && t > 0 && d > 0 => Ok([b, h, t, d]),
        _ => Err(format!("expected four positive sizes B,H,T,D, got {s:?}")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dev = Device::new()?;
    let soft = dev.adapter().is_software;
    let [b, h, t, d] = args.shape.unwrap_or(if soft {
        [1, 2, 256, 64]
    } else {
        [8, 12, 1024, 64]
    });
    let reps = args.reps.map_or(if soft { 2 } else { 20 }, |r| r as usize);
    let dtypes = if args.dtype.is_empty() {
        let mut v = vec!["f32".to_string()];
        if dev.capabilities().f16 && !soft {
            v.push("f16".into());
        }
        v
    } else {
        args.dtype
    };
    let shape = [b, h, t, d];
    let mut rng = kiln::nn::init::Rng::new(3);
    let n = b * h * t * d;
    let spec = AttentionSpec {
        causal: true,
        scale: None,
    };
    let fwd_flops = 2.0 * (b * h * t * t * d) as f64;
    for dtype in dtypes {
        let f16 = dtype == "f16";
        let put = |v: &[f32]| -> Result<Array, OpError> {
            let a = Array::from_f32(&dev, v, &shape)?;
            if f16 {
                half::cast(&dev, &a, DType::F16)
            } else {
                Ok(a)
            }
        };
        let q = put(&rng.vec(n, -1.0, 1.0))?;
        let k = put(&rng.vec(n, -1.0, 1.0))?;
        let v = put(&rng.vec(n, -1.0, 1.0))?;
        let dout = Array::from_f32(&dev, &rng.vec(n, -1.0, 1.0), &shape)?;
        let variant = attention::plan(&dev, &AttnCall::new(b, h, t, t, d).with_f16(f16))?.variant;
        let forward = || attention::attention(&dev, &q, &k, &v, None, &spec).map(|_| ());
        let both = || {
            let (_, saved) = attention::attention(&dev, &q, &k, &v, None, &spec)?;
            attention::attention_backward(&dev, &q, &k, &v, None, &spec, &saved, &dout).map(|_| ())
        };
        type Work<'a> = &'a dyn Fn() -> Result<(), OpError>;
        let passes: [(&str, f64, Work); 2] = [
            ("forward", fwd_flops, &forward),
            ("forward_backward", 3.5 * fwd_flops, &both),
        ];
        for (pass, flops, work) in passes {
            let tm = common::time_reps(&dev, reps, work)?;
            common::JsonLine::bench("attention")
                .set("pass", pass)
                .set("dtype", dtype.clone())
                .set("shape", shape.to_vec())
                .set("causal", true)
                .set("variant", variant)
                .num("gflops", flops * reps as f64 / tm.seconds / 1e9, 2)
                .num("ms_per_call", tm.seconds * 1e3 / reps as f64, 3)
                .set("timing", format!("{:?}", tm.source))
                .set("adapter", dev.adapter().name.clone())
                .print()?;
        }
    }
    Ok(())
}
