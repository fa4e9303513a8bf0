//! f16 products on cooperative matrices: the tiles, their staging layouts and their plans.

use super::*;

/// The f16 GEMM's variants (f16 A and B, f32 accumulation and C): cooperative matrices of the
/// adapter's fragment size, 128 x 128 per workgroup (16 x 16 fragments: 64 x 64 per subgroup;
/// 8 x 8 fragments: 32 x 32 per subgroup, 16 subgroups) or 64 x 64 for small outputs; else the
/// operands widen to f32.
pub static GEMM_F16: VariantTable<GemmCall, F16Plan> = VariantTable {
    family: "matmul_f16",
    variants: &[
        Variant {
            name: "coop16",
            plan: |d, c| coop_supports(d, c, COOP16),
            prefers: |_, c| c.g.m > 64 && c.g.n > 64,
        },
        Variant {
            name: "coop16_small",
            plan: |d, c| coop_supports(d, c, COOP16_SMALL),
            prefers: |_, _| true,
        },
        Variant {
            name: "coop8",
            plan: |d, c| coop_supports(d, c, COOP8),
            prefers: |_, c| c.g.m > 64 && c.g.n > 64,
        },
        Variant {
            name: "coop8_small",
            plan: |d, c| coop_supports(d, c, COOP8_SMALL),
            prefers: |_, _| true,
        },
        Variant {
            name: "widen",
            plan: |_, _| Ok(F16Plan::Widen),
            prefers: |_, _| true,
        },
    ],
};

/// A cooperative-matrix tile: fragment size, fragments per subgroup along M and along N (4 or 2:
/// the kernel writes the F x F products out with constant indices), computing subgroups along M
/// and N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CoopTile {
    pub(super) s: u32,
    pub(super) f: u32,
    pub(super) sgm: u32,
    pub(super) sgn: u32,
}

/// 128 x 128 per workgroup (16 x 16 fragments: 2 x 2 subgroups of 64 x 64, 16 accumulators of
/// 8 floats per lane).
pub(super) const COOP16: CoopTile = CoopTile {
    s: 16,
    f: 4,
    sgm: 2,
    sgn: 2,
};
/// 64 x 64 (2 x 2 subgroups of 32 x 32).
pub(super) const COOP16_SMALL: CoopTile = CoopTile {
    s: 16,
    f: 2,
    sgm: 2,
    sgn: 2,
};
/// 128 x 128 on 8 x 8 fragments: 4 x 4 subgroups of 32 x 32 (16 accumulators of 2 floats per
/// lane, where 64 of them per subgroup would spill on Apple GPUs).
pub(super) const COOP8: CoopTile = CoopTile {
    s: 8,
    f: 4,
    sgm: 4,
    sgn: 4,
};
/// 64 x 64 on 8 x 8 fragments (2 x 2 subgroups of 32 x 32).
pub(super) const COOP8_SMALL: CoopTile = CoopTile {
    s: 8,
    f: 4,
    sgm: 2,
    sgn: 2,
};

/// How an f16 matmul runs: on a cooperative tile (planned without alpha; a call that scales by
/// alpha plans the tile again with it), or widened to f32.
#[derive(Clone, Debug)]
pub enum F16Plan {
    /// Cooperative matrices.
    Coop(CoopPlan),
    /// Operands cast to f32, then the f32 GEMM.
    Widen,
}

/// Slab groups (8 f16) an invocation of `gemm_coop` may hold between load and store: its
/// registers are written out for up to 16 (GPUs with 32-lane subgroups hold 4 or fewer; software
/// adapters' 8-lane subgroups make small workgroups).
pub(super) const COOP_MAX_GROUPS: u32 = 16;

/// How a cooperative tile runs a call: the tile, the bounds-checked kernel, the 16-byte-load
/// kernel for interior tiles where the layout allows it, the workgroup block and the slab depth.
#[derive(Clone, Debug)]
pub struct CoopPlan {
    pub(super) tile: CoopTile,
    pub(super) checked: KernelSpec,
    pub(super) words: Option<KernelSpec>,
    pub(super) block: usize,
    pub(super) bk: u32,
}

/// What a `gemm_coop` pipeline is specialised for besides its tile: the adapter's (largest,
/// smallest) subgroup sizes, the slab depth, alpha, and the operands' contiguous dimensions.
pub(super) struct CoopLayout {
    pub(super) sg: (u32, u32),
    pub(super) bk: u32,
    pub(super) alpha: bool,
    pub(super) a_kfast: bool,
    pub(super) b_nfast: bool,
}

/// The `gemm_coop` pipeline of a tile and layout: bounds-checked, or (`words`) the interior
/// kernel with 8-byte loads.
pub(super) fn coop_spec(t: CoopTile, l: &CoopLayout, words: bool) -> KernelSpec {
    let entry = format!("gemm_coop{}{}", t.s, if words { "v" } else { "" });
    let b = |v: bool| v as u8 as f64;
    KernelSpec::new(
        "gemm_coop",
        &entry,
        &[
            ("S", t.s as f64),
            ("SGM", t.sgm as f64),
            ("SGN", t.sgn as f64),
            ("F", t.f as f64),
            ("SG", l.sg.0 as f64),
            ("MIN_SG", l.sg.1 as f64),
            ("BK", l.bk as f64),
            ("ALPHA", b(l.alpha)),
            ("A_KFAST", b(l.a_kfast)),
            ("B_NFAST", b(l.b_nfast)),
        ],
    )
}

pub(super) fn coop_plan(dev: &Device, c: &GemmCall, t: CoopTile, alpha: bool) -> Option<CoopPlan> {
    let prof = dev.adapter_profile();
    let max_sg = prof.subgroup_max();
    let min_sg = match prof.subgroup_min_size {
        0 => max_sg,
        s => s.min(max_sg),
    };
    let g = &c.g;
    let (a_kfast, b_nfast) = (g.a[2] == 1, g.b[2] == 1);
    let block = (t.s * t.f * t.sgm) as usize;
    debug_assert_eq!(t.sgm, t.sgn, "square workgroup tiles");
    let wg = max_sg * t.sgm * t.sgn;
    // The deepest slab whose double buffers fit the workgroup memory and whose groups fit an
    // invocation's registers.
    for bk in [32u32, 16] {
        if (block as u32 * bk / 8).div_ceil(wg) > COOP_MAX_GROUPS {
            continue;
        }
        let layout = CoopLayout {
            sg: (max_sg, min_sg),
            bk,
            alpha,
            a_kfast,
            b_nfast,
        };
        let checked = coop_spec(t, &layout, false);
        if checked.fits(dev).is_err() {
            continue;
        }
        // 16-byte loads: eight f16 along each operand's contiguous dimension from aligned
        // offsets, whole slabs.
        let al = |v: usize| v.is_multiple_of(8);
        let a_ok = al(g.a[0])
            && if a_kfast {
                al(g.a[1])
            } else {
                g.a[1] == 1 && al(g.a[2])
            };
        let b_ok = al(g.b[0])
            && if b_nfast {
                al(g.b[1])
            } else {
                g.b[1] == 1 && al(g.b[2])
            };
        let words = (a_ok
            && b_ok
            && g.k.is_multiple_of(bk as usize)
            && c.quads[0]
            && c.quads[1]
            && g.m >= block
            && g.n >= block)
            .then(|| coop_spec(t, &layout, true));
        return Some(CoopPlan {
            tile: t,
            checked,
            words,
            block,
            bk,
        });
    }
    None
}

pub(super) fn coop_supports(
    dev: &Device,
    c: &GemmCall,
    t: CoopTile,
) -> std::result::Result<F16Plan, String> {
    if !c.f16 || c.mode != Mode::Matmul {
        return Err("takes f16 matmuls only".into());
    }
    if !dev.adapter_profile().coop_f16_sizes.contains(&t.s) {
        return Err(format!(
            "the adapter has no {0} x {0} f16 cooperative matrix with f32 accumulators",
            t.s
        ));
    }
    for &len in &c.lens {
        binding_fits(dev, len as u64 * 4)?;
    }
    let plan = coop_plan(dev, c, t, false).ok_or("no slab depth fits the workgroup memory")?;
    let mut specs = vec![plan.checked.clone()];
    specs.extend(plan.words.clone());
    all_fit(dev, &specs)?;
    Ok(F16Plan::Coop(plan))
}

/// The cooperative-matrix size f16 matmuls use on this device (its policy included): `Ok(None)`
/// means they widen to f32 instead.
pub fn coop_size(dev: &Device) -> Result<Option<u32>> {
    let probe = GemmCall::matmul(1, 128, 128, 128, false, false, false, false, true);
    Ok(match GEMM_F16.choose(dev, &probe)?.plan {
        F16Plan::Coop(p) => Some(p.tile.s),
        F16Plan::Widen => None,
    })
}
