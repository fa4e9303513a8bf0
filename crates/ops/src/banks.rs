//! A bank model of workgroup memory, for auditing kernels' access patterns without a GPU.
//!
//! Workgroup (shared) memory is split into 32 banks of 4-byte words (NVIDIA, AMD and Apple
//! GPUs alike); the lanes of one 32-lane group that touch distinct words of the same bank in one
//! access are served one after another. Each kernel declares its workgroup-memory accesses beside
//! its launcher as [`Access`]es: for every lane of a 32-lane group and every step (one
//! instruction of a loop, or one element of a staged group), the byte address it touches and how
//! many bytes. [`ways`] counts, for each step, the largest number of distinct words any bank
//! serves, as the hardware splits the access:
//! - up to 4 bytes per lane: one pass of 32 lanes; a 16-bit element is half a word, and lanes
//!   touching the two halves of one word (or the same word) cost one access, not two;
//! - 8 bytes per lane: two passes of 16 lanes; 16 bytes: four passes of 8 lanes (128 bytes a
//!   pass), each counted on its own.
//!
//! The audit (`crates/ops/tests/banks.rs`) asserts at most 2-way for every GPU kernel's access
//! and prints the table. Declarations read their strides and pads from the specialised shader
//! ([`crate::kernels::KernelSpec::override_values`]), so they cannot drift from the WGSL.

use std::fmt::Write as _;

/// Banks of workgroup memory.
pub const BANKS: u64 = 32;
/// Lanes served together (a warp; AMD's wave32, Apple's SIMD-group).
pub const LANES: u32 = 32;

/// One workgroup-memory access of a kernel, as 32 lanes perform it.
pub struct Access {
    /// The kernel or variant ("gemm_coop16 A", "flash_backward_kv").
    pub kernel: String,
    /// The workgroup array.
    pub array: &'static str,
    /// What the access is ("slab store", "fragment load").
    pub what: String,
    /// Bytes each lane touches per step: 2, 4, 8 or 16.
    pub bytes: u32,
    /// Steps to check (instructions of a loop, elements of a group).
    pub steps: u32,
    /// Lane groups to check (the first 32 invocations, the next 32...).
    pub groups: u32,
    /// Whether the kernel runs on GPUs (software-adapter kernels are listed, not held to the
    /// bound: a CPU has no banks).
    pub gpu: bool,
    /// Byte address touched by `lane` (0..32) of lane group `group` at `step`, or None where the
    /// lane is idle.
    #[allow(clippy::type_complexity)]
    pub addr: Box<dyn Fn(u32, u32, u32) -> Option<u64>>,
}

impl Access {
    /// An access on GPUs, one lane group, `bytes` per lane, `steps` steps, addresses from
    /// `addr(lane, step)` in bytes.
    pub fn new(
        kernel: impl Into<String>,
        array: &'static str,
        what: impl Into<String>,
        bytes: u32,
        steps: u32,
        addr: impl Fn(u32, u32) -> Option<u64> + 'static,
    ) -> Access {
        Access {
            kernel: kernel.into(),
            array,
            what: what.into(),
            bytes,
            steps,
            groups: 1,
            gpu: true,
            addr: Box::new(move |lane, _, step| addr(lane, step)),
        }
    }

    /// The same access with lane groups: `addr(lane, group, step)`.
    pub fn grouped(
        mut self,
        groups: u32,
        addr: impl Fn(u32, u32, u32) -> Option<u64> + 'static,
    ) -> Access {
        self.groups = groups;
        self.addr = Box::new(addr);
        self
    }

    /// The same access marked as a software adapter's kernel.
    pub fn software(mut self) -> Access {
        self.gpu = false;
        self
    }
}

/// What [`ways`] found for one access.
#[derive(Clone, Debug, PartialEq)]
pub struct Ways {
    /// The worst step's ways (distinct words one bank serves in one pass).
    pub worst: u32,
    /// The group and step where it occurs.
    pub at: (u32, u32),
    /// Passes over all steps and groups, against the conflict-free minimum.
    pub passes: u64,
    /// The conflict-free minimum of passes.
    pub ideal: u64,
}

/// The ways of one pass: lanes' (address, bytes) touches.
fn pass_ways(touches: &[(u64, u32)]) -> u32 {
    let mut words: Vec<u64> = Vec::new();
    for &(a, b) in touches {
        let first = a / 4;
        let last = (a + b as u64 - 1) / 4;
        words.extend(first..=last);
    }
    words.sort_unstable();
    words.dedup();
    let mut per_bank = [0u32; BANKS as usize];
    for w in words {
        per_bank[(w % BANKS) as usize] += 1;
    }
    per_bank.into_iter().max().unwrap_or(0)
}

/// Counts the ways of `acc` over its steps and lane groups.
pub fn ways(acc: &Access) -> Ways {
    let per_pass = match acc.bytes {
        0..=4 => LANES,
        8 => LANES / 2,
        _ => LANES / 4,
    };
    let mut out = Ways {
        worst: 0,
        at: (0, 0),
        passes: 0,
        ideal: 0,
    };
    for g in 0..acc.groups {
        for s in 0..acc.steps {
            let lanes: Vec<Option<u64>> = (0..LANES).map(|l| (acc.addr)(l, g, s)).collect();
            for chunk in lanes.chunks(per_pass as usize) {
                let touches: Vec<(u64, u32)> =
                    chunk.iter().flatten().map(|&a| (a, acc.bytes)).collect();
                if touches.is_empty() {
                    continue;
                }
                let w = pass_ways(&touches);
                out.passes += w as u64;
                out.ideal += 1;
                if w > out.worst {
                    out.worst = w;
                    out.at = (g, s);
                }
            }
        }
    }
    out
}

/// The audit's table: one row per access with its ways, and `ok` where a GPU access is within
/// `bound` ways.
pub fn table(accesses: &[Access], bound: u32) -> (String, Vec<String>) {
    let mut s = String::new();
    let mut bad = Vec::new();
    let _ = writeln!(
        s,
        "{:<34} {:<8} {:<44} {:>5} {:>4} {:>9} {:>9}",
        "kernel", "array", "access", "bytes", "ways", "passes", "minimum"
    );
    for a in accesses {
        let w = ways(a);
        let flag = if !a.gpu {
            " (software adapter: not held to the bound)"
        } else if w.worst > bound {
            " OVER THE BOUND"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "{:<34} {:<8} {:<44} {:>5} {:>4} {:>9} {:>9}{flag}",
            a.kernel, a.array, a.what, a.bytes, w.worst, w.passes, w.ideal
        );
        if a.gpu && w.worst > bound {
            bad.push(format!(
                "{} {} {}: {}-way at lane group {}, step {}",
                a.kernel, a.array, a.what, w.worst, w.at.0, w.at.1
            ));
        }
    }
    (s, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_counts_ways_as_the_hardware_splits_accesses() {
        // Consecutive words: conflict-free; a stride of 32 words: 32-way; a broadcast: 1.
        let w = |bytes, f: fn(u32) -> u64| {
            ways(&Access::new("t", "x", "", bytes, 1, move |l, _| Some(f(l)))).worst
        };
        assert_eq!(w(4, |l| 4 * l as u64), 1);
        assert_eq!(w(4, |l| 128 * l as u64), 32);
        assert_eq!(w(4, |_| 0), 1);
        // 16-bit elements: two lanes per word cost one access.
        assert_eq!(w(2, |l| 2 * l as u64), 1);
        // A stride of 2 words: 2-way.
        assert_eq!(w(4, |l| 8 * l as u64), 2);
        // 16-byte accesses: 8 lanes per pass, consecutive vec4s conflict-free, a 32-word
        // stride 8-way.
        assert_eq!(w(16, |l| 16 * l as u64), 1);
        assert_eq!(w(16, |l| 128 * l as u64), 8);
        // 8-byte accesses: 16 lanes per pass.
        assert_eq!(w(8, |l| 8 * l as u64), 1);
        assert_eq!(w(8, |l| 16 * l as u64), 2);
    }
}
