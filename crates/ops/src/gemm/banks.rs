//! The GEMM kernels' workgroup-memory accesses, for the bank audit ([`crate::banks`]).

use super::coop::*;
use super::*;

/// The workgroup-memory accesses of the GEMM kernels, for the bank audit ([`crate::banks`]), as
/// the kernels make them with the constants their launchers set (strides and pads read from the
/// specialised shaders): the f32 GPU tiles (`gemm_tile`, `gemm_tile4`: every tile variant, every
/// operand layout), the software adapters' `gemm` (4 x 4 per invocation), and the cooperative
/// f16 staging of every cooperative tile, operand layout and slab depth, with 32-lane subgroups.
pub fn bank_accesses() -> Result<Vec<crate::banks::Access>> {
    let mut out = Vec::new();
    for (name, t) in GPU_TILES {
        for (entry, layouts) in [
            ("gemm_tile", &[(true, true)][..]),
            (
                "gemm_tile4",
                &[(true, true), (false, true), (true, false), (false, false)][..],
            ),
        ] {
            for &(a_kfast, b_nfast) in layouts {
                let mut consts: Vec<(&str, f64)> = vec![
                    ("MODE", 0.0),
                    ("TBM", t.bm as f64),
                    ("TBN", t.bn as f64),
                    ("TRM", t.rm as f64),
                    ("TRN", t.rn as f64),
                    ("TBK", TILE_BK as f64),
                ];
                if entry == "gemm_tile4" {
                    consts.extend([
                        ("A_KFAST", a_kfast as u8 as f64),
                        ("B_NFAST", b_nfast as u8 as f64),
                    ]);
                }
                let spec = KernelSpec::new("gemm", entry, &consts);
                let label = if entry == "gemm_tile" {
                    format!("{name} {entry}")
                } else {
                    format!(
                        "{name} {entry} {}{}",
                        kfast(a_kfast, "k"),
                        kfast(b_nfast, "n")
                    )
                };
                tile_accesses(&mut out, &spec, &label, entry == "gemm_tile4")?;
            }
        }
    }
    gemm4x4_accesses(&mut out)?;
    for (name, t) in [
        ("coop16", COOP16),
        ("coop16_small", COOP16_SMALL),
        ("coop8", COOP8),
        ("coop8_small", COOP8_SMALL),
    ] {
        for bk in [32, 16] {
            for (a_kfast, b_nfast) in [(true, true), (false, true), (true, false), (false, false)] {
                let l = CoopLayout {
                    sg: (32, 32),
                    bk,
                    alpha: false,
                    a_kfast,
                    b_nfast,
                };
                let label = format!(
                    "{name} BK{bk} {}{}",
                    kfast(a_kfast, "k"),
                    kfast(b_nfast, "n")
                );
                coop_accesses(&mut out, &coop_spec(t, &l, false), &label)?;
            }
        }
    }
    Ok(out)
}

/// "A:k" / "A:m"-style labels of an operand layout.
fn kfast(fast: bool, dim: &str) -> String {
    match (dim, fast) {
        ("k", true) => "A[m][k] ".into(),
        ("k", false) => "A[k][m] ".into(),
        (_, true) => "B[k][n]".into(),
        _ => "B[n][k]".into(),
    }
}

/// gemm_tile / gemm_tile4: the slab stores (A transposed into [k][m], B as [k][n], each row
/// padded by one vec4) and the register-blocked reads of `tile_compute`.
fn tile_accesses(
    out: &mut Vec<crate::banks::Access>,
    spec: &KernelSpec,
    label: &str,
    vec4: bool,
) -> Result<()> {
    use crate::banks::Access;
    let v = spec.override_values()?;
    let g = |n: &str| -> Result<u64> {
        v.get(n).map(|x| *x as u64).ok_or_else(|| OpError::Invalid {
            op: "bank model",
            message: format!("{} has no override `{n}`", spec.label()),
        })
    };
    let (tbm, tbn, tbk, tsa, tsb) = (g("TBM")?, g("TBN")?, g("TBK")?, g("TSA")?, g("TSB")?);
    let (twx, twy, trm, trn) = (g("TWX")?, g("TWY")?, g("TRM")?, g("TRN")?);
    let a_kfast = !vec4 || g("A_KFAST")? == 1;
    let b_nfast = vec4 && g("B_NFAST")? == 1;
    let tnt = twx * twy;
    let groups = (tnt / 32).max(1) as u32;
    let steps_a = (tbm * tbk / 4).div_ceil(tnt) as u32;
    let steps_b = (tbn * tbk / 4).div_ceil(tnt) as u32;
    let lanes = move |lane: u32, grp: u32| -> Option<u64> {
        let li = grp as u64 * 32 + lane as u64;
        (li < tnt).then_some(li)
    };
    // A: groups of 4 k along a row of A (scalar stores into [k][m]), or (A[k][m] operands)
    // one vec4 along m.
    if a_kfast {
        out.push(
            Access::new(
                label,
                "Ta",
                "slab store (A quads along k, transposed)",
                4,
                4 * steps_a,
                |_, _| None,
            )
            .grouped(groups, move |lane, grp, step| {
                let e = lanes(lane, grp)? + (step / 4) as u64 * tnt;
                (e < tbm * tbk / 4).then(|| {
                    let (m, k, i) = (e / (tbk / 4), (e % (tbk / 4)) * 4, (step % 4) as u64);
                    4 * ((k + i) * tsa * 4 + m)
                })
            }),
        );
    } else {
        out.push(
            Access::new(
                label,
                "Ta",
                "slab store (vec4 along m)",
                16,
                steps_a,
                |_, _| None,
            )
            .grouped(groups, move |lane, grp, step| {
                let e = lanes(lane, grp)? + step as u64 * tnt;
                (e < tbm * tbk / 4).then(|| 16 * ((e / (tbm / 4)) * tsa + e % (tbm / 4)))
            }),
        );
    }
    if b_nfast {
        out.push(
            Access::new(
                label,
                "Tb",
                "slab store (vec4 along n)",
                16,
                steps_b,
                |_, _| None,
            )
            .grouped(groups, move |lane, grp, step| {
                let e = lanes(lane, grp)? + step as u64 * tnt;
                (e < tbn * tbk / 4).then(|| 16 * ((e / (tbn / 4)) * tsb + e % (tbn / 4)))
            }),
        );
    } else {
        out.push(
            Access::new(
                label,
                "Tb",
                "slab store (B quads along k)",
                4,
                4 * steps_b,
                |_, _| None,
            )
            .grouped(groups, move |lane, grp, step| {
                let e = lanes(lane, grp)? + (step / 4) as u64 * tnt;
                (e < tbn * tbk / 4).then(|| {
                    let (n, k, i) = (e / (tbk / 4), (e % (tbk / 4)) * 4, (step % 4) as u64);
                    4 * ((k + i) * tsb * 4 + n)
                })
            }),
        );
    }
    // tile_compute: row quads TWY apart (A), column quads TWX apart (B), per k.
    let (fa, fb) = ((trm / 4) as u32, (trn / 4) as u32);
    out.push(
        Access::new(
            label,
            "Ta",
            "register-tile read",
            16,
            tbk as u32 * fa,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, step| {
            let li = lanes(lane, grp)?;
            let (kk, gq) = ((step / fa) as u64, (step % fa) as u64);
            Some(16 * (kk * tsa + li / twx + gq * twy))
        }),
    );
    out.push(
        Access::new(
            label,
            "Tb",
            "register-tile read",
            16,
            tbk as u32 * fb,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, step| {
            let li = lanes(lane, grp)?;
            let (kk, h) = ((step / fb) as u64, (step % fb) as u64);
            Some(16 * (kk * tsb + li % twx + h * twx))
        }),
    );
    Ok(())
}

/// The software adapters' `gemm` (16 x 16 invocations, 4 x 4 outputs each, BK = 16): its
/// slab stores and reads, as `gemm_4x4` launches it.
fn gemm4x4_accesses(out: &mut Vec<crate::banks::Access>) -> Result<()> {
    use crate::banks::Access;
    let spec = KernelSpec::new(
        "gemm",
        "gemm",
        &[("MODE", 0.0), ("TM", 16.0), ("TN", 16.0), ("BK", 16.0)],
    );
    let v = spec.override_values()?;
    let (tm, tn, bk) = (v["TM"] as u64, v["TN"] as u64, v["BK"] as u64);
    let (bm, bn, nt) = (4 * tm, 4 * tn, tm * tn);
    let label = "gemm_4x4 gemm";
    let steps_a = (bm * bk).div_ceil(nt) as u32;
    let steps_b = (bn * bk).div_ceil(nt) as u32;
    let groups = (nt / 32) as u32;
    out.push(
        Access::new(
            label,
            "As",
            "slab store (As[kk * TM + mm / 4][mm % 4])",
            4,
            steps_a,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, step| {
            let i = grp as u64 * 32 + lane as u64 + step as u64 * nt;
            let (mm, kk) = (i / bk, i % bk);
            Some(4 * ((kk * tm + mm / 4) * 4 + mm % 4))
        })
        .software(),
    );
    out.push(
        Access::new(label, "Bs", "slab store", 4, steps_b, |_, _| None)
            .grouped(groups, move |lane, grp, step| {
                let i = grp as u64 * 32 + lane as u64 + step as u64 * nt;
                let (nn, kk) = (i % bn, i / bn);
                Some(4 * ((kk * tn + nn / 4) * 4 + nn % 4))
            })
            .software(),
    );
    out.push(
        Access::new(
            label,
            "As",
            "read (As[kk * TM + lid.y])",
            16,
            bk as u32,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, kk| {
            let li = grp as u64 * 32 + lane as u64;
            Some(16 * (kk as u64 * tm + li / tn))
        })
        .software(),
    );
    out.push(
        Access::new(
            label,
            "Bs",
            "read (Bs[kk * TN + lid.x])",
            16,
            bk as u32,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, kk| {
            let li = grp as u64 * 32 + lane as u64;
            Some(16 * (kk as u64 * tn + li % tn))
        })
        .software(),
    );
    Ok(())
}

/// The accesses of one `gemm_coop` pipeline (as [`bank_accesses`] declares them), labelled
/// `label`: for tests that vary a constant.
pub fn coop_bank_accesses(spec: &KernelSpec, label: &str) -> Result<Vec<crate::banks::Access>> {
    let mut out = Vec::new();
    coop_accesses(&mut out, spec, label)?;
    Ok(out)
}

/// The store order's swizzle of `gemm_coop.wgsl`'s `swz` (mirrored here for the model).
fn coop_swizzle(row: u64, ch: u64, cpr: u64) -> u64 {
    if cpr >= 8 {
        (row * (cpr / 8) + ch / 8) % 4
    } else if cpr == 4 {
        row % 4
    } else {
        (row / 8 + 2 * ch) % 4
    }
}

/// gemm_coop: the slab stores (8 f16 per group, 16-bit stores in swizzled word order), the
/// fragment loads (modelled as NVIDIA's `ldmatrix`: a 16 x 16 fragment is 32 rows of 16 bytes,
/// lane l reading row l % 16, half l / 16; an 8 x 8 one 8 rows read by 8 lanes), and the output
/// scratch (accumulators stored as NVIDIA's m16n8 layout: lane l holds rows l / 4 and l / 4 + 8,
/// columns 2 (l % 4) and the next, per 8 columns; then read back consecutively).
fn coop_accesses(
    out: &mut Vec<crate::banks::Access>,
    spec: &KernelSpec,
    label: &str,
) -> Result<()> {
    use crate::banks::Access;
    let v = spec.override_values()?;
    let g = |n: &str| -> Result<u64> {
        v.get(n).map(|x| *x as u64).ok_or_else(|| OpError::Invalid {
            op: "bank model",
            message: format!("{} has no override `{n}`", spec.label()),
        })
    };
    let (bm, bn, bk, s, f) = (g("BM")?, g("BN")?, g("BK")?, g("S")?, g("F")?);
    let (wg, sgm, sgn) = (g("WG")?, g("SGM")?, g("SGN")?);
    let (a_kfast, b_nfast) = (g("A_KFAST")? == 1, g("B_NFAST")? == 1);
    for (op, slow_fast, stride, slab, groups_n, nfast) in [
        (
            "As",
            g("A_FAST")?,
            g("AS")?,
            g("A_SLAB")?,
            bm * bk / 8,
            a_kfast,
        ),
        (
            "Bs",
            g("B_FAST")?,
            g("BS")?,
            g("B_SLAB")?,
            bk * bn / 8,
            b_nfast,
        ),
    ] {
        let fast = slow_fast;
        let cpr = fast / 8;
        let per = groups_n.div_ceil(wg);
        let lane_groups = (wg / 32 * per) as u32;
        // The second buffer: the same pattern shifted by one slab.
        let what = format!(
            "slab store, rows of {fast} + pad ({})",
            if nfast { "fast" } else { "transposed operand" }
        );
        out.push(Access::new(label, op, what, 2, 8, |_, _| None).grouped(
            lane_groups,
            move |lane, grp, step| {
                let (sub, call) = (grp as u64 % (wg / 32), grp as u64 / (wg / 32));
                let gi = call * wg + sub * 32 + lane as u64;
                if gi >= groups_n {
                    return None;
                }
                let (row, ch) = (gi / cpr, gi % cpr);
                let w = (step as u64 / 2) ^ coop_swizzle(row, ch, cpr);
                Some(2 * (slab + row * stride + ch * 8 + 2 * w + step as u64 % 2))
            },
        ));
    }
    // Fragment loads: subgroup (i, j) of the SGM x SGN grid, fragment i (or j) at k-step kk.
    let frag =
        |op: &'static str, stride: u64, rows_are_k: bool, sgs: u64, out: &mut Vec<Access>| {
            let steps = (f * (bk / s)) as u32;
            out.push(
                Access::new(
                    label,
                    op,
                    "fragment load (ldmatrix model)",
                    16,
                    steps,
                    |_, _| None,
                )
                .grouped(sgs as u32, move |lane, sgi, step| {
                    let (fi, kk) = ((step as u64) % f, (step as u64 / f) * s);
                    let origin = sgi as u64 * f * s + fi * s;
                    let (row0, col0) = if rows_are_k {
                        (kk, origin)
                    } else {
                        (origin, kk)
                    };
                    let lane = lane as u64;
                    if s == 8 && lane >= 8 {
                        return None;
                    }
                    let (r, half) = (lane % s, lane / s);
                    Some(2 * ((row0 + r) * stride + col0 + half * 8))
                }),
            );
        };
    frag("As", g("AS")?, !a_kfast, sgm, out);
    frag("Bs", g("BS")?, b_nfast, sgn, out);
    out.push(
        Access::new(
            label,
            "Cs",
            "accumulator store (m16n8 model)",
            8,
            (s / 8 * s / 8) as u32,
            |_, _| None,
        )
        .grouped((sgm * sgn) as u32, move |lane, sgi, step| {
            let lane = lane as u64;
            let (r8, c8) = ((step as u64 / (s / 8)) * 8, (step as u64 % (s / 8)) * 8);
            if lane / 4 >= s {
                return None;
            }
            Some(4 * (sgi as u64 * s * s + (lane / 4 + r8) * s + c8 + 2 * (lane % 4)))
        }),
    );
    out.push(
        Access::new(
            label,
            "Cs",
            "scratch read by lanes",
            4,
            (s * s / 32).max(1) as u32,
            |_, _| None,
        )
        .grouped((sgm * sgn) as u32, move |lane, sgi, step| {
            let e = lane as u64 + 32 * step as u64;
            (e < s * s).then_some(4 * (sgi as u64 * s * s + e))
        }),
    );
    Ok(())
}
