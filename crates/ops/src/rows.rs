//! How the row kernels (softmax, log_softmax, layer norm, cross-entropy: `shaders/parts/rows.wgsl`)
//! are laid out on an adapter: how many adjacent lanes share a row, and whether the lanes of a
//! row reduce through subgroup shuffles or through workgroup memory.
//!
//! A row's lanes stride over it together, so a subgroup's loads are contiguous (coalesced), and
//! short rows are packed several to a workgroup, long ones spread over a subgroup or a whole
//! workgroup; no row kernel runs one row per invocation or a batch on one workgroup.

use crate::kernels::{all_fit, binding_fits, KernelSpec};
use crate::{Array, Buffer, Device, OpError, Params, Result};
use kiln_device::{Variant, VariantTable};

/// Invocations per workgroup of the row kernels (the WGSL `WG`).
pub const ROW_WG: usize = 256;

/// The fewest lanes per row on a GPU: at 2,048 rows, 4 lanes a row keep 256 subgroups of 32
/// busy, so even a batch of short rows spreads over the whole adapter.
pub const MIN_LANES_GPU: usize = 4;

/// Items (elements, or vec4s) each lane should cover before more lanes are given to a row:
/// enough loads in flight per lane to hide memory latency, few enough that long rows get a
/// subgroup or a workgroup.
const ITEMS_PER_LANE: usize = 8;

/// The row kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOp {
    /// softmax or log_softmax.
    Softmax,
    /// Their gradient.
    SoftmaxBackward,
    /// layer norm's forward.
    LayerNorm,
    /// layer norm's input gradient.
    LayerNormBackward,
    /// Cross-entropy per row (then the mean pass).
    CrossEntropy,
    /// Cross-entropy's logit gradient.
    CrossEntropyBackward,
}

impl RowOp {
    /// Every row op.
    pub const ALL: [RowOp; 6] = [
        RowOp::Softmax,
        RowOp::SoftmaxBackward,
        RowOp::LayerNorm,
        RowOp::LayerNormBackward,
        RowOp::CrossEntropy,
        RowOp::CrossEntropyBackward,
    ];

    /// The entry point (`vec4`: the one reading vec4s).
    pub fn entry(self, vec4: bool) -> String {
        let e = match self {
            RowOp::Softmax => "softmax",
            RowOp::SoftmaxBackward => "softmax_backward",
            RowOp::LayerNorm => "layer_norm_forward",
            RowOp::LayerNormBackward => "layer_norm_backward_input",
            RowOp::CrossEntropy => "xent_rows",
            RowOp::CrossEntropyBackward => "xent_backward",
        };
        if vec4 {
            format!("{e}4")
        } else {
            e.to_string()
        }
    }
}

/// One row kernel call: `op` over `rows` rows of `cols` elements, read as vec4s or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowCall {
    /// The kernel.
    pub op: RowOp,
    /// Rows.
    pub rows: usize,
    /// Elements per row that the kernel reads (for cross-entropy, the row's full stride).
    pub cols: usize,
    /// The kernel reads the rows as vec4s.
    pub vec4: bool,
}

/// Where a row kernel runs: the module, its lanes per row and the dispatch.
#[derive(Clone, Debug, PartialEq)]
pub struct RowPlan {
    /// The registered shader: `rows_sg` (subgroup reductions) or `rows` (workgroup memory).
    pub shader: &'static str,
    /// The entry point.
    pub entry: String,
    /// Adjacent lanes per row: a power of two from 1 to [`ROW_WG`].
    pub lanes: usize,
    /// `rows_sg`: the subgroup size its shuffles assume (the adapter's smallest).
    pub subgroup: usize,
    /// Workgroups (the device splits counts over one dimension's limit).
    pub groups: usize,
}

impl RowPlan {
    /// Rows per workgroup.
    pub fn rows_per_group(&self) -> usize {
        ROW_WG / self.lanes
    }

    /// The pipeline of entry point `entry` with extra override constants.
    pub fn spec(&self, entry: &str, constants: &[(&'static str, f64)]) -> KernelSpec {
        let mut c = vec![("LPR", self.lanes as f64)];
        if self.shader == "rows_sg" {
            c.push(("SGS", self.subgroup as f64));
        }
        c.extend_from_slice(constants);
        KernelSpec::new(self.shader, entry, &c)
    }

    /// Launches the planned op over the planned rows.
    pub fn launch(
        &self,
        dev: &Device,
        constants: &[(&'static str, f64)],
        bufs: &[&Buffer],
        params: &Params,
    ) -> Result<()> {
        let k = self.spec(&self.entry, constants).kernel(dev)?;
        let groups = u32::try_from(self.groups).map_err(|_| OpError::Invalid {
            op: "rows",
            message: format!(
                "{} workgroups exceed what one dispatch can index",
                self.groups
            ),
        })?;
        dev.launch(&k, bufs, params, [groups, 1, 1])?;
        Ok(())
    }
}

/// Lanes per row wanted for a row of `items` loads: about [`ITEMS_PER_LANE`] each, at least
/// `min` and at most `max`, a power of two.
fn lanes_for(items: usize, min: usize, max: usize) -> usize {
    items
        .div_ceil(ITEMS_PER_LANE)
        .next_power_of_two()
        .clamp(min, max)
}

/// The fewest lanes per row on this adapter: 1 on software adapters, where a workgroup runs on
/// one CPU thread and lanes sharing a row only add reduction steps, else [`MIN_LANES_GPU`].
fn min_lanes(dev: &Device) -> usize {
    if dev.adapter_profile().is_software {
        1
    } else {
        MIN_LANES_GPU
    }
}

fn items(c: &RowCall) -> usize {
    if c.vec4 {
        c.cols.div_ceil(4)
    } else {
        c.cols
    }
}

/// The subgroup variant's lanes per row: as many as wanted; on software adapters at most a
/// subgroup (wider rows gain nothing from more lanes on a CPU's few threads).
fn sg_lanes(dev: &Device, c: &RowCall) -> usize {
    let prof = dev.adapter_profile();
    let sg = (prof.subgroup_min_size as usize).max(1);
    let most = if prof.is_software { sg } else { ROW_WG };
    lanes_for(items(c), min_lanes(dev).min(most), most)
}

fn wg_lanes(dev: &Device, c: &RowCall) -> usize {
    lanes_for(items(c), min_lanes(dev), ROW_WG)
}

/// The subgroup variant: a butterfly of shuffles within a subgroup, and across subgroups through
/// workgroup memory for rows of more lanes.
fn sg_plan(dev: &Device, c: &RowCall) -> std::result::Result<RowPlan, String> {
    let prof = dev.adapter_profile();
    if !prof.caps.subgroups {
        return Err("the adapter has no subgroups".into());
    }
    let sg = prof.subgroup_min_size as usize;
    if sg < 2 || !sg.is_power_of_two() || !ROW_WG.is_multiple_of(sg) {
        return Err(format!(
            "the smallest subgroup size ({sg}) is unknown or not a power of two dividing {ROW_WG}"
        ));
    }
    fitting(dev, plan_of(dev, "rows_sg", sg_lanes(dev, c), c), c)
}

/// The workgroup-memory variant: a tree of halvings.
fn wg_plan(dev: &Device, c: &RowCall) -> std::result::Result<RowPlan, String> {
    fitting(dev, plan_of(dev, "rows", wg_lanes(dev, c), c), c)
}

/// `plan` where its pipeline and the rows' binding fit the device's profile.
fn fitting(dev: &Device, plan: RowPlan, c: &RowCall) -> std::result::Result<RowPlan, String> {
    binding_fits(dev, (c.rows * c.cols * 4) as u64)?;
    all_fit(dev, &[plan.spec(&plan.entry, &[])])?;
    Ok(plan)
}

fn plan_of(dev: &Device, shader: &'static str, lanes: usize, c: &RowCall) -> RowPlan {
    RowPlan {
        shader,
        entry: c.op.entry(c.vec4),
        lanes,
        subgroup: dev.adapter_profile().subgroup_min_size as usize,
        groups: c.rows.div_ceil(ROW_WG / lanes),
    }
}

/// The row kernels' variants, most preferred first. The subgroup variant wherever it runs: rows
/// of up to a subgroup reduce without a barrier, wider ones with one barrier pair (a
/// workgroup-memory tree takes one per halving).
pub static ROWS: VariantTable<RowCall, RowPlan> = VariantTable {
    family: "rows",
    variants: &[
        Variant {
            name: "rows_sg",
            plan: sg_plan,
            prefers: |_, _| true,
        },
        Variant {
            name: "rows_wg",
            plan: wg_plan,
            prefers: |_, _| true,
        },
    ],
};

/// The plan for a row kernel call on `dev`: the variant the device's policy chooses and its
/// lanes per row.
pub fn plan(dev: &Device, call: &RowCall) -> Result<RowPlan> {
    Ok(ROWS.choose(dev, call)?.plan)
}

/// Plans `op` over `rows` rows of `cols` (vec4 rows where `vec4`) and launches it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    dev: &Device,
    op: RowOp,
    (rows, cols, vec4): (usize, usize, bool),
    constants: &[(&'static str, f64)],
    bufs: &[&Buffer],
    params: &Params,
) -> Result<()> {
    let call = RowCall {
        op,
        rows,
        cols,
        vec4,
    };
    plan(dev, &call)?.launch(dev, constants, bufs, params)
}

/// Rows and columns of `x` seen as rows along its last axis, checked to be f32 and non-empty.
pub(crate) fn rows_cols(op: &'static str, x: &Array) -> Result<(usize, usize)> {
    crate::expect_dtype(op, x, crate::DType::F32)?;
    crate::expect_nonempty(op, x)?;
    let cols = *x.shape.last().ok_or_else(|| OpError::Shape {
        op,
        expected: "at least 1 dimension".into(),
        got: "[]".into(),
    })?;
    Ok((x.numel() / cols, cols))
}

/// The row kernels' parameter block.
pub(crate) fn params(rows: usize, cols: usize, stride: usize, ignore: i32, eps: f32) -> Params {
    Params::new()
        .u(rows as u32)
        .u(cols as u32)
        .u(stride as u32)
        .i(ignore)
        .f(eps)
}

/// Whether every buffer can be read as vec4s and rows of `cols` keep them aligned.
pub(crate) fn quads(cols: usize, bufs: &[&Buffer]) -> bool {
    cols.is_multiple_of(4) && bufs.iter().all(|b| b.quad_aligned())
}

/// The mean pass after [`RowOp::CrossEntropy`]: one workgroup adds the rows' losses in a fixed
/// order (always the workgroup-memory module: the whole workgroup reduces).
pub fn xent_mean_spec() -> KernelSpec {
    KernelSpec::new("rows", "xent_mean", &[("LPR", ROW_WG as f64)])
}

/// Every pipeline the row kernel `call` builds on `dev` (for planners and audits).
pub fn planned(dev: &Device, call: &RowCall) -> Result<crate::kernels::Planned> {
    let chosen = ROWS.choose(dev, call)?;
    let plan = chosen.plan;
    let mut kernels = vec![plan.spec(&plan.entry, &[])];
    if call.op == RowOp::CrossEntropy {
        kernels.push(xent_mean_spec());
    }
    Ok(crate::kernels::Planned {
        family: "rows",
        variant: chosen.variant,
        kernels,
        largest_binding: (call.rows * call.cols * 4) as u64,
    })
}
