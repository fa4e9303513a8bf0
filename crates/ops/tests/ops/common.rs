//! What every family's tests share: the device, forced variants, arrays, and the counting case
//! runner.

use kiln_device::AdapterProfile;
use kiln_ops::{Array, Device, DeviceError, KernelPolicy, OpError};
use std::collections::BTreeMap;

pub fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

/// The shared device with kernel variants forced: (family, variant) pairs.
pub fn forced(pairs: &[(&str, &str)]) -> Device {
    let p = pairs
        .iter()
        .fold(KernelPolicy::default(), |p, (f, v)| p.force(f, v));
    dev().with_policy(p)
}

pub fn arr(d: &Device, v: &[f32], s: &[usize]) -> Array {
    Array::from_f32(d, v, s).unwrap()
}

/// f16 values rounded as the device rounds them.
pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
}

/// Cases checked and refused of one kind.
#[derive(Default)]
struct Count {
    checked: usize,
    refused: Vec<String>,
}

/// Counts the cases one variant (or forced device) checked and the shapes it refused, by kind
/// (a forward and each gradient, say). A case that runs counts as checked; a forced variant's
/// refusal with the typed error (`DeviceError::VariantUnsupported`) counts as refused, with its
/// reason; any other error fails the test. [`Tally::finish`] prints the counts and fails where a
/// kind checked no case; a tally dropped unfinished fails too, so no test passes uncounted.
pub struct Tally {
    variant: String,
    kinds: BTreeMap<String, Count>,
    finished: bool,
}

impl Tally {
    pub fn new(variant: impl Into<String>) -> Tally {
        Tally {
            variant: variant.into(),
            kinds: BTreeMap::new(),
            finished: false,
        }
    }

    /// Runs one case of the kind "cases"; true when it was checked.
    pub fn case(&mut self, what: &str, f: impl FnOnce() -> Result<(), OpError>) -> bool {
        self.case_of("cases", what, f)
    }

    /// Runs one case of `kind`; true when it was checked, false when the forced variant refused
    /// it with the typed error (any other error fails the test).
    pub fn case_of(
        &mut self,
        kind: &str,
        what: &str,
        f: impl FnOnce() -> Result<(), OpError>,
    ) -> bool {
        let result = f();
        let count = self.kinds.entry(kind.to_string()).or_default();
        match result {
            Ok(()) => {
                count.checked += 1;
                true
            }
            Err(OpError::Device(DeviceError::VariantUnsupported { reason, .. })) => {
                count.refused.push(format!("{what}: {reason}"));
                false
            }
            Err(e) => panic!("{} {kind} {what}: {e}", self.variant),
        }
    }

    /// Cases of `kind` checked so far.
    pub fn checked(&self, kind: &str) -> usize {
        self.kinds.get(kind).map_or(0, |c| c.checked)
    }

    /// Cases of every kind refused so far.
    pub fn refused(&self) -> usize {
        self.kinds.values().map(|c| c.refused.len()).sum()
    }

    /// Prints what each kind checked and refused (and why); fails where a kind, or the whole
    /// tally, checked nothing. Returns the cases checked, all kinds together.
    pub fn finish(mut self) -> usize {
        self.finished = true;
        let mut total = 0;
        for (kind, c) in &self.kinds {
            println!(
                "{} {kind}: {} checked, {} refused",
                self.variant,
                c.checked,
                c.refused.len()
            );
            for r in &c.refused {
                println!("    refused {r}");
            }
            total += c.checked;
        }
        assert!(total > 0, "{}: checked no case", self.variant);
        for (kind, c) in &self.kinds {
            assert!(
                c.checked > 0,
                "{} {kind}: checked no case ({} refused)",
                self.variant,
                c.refused.len()
            );
        }
        total
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if !self.finished && !std::thread::panicking() {
            panic!("{}: the tally was never finished", self.variant);
        }
    }
}

/// The value, or None where a forced variant refused the shape with the typed error (any other
/// error fails the test).
pub fn unless_refused<T>(r: Result<T, OpError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(OpError::Device(DeviceError::VariantUnsupported { .. })) => None,
        Err(e) => panic!("{e}"),
    }
}

/// The error `r` must be: one whose message holds `want` (the op and what it expected), so an
/// error test fails on any other error.
#[track_caller]
pub fn expect_err<T, E: std::fmt::Display>(r: Result<T, E>, want: &str) -> E {
    let at = std::panic::Location::caller();
    let e = match r {
        Ok(_) => panic!("{at}: expected an error holding {want:?}, got Ok"),
        Err(e) => e,
    };
    assert!(
        e.to_string().contains(want),
        "{at}: expected {want:?} in {e}"
    );
    e
}

/// The cooperative sizes to test: the adapter's, and 16 on Mesa's lavapipe (which reports 8 x 8
/// fragments but lowers any size in software). `KILN_REQUIRE_COOP`, set on machines known to have
/// cooperative matrices, makes their absence a failure, so the path cannot silently go untested.
pub fn coop_profile(d: &Device) -> (Vec<u32>, AdapterProfile) {
    let coop = !d.cooperative_f16_f32_sizes().is_empty();
    if std::env::var_os("KILN_REQUIRE_COOP").is_some() {
        assert!(
            coop,
            "KILN_REQUIRE_COOP is set but the adapter has no f16 cooperative matrices"
        );
    }
    let mut sizes = d.cooperative_f16_f32_sizes().to_vec();
    let mut prof = d.adapter_profile().clone();
    if coop && d.adapter().is_software && !sizes.contains(&16) {
        sizes.insert(0, 16);
        prof.coop_f16_sizes = sizes.clone();
    }
    (sizes, prof)
}
