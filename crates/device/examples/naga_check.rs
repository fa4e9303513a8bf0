//! Validates a WGSL file with naga and translates it to SPIR-V, MSL and HLSL, as kiln does for
//! its own shaders: `cargo run -p kiln-device --example naga_check -- path/to/shader.wgsl`.
fn main() {
    let p = std::env::args().nth(1).unwrap();
    let src = std::fs::read_to_string(&p).unwrap();
    let v = kiln_device::shaders::validate("t", &src).unwrap_or_else(|e| panic!("{e}"));
    v.translate_all("t").unwrap_or_else(|e| panic!("{e}"));
    println!("ok");
}
