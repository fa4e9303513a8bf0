//! Facts wgpu does not report: compute units, peak arithmetic rates and memory bandwidth of known
//! GPUs, matched by adapter name. Grid sizes (split-K, split-KV decode, row kernels) are chosen
//! from the compute units; benchmarks and training loops report model FLOP utilisation from the
//! peaks.
//!
//! Figures are the vendors' published dense rates (no sparsity), f16 with f32 accumulation on
//! matrix units where the device has them.

/// What kiln knows about one GPU model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnownDevice {
    /// Lower-case fragments that must all appear in the lower-cased adapter name.
    pub pattern: &'static [&'static str],
    /// A short name for reports.
    pub name: &'static str,
    /// SMs (NVIDIA), CUs (AMD), Xe cores (Intel), GPU cores (Apple).
    pub compute_units: u32,
    /// Peak f32 rate on the vector units, TFLOP/s.
    pub peak_f32_tflops: f64,
    /// Peak f16 rate with f32 accumulation (matrix units where present), TFLOP/s.
    pub peak_f16_tflops: f64,
    /// Peak memory bandwidth, GB/s.
    pub bandwidth_gbs: f64,
}

const fn k(
    pattern: &'static [&'static str],
    name: &'static str,
    compute_units: u32,
    peak_f32_tflops: f64,
    peak_f16_tflops: f64,
    bandwidth_gbs: f64,
) -> KnownDevice {
    KnownDevice {
        pattern,
        name,
        compute_units,
        peak_f32_tflops,
        peak_f16_tflops,
        bandwidth_gbs,
    }
}

/// Known GPUs, the more specific patterns first (an "H100 PCIe" before an "H100").
pub const KNOWN_DEVICES: &[KnownDevice] = &[
    k(&["h200"], "NVIDIA H200", 132, 66.9, 989.4, 4800.0),
    k(
        &["h100", "pcie"],
        "NVIDIA H100 PCIe",
        114,
        51.2,
        756.0,
        2000.0,
    ),
    k(
        &["h100", "nvl"],
        "NVIDIA H100 NVL",
        132,
        60.0,
        835.0,
        3900.0,
    ),
    k(&["h100"], "NVIDIA H100 SXM", 132, 66.9, 989.4, 3350.0),
    k(&["gh200"], "NVIDIA GH200", 132, 66.9, 989.4, 4000.0),
    k(&["a100"], "NVIDIA A100", 108, 19.5, 312.0, 2039.0),
    k(&["l40s"], "NVIDIA L40S", 142, 91.6, 366.0, 864.0),
    k(&["l4"], "NVIDIA L4", 58, 30.3, 121.0, 300.0),
    k(&["a10"], "NVIDIA A10", 72, 31.2, 125.0, 600.0),
    k(&["t4"], "NVIDIA T4", 40, 8.1, 65.0, 320.0),
    k(
        &["rtx", "5090"],
        "NVIDIA RTX 5090",
        170,
        104.8,
        209.5,
        1792.0,
    ),
    k(
        &["rtx", "4090"],
        "NVIDIA RTX 4090",
        128,
        82.6,
        165.2,
        1008.0,
    ),
    k(&["rtx", "4080"], "NVIDIA RTX 4080", 76, 48.7, 97.5, 717.0),
    k(&["rtx", "3090"], "NVIDIA RTX 3090", 82, 35.6, 71.0, 936.0),
    k(&["rtx", "3080"], "NVIDIA RTX 3080", 68, 29.8, 59.5, 760.0),
    k(
        &["mi300x"],
        "AMD Instinct MI300X",
        304,
        163.4,
        1307.4,
        5300.0,
    ),
    k(&["mi250"], "AMD Instinct MI250X", 220, 47.9, 383.0, 3277.0),
    k(
        &["7900", "xtx"],
        "AMD Radeon RX 7900 XTX",
        96,
        61.4,
        122.8,
        960.0,
    ),
    k(
        &["7900", "xt"],
        "AMD Radeon RX 7900 XT",
        84,
        51.6,
        103.2,
        800.0,
    ),
    k(&["arc", "a770"], "Intel Arc A770", 32, 19.7, 157.0, 560.0),
    k(
        &["apple", "m3", "max"],
        "Apple M3 Max",
        40,
        16.4,
        16.4,
        400.0,
    ),
    k(
        &["apple", "m2", "max"],
        "Apple M2 Max",
        38,
        13.6,
        13.6,
        400.0,
    ),
    k(
        &["apple", "m1", "max"],
        "Apple M1 Max",
        32,
        10.4,
        10.4,
        400.0,
    ),
    k(&["apple", "m3"], "Apple M3", 10, 3.6, 3.6, 100.0),
    k(&["apple", "m2"], "Apple M2", 10, 3.6, 3.6, 100.0),
    k(&["apple", "m1"], "Apple M1", 8, 2.6, 2.6, 68.0),
];

/// The known device whose pattern matches `adapter_name`, if any.
///
/// ```
/// use kiln_device::known::lookup;
/// assert_eq!(lookup("NVIDIA H100 80GB HBM3").unwrap().compute_units, 132);
/// assert_eq!(lookup("NVIDIA H100 PCIe").unwrap().compute_units, 114);
/// assert!(lookup("llvmpipe (LLVM 15.0.6, 256 bits)").is_none());
/// ```
pub fn lookup(adapter_name: &str) -> Option<&'static KnownDevice> {
    let name = adapter_name.to_lowercase();
    KNOWN_DEVICES
        .iter()
        .find(|d| d.pattern.iter().all(|p| contains_word(&name, p)))
}

/// `needle` in `hay` not glued to other letters or digits on either side ("a10" is not found in
/// "a100", "l4" not in "l40s").
fn contains_word(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        !glued(before) && !glued(after)
    })
}

/// Compute units to size grids for when the adapter is not in [`KNOWN_DEVICES`]: its CPU threads
/// for a software adapter, 16 for an integrated GPU, and a large discrete GPU's 128 otherwise, so
/// that a big unknown GPU is not left idle (a small one merely queues a few more workgroups).
pub fn default_compute_units(is_software: bool, device_type: &str) -> u32 {
    if is_software {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(2)
    } else if device_type == "IntegratedGpu" {
        16
    } else {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_most_specific_entry() {
        for (name, want) in [
            ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
            ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
            ("NVIDIA H200", "NVIDIA H200"),
            ("NVIDIA GeForce RTX 4090", "NVIDIA RTX 4090"),
            ("NVIDIA A100-SXM4-80GB", "NVIDIA A100"),
            ("NVIDIA L40S", "NVIDIA L40S"),
            ("NVIDIA L4", "NVIDIA L4"),
            (
                "AMD Radeon RX 7900 XTX (RADV NAVI31)",
                "AMD Radeon RX 7900 XTX",
            ),
            (
                "AMD Radeon RX 7900 XT (RADV NAVI31)",
                "AMD Radeon RX 7900 XT",
            ),
            ("Apple M2 Max", "Apple M2 Max"),
            ("Apple M2", "Apple M2"),
            ("Intel(R) Arc(tm) A770 Graphics (DG2)", "Intel Arc A770"),
        ] {
            assert_eq!(lookup(name).map(|d| d.name), Some(want), "{name}");
        }
        for name in [
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            "NVIDIA A1000",
            "SwiftShader",
        ] {
            assert_eq!(lookup(name), None, "{name}");
        }
    }
}
