//! Prints the adapter kiln chooses, its limits and optional features, then one JSON line.
use anyhow::Result;
use clap::Parser;
use kiln::device::Device;

#[path = "common/mod.rs"]
mod common;

#[derive(Parser)]
#[command(about = "Print the adapter kiln chooses, its limits and optional features")]
struct Args {}

fn main() -> Result<()> {
    Args::parse();
    let dev = Device::new()?;
    let a = dev.adapter();
    let c = dev.capabilities();
    let l = dev.limits();
    println!("adapter:  {}", a.name);
    println!(
        "backend:  {}  type: {}  driver: {}",
        a.backend, a.device_type, a.driver
    );
    println!(
        "features: f16={} subgroups={} cooperative_matrix={} timestamps={} pipeline_cache={}",
        c.f16, c.subgroups, c.cooperative_matrix, c.timestamps, c.pipeline_cache
    );
    println!(
        "limits:   max_buffer_size={} max_storage_buffer_binding_size={} \
         max_compute_workgroup_storage_size={} max_compute_invocations_per_workgroup={} \
         max_compute_workgroups_per_dimension={} max_storage_buffers_per_shader_stage={}",
        l.max_buffer_size,
        l.max_storage_buffer_binding_size,
        l.max_compute_workgroup_storage_size,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroups_per_dimension,
        l.max_storage_buffers_per_shader_stage
    );
    let prof = dev.adapter_profile();
    println!(
        "known:    compute_units={} peak_f32_tflops={:?} peak_f16_tflops={:?} bandwidth_gbs={:?}",
        prof.compute_units, prof.peak_f32_tflops, prof.peak_f16_tflops, prof.bandwidth_gbs
    );
    for p in dev.cooperative_matrix_properties() {
        println!("coop matrix: {p:?}");
    }
    // The indices --device-index takes.
    for (i, a) in Device::adapters().iter().enumerate() {
        println!("adapter {i}: {} ({}, {})", a.name, a.backend, a.device_type);
    }
    common::JsonLine::new("device_info")
        .set("adapter", a.name.clone())
        .set("backend", a.backend.clone())
        .set("device_type", a.device_type.clone())
        .set("f16", c.f16)
        .set("subgroups", c.subgroups)
        .set("cooperative_matrix", c.cooperative_matrix)
        .set("timestamps", c.timestamps)
        .set("compute_units", prof.compute_units)
        .set("peak_f32_tflops", prof.peak_f32_tflops)
        .set("peak_f16_tflops", prof.peak_f16_tflops)
        .set("bandwidth_gbs", prof.bandwidth_gbs)
        .set(
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        )
        .set(
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size,
        )
        .print()
}
