//! The bank audit: every GPU kernel's declared workgroup-memory accesses, counted over 32
//! four-byte banks per 32-lane group (`kiln_ops::banks`), are at most 2-way. The table is printed
//! (`cargo test --release -p kiln-ops --test ops -- banks:: --nocapture`). The declarations read their
//! strides and pads from the specialised shaders, so a changed pad shows up here; planning needs
//! an adapter (lavapipe will do), no GPU.

use kiln_device::AdapterProfile;
use kiln_ops::banks::{self, Access};
use kiln_ops::kernels::KernelSpec;
use kiln_ops::{Device, KernelPolicy};

/// At most this many distinct words per bank in one pass.
const BOUND: u32 = 2;

/// Every declared access: the GEMMs', and attention's as planned for an H100 (16 x 16
/// fragments) and an Apple GPU (8 x 8). Planning reads limits only: no GPU is needed.
fn all_accesses() -> Vec<Access> {
    let mut v = kiln_ops::gemm::bank_accesses().expect("GEMM declarations");
    let d = Device::shared().expect("an adapter to plan on (run scripts/setup.sh)");
    for prof in [AdapterProfile::nvidia_hopper(), AdapterProfile::apple_m()] {
        let pd = d.with_policy(KernelPolicy::default().with_profile(prof));
        v.extend(kiln_ops::attention::bank_accesses(&pd).expect("attention declarations"));
    }
    v
}

#[test]
fn every_gpu_kernel_is_at_most_two_way() {
    let acc = all_accesses();
    let (table, bad) = banks::table(&acc, BOUND);
    println!("{table}");
    for family in ["gemm_tile", "coop16", "coop8", "flash", "flash_coop"] {
        assert!(
            acc.iter().any(|a| a.kernel.contains(family) && a.gpu),
            "no access of {family} declared"
        );
    }
    assert!(bad.is_empty(), "over {BOUND}-way:\n{}", bad.join("\n"));
}

/// The model follows the shader: `gemm_coop`'s slab rows without their 16-byte pad (the stride
/// overridden to the bare row) make the fragment loads 8-way, and the audit says so.
#[test]
fn removing_a_pad_is_reported_as_a_conflict() {
    let spec = |pad: bool| {
        let mut c = vec![
            ("S", 16.0),
            ("SGM", 2.0),
            ("SGN", 2.0),
            ("F", 4.0),
            ("SG", 32.0),
            ("MIN_SG", 32.0),
            ("BK", 32.0),
            ("A_KFAST", 1.0),
            ("B_NFAST", 1.0),
        ];
        if !pad {
            c.extend([("AS", 32.0), ("BS", 128.0)]);
        }
        KernelSpec::new("gemm_coop", "gemm_coop16", &c)
    };
    let v = spec(true).override_values().unwrap();
    assert_eq!(
        (v["AS"], v["BS"]),
        (40.0, 136.0),
        "the pads the shader sets"
    );
    let worst = |s: &KernelSpec| {
        let acc = kiln_ops::gemm::coop_bank_accesses(s, "t").unwrap();
        acc.iter()
            .filter(|a| a.what.starts_with("fragment load"))
            .map(|a| banks::ways(a).worst)
            .max()
            .unwrap()
    };
    assert_eq!(worst(&spec(true)), 1);
    let unpadded = worst(&spec(false));
    assert!(unpadded >= 4, "{unpadded}-way");
    let (_, bad) = banks::table(
        &kiln_ops::gemm::coop_bank_accesses(&spec(false), "t").unwrap(),
        BOUND,
    );
    assert!(!bad.is_empty());
}

/// Likewise the cooperative softmax: the score scratch without its 4-float pad (stride = the
/// tile's width) puts the bookkeeping's 16 rows on one bank quad.
#[test]
fn the_softmax_scratch_pad_is_what_spreads_its_rows() {
    let spec = |pad: bool| {
        let mut c = vec![
            ("S", 16.0),
            ("SGC", 4.0),
            ("SG", 32.0),
            ("MIN_SG", 32.0),
            ("DP", 64.0),
            ("BKV", 32.0),
            ("LR", 2.0),
        ];
        if !pad {
            c.push(("SCS", 32.0));
        }
        KernelSpec::new("attention_coop", "flash_coop16", &c)
    };
    let worst = |s: &KernelSpec| {
        kiln_ops::attention::coop_bank_accesses(s, "t")
            .unwrap()
            .iter()
            .filter(|a| a.what.starts_with("softmax bookkeeping"))
            .map(|a| banks::ways(a).worst)
            .max()
            .unwrap()
    };
    assert_eq!(spec(true).override_values().unwrap()["SCS"], 36.0);
    assert!(worst(&spec(true)) <= BOUND);
    assert!(worst(&spec(false)) >= 8, "{}", worst(&spec(false)));
}
