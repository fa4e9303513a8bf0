//! kiln-device on whatever adapter `Device::shared` picks (lavapipe in CI). A missing adapter
//! fails every test here: nothing is skipped.

use half::f16;
use kiln_device::{DType, Device, DeviceError, Params};

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

const SIZES: [usize; 4] = [1, 7, 1000, 1_000_003];

#[test]
fn round_trip_every_dtype() {
    let d = dev();
    for n in SIZES {
        let f: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
        assert_eq!(d.download::<f32>(&d.upload(&f).unwrap()).unwrap(), f);
        let h: Vec<f16> = (0..n)
            .map(|i| f16::from_f32((i % 2048) as f32 - 7.0))
            .collect();
        assert_eq!(d.download::<f16>(&d.upload(&h).unwrap()).unwrap(), h);
        let i: Vec<i32> = (0..n).map(|i| i as i32 - 500).collect();
        assert_eq!(d.download::<i32>(&d.upload(&i).unwrap()).unwrap(), i);
        let u: Vec<u32> = (0..n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761))
            .collect();
        assert_eq!(d.download::<u32>(&d.upload(&u).unwrap()).unwrap(), u);
    }
}

#[test]
fn pool_reuses_a_freed_buffer() {
    let d = dev();
    // A size no other test uses, so parallel tests cannot take it in between.
    let a = d.alloc(12_345, DType::F32).unwrap();
    let id = a.id();
    let before = d.pool_stats();
    drop(a);
    let b = d.alloc(12_345, DType::F32).unwrap();
    let after = d.pool_stats();
    assert_eq!(b.id(), id, "the freed buffer is handed out again");
    assert!(after.reuses > before.reuses);
    assert!(after.bytes_in_use >= b.bytes());
    assert!(after.bytes_allocated >= after.bytes_in_use);
}

#[test]
fn memory_stats_track_live_bytes_the_pool_and_their_peaks() {
    // A device of its own: the shared one's pool is busy with the other tests.
    let d = Device::new().unwrap();
    let base = d.memory_stats();
    let n = 300_000; // 1.2 MB: a size class of 1,310,720 bytes
    let class = 1_310_720u64;
    let a = d.alloc(n, DType::F32).unwrap();
    let b = d.alloc(n, DType::F32).unwrap();
    assert_eq!(a.capacity(), class);
    let two = d.memory_stats();
    assert_eq!(two.live_bytes, base.live_bytes + 2 * class);
    assert_eq!(two.pool_bytes, base.pool_bytes + 2 * class);
    assert_eq!(two.peak_live_bytes, two.live_bytes);
    assert_eq!(two.peak_pool_bytes, two.pool_bytes);
    drop(a);
    let one = d.memory_stats();
    // Freed: no longer live, still in the pool; the peaks stay.
    assert_eq!(one.live_bytes, base.live_bytes + class);
    assert_eq!(one.pool_bytes, two.pool_bytes);
    assert_eq!(one.peak_live_bytes, two.peak_live_bytes);
    d.reset_peak_memory_stats();
    let reset = d.memory_stats();
    assert_eq!(reset.peak_live_bytes, one.live_bytes);
    assert_eq!(reset.peak_pool_bytes, one.pool_bytes);
    // Reused from the free list: live grows back, the pool does not.
    let c = d.alloc(n, DType::F32).unwrap();
    let again = d.memory_stats();
    assert_eq!(again.peak_live_bytes, two.live_bytes);
    assert_eq!(again.pool_bytes, two.pool_bytes);
    drop((b, c));
    d.trim_pool();
    let trimmed = d.memory_stats();
    assert_eq!(trimmed.live_bytes, base.live_bytes);
    assert_eq!(
        trimmed.pool_bytes, trimmed.live_bytes,
        "trim returns every free buffer"
    );
    assert_eq!(trimmed.peak_pool_bytes, two.pool_bytes);
}

#[test]
fn pipeline_cache_hits_on_second_request() {
    let d = dev();
    let k1 = d.kernel("fill", "fill", &[]).unwrap();
    let c1 = d.counters();
    let k2 = d.kernel("fill", "fill", &[]).unwrap();
    let c2 = d.counters();
    assert!(std::sync::Arc::ptr_eq(&k1, &k2));
    assert!(c2.pipeline_hits > c1.pipeline_hits);
}

#[test]
fn over_limit_allocation_names_both_limits() {
    let d = dev();
    let max = d
        .limits()
        .max_buffer_size
        .max(d.limits().max_storage_buffer_binding_size);
    let err = d.alloc((max / 4 + 1) as usize, DType::F32).unwrap_err();
    assert!(matches!(err, DeviceError::BufferTooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("max_buffer_size") && msg.contains("max_storage_buffer_binding_size"),
        "{msg}"
    );
}

#[test]
fn oversized_workgroup_count_is_split() {
    let d = dev();
    let limit = d.limits().max_compute_workgroups_per_dimension;
    let groups = limit + 5;
    let n = groups as usize * 256;
    let out = d.alloc(n, DType::F32).unwrap();
    let k = d.kernel("fill", "iota", &[]).unwrap();
    d.launch(
        &k,
        &[&out],
        &Params::new().u(n as u32).f(0.0),
        [groups, 1, 1],
    )
    .unwrap();
    let v = d.download::<f32>(&out).unwrap();
    // f32 holds integers exactly up to 2^24; compare there and at the tail with a tolerance.
    for i in (0..n).step_by(997).chain(n - 300..n) {
        assert!(
            (v[i] - i as f32).abs() <= (i as f32) * 1e-7,
            "index {i}: {}",
            v[i]
        );
    }
}

#[test]
fn many_dispatches_go_in_one_submission() {
    let d = dev();
    let k = d.kernel("fill", "fill", &[]).unwrap();
    let a = d.alloc(1000, DType::F32).unwrap();
    let b = d.alloc(1000, DType::F32).unwrap();
    d.flush().unwrap();
    let before = d.counters().submissions;
    d.launch(&k, &[&a], &Params::new().u(1000).f(1.5), [4, 1, 1])
        .unwrap();
    d.launch(&k, &[&b], &Params::new().u(1000).f(-2.0), [4, 1, 1])
        .unwrap();
    d.launch(&k, &[&a], &Params::new().u(500).f(3.0), [2, 1, 1])
        .unwrap();
    // The download's copy rides in the same submission as the three dispatches.
    let va = d.download::<f32>(&a).unwrap();
    let after = d.counters().submissions;
    assert!(after - before >= 1);
    assert_eq!(&va[..500], &[3.0; 500][..]);
    assert_eq!(&va[500..], &[1.5; 500][..]);
    assert_eq!(d.download::<f32>(&b).unwrap(), vec![-2.0; 1000]);
}

#[test]
fn plan_replays_recorded_dispatches() {
    let d = dev();
    let k = d.kernel("fill", "fill", &[]).unwrap();
    let a = d.alloc(300, DType::F32).unwrap();
    d.begin_capture().unwrap();
    d.launch(&k, &[&a], &Params::new().u(300).f(7.0), [2, 1, 1])
        .unwrap();
    let plan = d.end_capture().unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(d.download::<f32>(&a).unwrap(), vec![7.0; 300]);
    d.write(&a, &vec![0.0f32; 300]).unwrap();
    d.replay(&plan).unwrap();
    assert_eq!(d.download::<f32>(&a).unwrap(), vec![7.0; 300]);
}

#[test]
fn wrong_bindings_are_errors_not_panics() {
    let d = dev();
    let k = d.kernel("fill", "fill", &[]).unwrap();
    let a = d.alloc(10, DType::F32).unwrap();
    let e = d
        .launch(&k, &[&a, &a], &Params::new().u(10).f(0.0), [1, 1, 1])
        .unwrap_err();
    assert!(e.to_string().contains("fill::fill"), "{e}");
    let e = d.launch(&k, &[&a], &Params::new(), [1, 1, 1]).unwrap_err();
    assert!(matches!(e, DeviceError::Binding { .. }));
    let e = d.write(&a, &[1.0f32; 3]).unwrap_err();
    assert!(e.to_string().contains("10"), "{e}");
    assert!(matches!(
        d.kernel("no_such_shader", "x", &[]),
        Err(DeviceError::UnknownShader(_))
    ));
    assert!(matches!(
        d.kernel("fill", "nope", &[]),
        Err(DeviceError::UnknownEntryPoint { .. })
    ));
}

#[test]
fn a_bad_shader_source_is_an_error_naming_it() {
    let d = dev();
    let src = "@group(0) @binding(0) var<storage, read_write> o: array<f32>;\n\
               @compute @workgroup_size(1) fn main() { o[0] = undefined_name; }";
    let e = d
        .kernel_from_source("my_bad_shader", src, "main", &[])
        .err()
        .unwrap();
    assert!(e.to_string().contains("my_bad_shader"), "{e}");
}

#[test]
fn source_under_a_name_that_stands_for_other_source_is_refused() {
    let d = dev();
    let src = |v: u32| {
        format!(
            "@group(0) @binding(0) var<storage, read_write> o: array<u32>;\n\
             @compute @workgroup_size(1) fn iota() {{ o[0] = {v}u; }}"
        )
    };
    // A registered name: the cache would otherwise hand back kiln's `fill` for this source.
    let e = d
        .kernel_from_source("fill", &src(1), "iota", &[])
        .err()
        .unwrap();
    assert!(
        matches!(&e, DeviceError::ShaderNameTaken { name, .. } if name == "fill"),
        "{e}"
    );
    assert!(e.to_string().contains("registered"), "{e}");
    // An unregistered name is the first source's; the same source again is fine.
    let run = |k: &std::sync::Arc<kiln_device::Kernel>| {
        let o = d.alloc(1, DType::U32).unwrap();
        d.launch(k, &[&o], &Params::new(), [1, 1, 1]).unwrap();
        d.download::<u32>(&o).unwrap()[0]
    };
    let k = d
        .kernel_from_source("name_test", &src(7), "iota", &[])
        .unwrap();
    assert_eq!(run(&k), 7);
    let k = d
        .kernel_from_source("name_test", &src(7), "iota", &[])
        .unwrap();
    assert_eq!(run(&k), 7);
    let e = d
        .kernel_from_source("name_test", &src(8), "iota", &[])
        .err()
        .unwrap();
    assert!(
        matches!(&e, DeviceError::ShaderNameTaken { name, .. } if name == "name_test"),
        "{e}"
    );
    // The registered shader is untouched by all this.
    let fill = d.kernel("fill", "iota", &[]).unwrap();
    let o = d.alloc(3, DType::F32).unwrap();
    d.launch(&fill, &[&o], &Params::new().u(3).f(0.0), [1, 1, 1])
        .unwrap();
    assert_eq!(d.download::<f32>(&o).unwrap(), [0.0, 1.0, 2.0]);
}

#[test]
fn timing_reports_a_positive_duration() {
    let d = dev();
    let k = d.kernel("fill", "iota", &[]).unwrap();
    let a = d.alloc(1 << 20, DType::F32).unwrap();
    let t = d
        .time(|| {
            d.launch(
                &k,
                &[&a],
                &Params::new().u(1 << 20).f(0.0),
                [(1 << 20) / 256, 1, 1],
            )
        })
        .unwrap();
    assert!(t.seconds > 0.0 && t.seconds < 60.0, "{t:?}");
}

#[test]
fn async_readback_rides_in_the_next_submission_and_never_blocks() {
    // A private device: this test asserts which submission carries a read, and on the shared
    // device a parallel test's flush could submit the pending read early.
    let d = Device::new().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)");
    let k = d.kernel("fill", "fill", &[]).unwrap();
    let a = d.alloc(500, DType::F32).unwrap();
    d.launch(&k, &[&a], &Params::new().u(500).f(1.0), [2, 1, 1])
        .unwrap();
    let first = d.read_async(&a).unwrap();
    // Not submitted yet: nothing to read, and asking does not block.
    assert!(first.try_read::<f32>().unwrap().is_none());
    // The copy goes after every dispatch of the carrying submission, so it sees 2.0.
    d.launch(&k, &[&a], &Params::new().u(500).f(2.0), [2, 1, 1])
        .unwrap();
    d.flush().unwrap();
    assert_eq!(first.wait::<f32>().unwrap(), vec![2.0; 500]);
    // Periodic reads, as a training loop makes: each sees its own step's value.
    let tickets: Vec<_> = (0..4)
        .map(|i| {
            d.launch(&k, &[&a], &Params::new().u(500).f(i as f32), [2, 1, 1])
                .unwrap();
            let t = d.read_async(&a).unwrap();
            d.flush().unwrap();
            t
        })
        .collect();
    for (i, t) in tickets.iter().enumerate() {
        assert_eq!(t.wait::<f32>().unwrap()[499], i as f32);
    }
}

#[test]
fn profile_times_each_kernel_by_label() {
    // A private device: profiling counts every submission the device makes meanwhile.
    let d = Device::new().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)");
    let fill = d.kernel("fill", "fill", &[]).unwrap();
    let iota = d.kernel("fill", "iota", &[]).unwrap();
    let a = d.alloc(1 << 16, DType::F32).unwrap();
    let prof = d
        .profile(|| {
            for v in 0..3 {
                d.launch(
                    &fill,
                    &[&a],
                    &Params::new().u(1 << 16).f(v as f32),
                    [256, 1, 1],
                )?;
            }
            d.launch(&iota, &[&a], &Params::new().u(1 << 16).f(0.0), [256, 1, 1])?;
            Ok::<(), DeviceError>(())
        })
        .unwrap();
    let calls: Vec<(&str, u64)> = {
        let mut c: Vec<_> = prof.iter().map(|k| (k.kernel.as_str(), k.calls)).collect();
        c.sort();
        c
    };
    assert_eq!(calls, [("fill::fill", 3), ("fill::iota", 1)]);
    assert!(
        prof.iter().all(|k| k.seconds > 0.0 && k.seconds < 10.0),
        "{prof:?}"
    );
    // The work itself ran: iota came last.
    assert_eq!(d.download::<f32>(&a).unwrap()[7], 7.0);
    // An error inside the work comes back as it is.
    let e = d
        .profile(|| Err::<(), _>(DeviceError::MissingFeature("test")))
        .unwrap_err();
    assert!(matches!(e, DeviceError::MissingFeature("test")));
}

#[test]
fn mesa_release_is_read_from_the_driver_description() {
    use kiln_device::parse_mesa_version;
    assert_eq!(
        parse_mesa_version("llvmpipe Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)"),
        Some((25, 0))
    );
    assert_eq!(parse_mesa_version("radv Mesa 22.3.6"), Some((22, 3)));
    assert_eq!(parse_mesa_version("NVIDIA 580.159.04"), None);
    assert_eq!(parse_mesa_version("Mesa"), None);
}

#[test]
fn a_window_binds_reads_and_writes_only_its_range() {
    let d = dev();
    let data: Vec<f32> = (0..20_000).map(|i| i as f32).collect();
    let buf = d.upload(&data).unwrap();
    assert!(buf.capacity() >= buf.bytes());
    assert!(buf.window(buf.capacity() - 8, 3).is_none());
    let win = buf.window(256, 100).unwrap();
    assert_eq!(d.download::<f32>(&win).unwrap(), data[64..164]);
    // A uniform array bound to the window sees element 0 at the window's start.
    let src = "@group(0) @binding(0) var<uniform> u: array<vec4<f32>, 25>;
        @group(0) @binding(1) var<storage, read_write> out: array<f32>;
        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) g: vec3<u32>) {
            if (g.x < 100u) { out[g.x] = u[g.x / 4u][g.x % 4u] * 2.0; }
        }";
    let k = d
        .kernel_from_source("window_test", src, "main", &[])
        .unwrap();
    let out = d.alloc(100, DType::F32).unwrap();
    d.launch(&k, &[&win, &out], &Params::new(), [2, 1, 1])
        .unwrap();
    let want: Vec<f32> = data[64..164].iter().map(|v| v * 2.0).collect();
    assert_eq!(d.download::<f32>(&out).unwrap(), want);
    d.write(&win, &vec![-1.0f32; 100]).unwrap();
    let after = d.download::<f32>(&buf).unwrap();
    assert_eq!(after[..64], data[..64]);
    assert!(after[64..164].iter().all(|&v| v == -1.0));
    assert_eq!(after[164..], data[164..]);
}

#[test]
fn adapters_are_listed_in_preference_order_and_chosen_by_index() {
    let list = Device::adapters();
    assert!(!list.is_empty(), "no adapter (run scripts/setup.sh)");
    // The first in the list is what Device::new picks when no name is asked for.
    if std::env::var("WGPU_ADAPTER_NAME").map_or(true, |s| s.is_empty()) {
        let d = Device::shared().unwrap();
        assert_eq!(d.adapter().name, list[0].name);
    }
    let last = list.len() - 1;
    let d = Device::with_adapter_index(last).unwrap();
    assert_eq!(d.adapter().name, list[last].name);
    let err = Device::with_adapter_index(list.len())
        .err()
        .expect("an index past the end")
        .to_string();
    assert!(
        err.contains(&format!("adapter index {}", list.len())) && err.contains(&list[0].name),
        "{err}"
    );
}

/// A host write submits the recorded work first only where that work binds the written buffer:
/// the dispatch reads its input as it was, and a write elsewhere leaves it pending.
#[test]
fn a_host_write_waits_only_for_the_work_that_touches_its_buffer() {
    let d = Device::new().unwrap(); // its own counters
    let src = "@group(0) @binding(0) var<storage, read> x: array<f32>;
        @group(0) @binding(1) var<storage, read_write> y: array<f32>;
        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) g: vec3<u32>) {
            if (g.x < 100u) { y[g.x] = x[g.x] * 2.0; }
        }";
    let k = d.kernel_from_source("double", src, "main", &[]).unwrap();
    let x = d.upload(&vec![1.0f32; 100]).unwrap();
    let y = d.alloc(100, DType::F32).unwrap();
    let other = d.alloc(100, DType::F32).unwrap();
    d.flush().unwrap();
    let before = d.counters().submissions;
    d.launch(&k, &[&x, &y], &Params::new(), [2, 1, 1]).unwrap();
    d.write(&other, &vec![5.0f32; 100]).unwrap();
    assert_eq!(
        d.counters().submissions,
        before,
        "a write elsewhere submitted the dispatch"
    );
    d.write(&x, &vec![3.0f32; 100]).unwrap();
    assert_eq!(
        d.counters().submissions,
        before + 1,
        "the write to x did not wait"
    );
    assert_eq!(d.download::<f32>(&y).unwrap(), vec![2.0; 100]);
    assert_eq!(d.download::<f32>(&other).unwrap(), vec![5.0; 100]);
    // Writing the output of a pending dispatch waits for it too.
    d.launch(&k, &[&x, &y], &Params::new(), [2, 1, 1]).unwrap();
    d.write(&y, &vec![-1.0f32; 100]).unwrap();
    assert_eq!(d.download::<f32>(&y).unwrap(), vec![-1.0; 100]);
}
