//! 2-D convolution (NCHW, any stride, padding and dilation, optional bias): forward, input
//! gradient, weight gradient; bias gradient by reduction.
//!
//! The kernels come from variant tables ([`CONV`], [`WGRAD`]; names in [`crate::kernels`]).
//! GPUs run all three passes as implicit GEMM on the matmul's tiles. Software adapters run direct
//! kernels where their limits allow: there a load costs far more than a multiply-add, so the
//! direct kernels reuse each loaded value across a kernel row and read through 64 KiB uniform
//! arrays, which software adapters gather fastest. The forward pass and the input gradient (at
//! stride 1) split a layer whose images or packed weights outgrow a window into parts of input
//! channels and groups of output channels; they need one input plane within a window. The weight
//! gradient needs one image of x and of dy within a window (or subgroups). Elsewhere they fall
//! back to the implicit GEMM.

use crate::gemm::{gemm, GemmCall, Mode, GEMM};
pub use crate::geometry::Conv2dSpec;
use crate::kernels::{all_fit, KernelSpec};
use crate::reduce::{reduce, Reduce};
use crate::{
    expect_dtype, launch_1d, or_placeholder, uniform_runs, uniform_window, Array, Buffer, DType,
    Device, OpError, Params, Result, WINDOW_FLOATS,
};
use kiln_device::{Variant, VariantTable};

/// A forward pass or input gradient as the kernel choice sees it: the direct correlation where
/// the pass has one (the input gradient only at stride 1), and the implicit GEMM.
pub struct ConvCall {
    direct: Option<Direct>,
    gemm: GemmCall,
}

/// How a forward pass or input gradient runs.
#[derive(Clone, Debug)]
pub enum ConvPlan {
    /// The direct correlation through uniform windows.
    Direct(Direct),
    /// The implicit GEMM on the matmul's kernels.
    Gemm,
}

/// The forward pass's and input gradient's variants.
pub static CONV: VariantTable<ConvCall, ConvPlan> = VariantTable {
    family: "conv",
    variants: &[
        Variant {
            name: "conv_direct",
            plan: |d, c| match &c.direct {
                Some(direct) => direct.supports(d).map(|()| ConvPlan::Direct(*direct)),
                None => Err("no direct form (an input gradient at stride > 1)".into()),
            },
            prefers: |d, _| d.adapter_profile().is_software,
        },
        Variant {
            name: "conv_gemm",
            plan: |d, c| {
                GEMM.choose(d, &c.gemm)
                    .map(|_| ConvPlan::Gemm)
                    .map_err(|e| e.to_string())
            },
            prefers: |_, _| true,
        },
    ],
};

/// How a weight gradient runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgradPlan {
    /// The direct kernel through uniform windows (with the bias gradient).
    Direct,
    /// The subgroup kernel over a channels-last copy of dy.
    Subgroup,
    /// The implicit GEMM on the matmul's kernels.
    Gemm,
}

/// A weight gradient as the kernel choice sees it.
pub struct WgradCall {
    x: [usize; 4],
    w: [usize; 4],
    oh: usize,
    ow: usize,
    spec: Conv2dSpec,
    gemm: GemmCall,
}

/// The weight gradient's variants.
pub static WGRAD: VariantTable<WgradCall, WgradPlan> = VariantTable {
    family: "conv_wgrad",
    variants: &[
        Variant {
            name: "conv_wgrad",
            plan: |d, c| {
                let align = d.limits().min_uniform_buffer_offset_alignment as usize / 4;
                let [_, ic, h, w] = c.x;
                let fits = |len: usize| len + align - 1 <= WINDOW_FLOATS;
                if !fits(ic * h * w) || !fits(c.w[0] * c.oh * c.ow) {
                    return Err("an image of x or dy is larger than a 64 KiB window".into());
                }
                let lay = WgradLayout::new(ic, c.w[0], c.w[2], c.w[3], &c.spec, true);
                all_fit(d, &[KernelSpec::new("conv", "conv_wgrad", &lay.consts)])?;
                Ok(WgradPlan::Direct)
            },
            prefers: |d, _| d.adapter_profile().is_software,
        },
        Variant {
            name: "conv_wgrad_sg",
            plan: |d, c| {
                let [n, ic, _, _] = c.x;
                let lay = WgradLayout::new(ic, c.w[0], c.w[2], c.w[3], &c.spec, false);
                if n * c.oh * c.ow * lay.ocp > 65535 * crate::WG as usize {
                    return Err("dy's channels-last copy exceeds one dispatch".into());
                }
                all_fit(
                    d,
                    &[
                        KernelSpec::new("conv_wgrad_sg", "to_channels_last", &[]),
                        KernelSpec::new("conv_wgrad_sg", "conv_wgrad_sg", &lay.consts),
                    ],
                )?;
                Ok(WgradPlan::Subgroup)
            },
            prefers: |d, _| d.adapter_profile().is_software,
        },
        Variant {
            name: "conv_gemm",
            plan: |d, c| {
                GEMM.choose(d, &c.gemm)
                    .map(|_| WgradPlan::Gemm)
                    .map_err(|e| e.to_string())
            },
            prefers: |_, _| true,
        },
    ],
};

/// Invocations per conv_direct workgroup.
const DIRECT_WX: usize = 64;

/// Channel quads per invocation of the direct kernels, and the channel count padded to whole
/// blocks of them: two quads measured best on lavapipe (four spill registers), one where the
/// layer has four channels or fewer.
fn channel_quads(channels: usize) -> (usize, usize) {
    let nq = channels.div_ceil(4).min(2);
    (nq, channels.next_multiple_of(4 * nq))
}

/// The override constants both direct kernels take for the window's geometry.
fn geometry_consts(
    kernel: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
) -> [(&'static str, f64); 6] {
    let f = |v: usize| v as f64;
    [
        ("KH", f(kernel.0)),
        ("KW", f(kernel.1)),
        ("SH", f(stride.0)),
        ("SW", f(stride.1)),
        ("DH", f(dil.0)),
        ("DW", f(dil.1)),
    ]
}

/// A correlation for conv.wgsl's `conv_direct`: input [n, ic, h, w] to output [n, oc, oh, ow].
#[derive(Clone, Copy, Debug)]
pub struct Direct {
    n: usize,
    ic: usize,
    h: usize,
    w: usize,
    oc: usize,
    oh: usize,
    ow: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    /// Weights given as [ic, oc, KH, KW] to be flipped in space (the input gradient).
    flip: bool,
}

/// One dispatch's slice of a direct correlation: input channels `ic0 .. ic0 + ic_len` of the
/// images `n0 .. n0 + n`, read through `window` from element `skip` on.
struct Slice {
    ic0: usize,
    ic_len: usize,
    n0: usize,
    n: usize,
    window: Buffer,
    skip: usize,
}

impl Direct {
    /// How the layer splits to fit 64 KiB uniform windows: input channels per part, so that one
    /// image's part fits a window (all of them where a whole image does), and output channels per
    /// group, so that a part's packed weights for one group fit; both balanced across the parts
    /// and groups. None where one input plane, or one channel block's weights for a single
    /// input channel, is larger than a window.
    fn split(&self, align: usize) -> Option<(usize, usize)> {
        let (nq, ocp) = channel_quads(self.oc);
        let block = 4 * nq;
        let taps = self.kernel.0 * self.kernel.1;
        // Floats a window holds from any start (a binding offset is aligned).
        let room = WINDOW_FLOATS + 1 - align;
        let plane = self.h * self.w;
        let most = if self.ic * plane <= room {
            self.ic
        } else {
            room / plane
        }
        .min(WINDOW_FLOATS / (taps * block));
        if most == 0 {
            return None;
        }
        let icp = self.ic.div_ceil(self.ic.div_ceil(most));
        let most_oc = (WINDOW_FLOATS / (icp * taps) / block * block).min(ocp);
        let og = ocp.div_ceil(ocp.div_ceil(most_oc)).next_multiple_of(block);
        Some((icp, og))
    }

    /// The input's windows: runs of whole images where a window holds one image, else one
    /// image's part of `icp` channels per window, part after part. None where a window does not
    /// fit.
    fn slices(&self, dev: &Device, x: &Array, icp: usize) -> Result<Option<Vec<Slice>>> {
        let plane = self.h * self.w;
        let mut slices = Vec::new();
        if icp == self.ic {
            let Some(runs) = uniform_runs(dev, &[(&x.buf, self.ic * plane)], self.n)? else {
                return Ok(None);
            };
            for run in runs {
                let (window, skip) = run.windows[0].clone();
                slices.push(Slice {
                    ic0: 0,
                    ic_len: self.ic,
                    n0: run.first,
                    n: run.count,
                    window,
                    skip,
                });
            }
            return Ok(Some(slices));
        }
        // Part by part, so that the parts' weights are packed once each.
        for ic0 in (0..self.ic).step_by(icp) {
            for img in 0..self.n {
                let ic_len = icp.min(self.ic - ic0);
                let start = (img * self.ic + ic0) * plane;
                let Some((window, skip)) = uniform_window(dev, &x.buf, start, ic_len * plane)
                else {
                    return Ok(None);
                };
                slices.push(Slice {
                    ic0,
                    ic_len,
                    n0: img,
                    n: 1,
                    window,
                    skip,
                });
            }
        }
        Ok(Some(slices))
    }

    /// The override constants of `pack_weights` and `conv_direct`.
    fn consts(&self) -> Vec<(&'static str, f64)> {
        let (nq, _) = channel_quads(self.oc);
        let window = self.stride.1 == 1 && self.dil.1 == 1 && self.kernel.1 <= 5;
        let f = |v: usize| v as f64;
        let mut consts = geometry_consts(self.kernel, self.stride, self.dil).to_vec();
        consts.extend([
            ("NQ", f(nq)),
            ("WINDOW", f(window as usize)),
            ("FLIP", f(self.flip as usize)),
            ("WX", f(DIRECT_WX)),
        ]);
        consts
    }

    /// Where the layer splits into windows and the kernels fit the adapter.
    fn supports(&self, dev: &Device) -> std::result::Result<(), String> {
        let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
        if self.split(align).is_none() {
            return Err("an input plane or a channel block's weights outgrow a window".into());
        }
        let consts = self.consts();
        all_fit(
            dev,
            &[
                KernelSpec::new("conv", "pack_weights", &consts),
                KernelSpec::new("conv", "conv_direct", &consts),
            ],
        )
    }

    /// Runs the kernel ([`Direct::supports`] said it applies).
    fn run(
        &self,
        dev: &Device,
        x: &Array,
        w: &Array,
        bias: Option<&Array>,
        y: &Array,
    ) -> Result<()> {
        let unsupported = || OpError::Invalid {
            op: "conv2d",
            message: "conv_direct: the layer does not split into uniform windows".into(),
        };
        let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
        let (icp, og) = self.split(align).ok_or_else(unsupported)?;
        let slices = self.slices(dev, x, icp)?.ok_or_else(unsupported)?;
        let (nq, ocp) = channel_quads(self.oc);
        let xblocks = self.ow.div_ceil(4);
        let taps = self.kernel.0 * self.kernel.1;
        let u = |v: usize| v as u32;
        // Slice `s` of the input against output channels oc0 .. oc0 + group.
        let params = |s: &Slice, oc0: usize, group: usize| {
            Params::new().us(&[
                u(s.n),
                u(s.ic_len),
                u(self.h),
                u(self.w),
                u(self.oc),
                u(self.oh),
                u(self.ow),
                u(self.pad.0),
                u(self.pad.1),
                u(xblocks),
                u(group),
                u(bias.is_some() as usize),
                u(s.n0),
                u(s.skip),
                u(oc0),
                u(s.ic0),
                u(self.ic),
            ])
        };
        let mut consts = self.consts();
        let pack = dev.kernel("conv", "pack_weights", &consts)?;
        let k = dev.kernel("conv", "conv_direct", &consts)?;
        // Later parts add to y: a separate pipeline, so that the first part and whole layers
        // compile without the load.
        consts.push(("ACCUMULATE", 1.0));
        let k_add = if icp < self.ic {
            dev.kernel("conv", "conv_direct", &consts)?
        } else {
            k.clone()
        };
        let bias_buf = or_placeholder(dev, bias.map(|b| &b.buf))?;
        // Parts in order, so that each adds to what the earlier ones wrote.
        for part in slices.chunk_by(|a, b| a.ic0 == b.ic0) {
            let first = &part[0];
            for oc0 in (0..ocp).step_by(og) {
                let group = og.min(ocp - oc0);
                // The uniform binding needs the whole 64 KiB array, packed on the device.
                let packed = dev.alloc(WINDOW_FLOATS, DType::F32)?;
                launch_1d(
                    dev,
                    &pack,
                    &[&w.buf, &packed],
                    &params(first, oc0, group),
                    first.ic_len * taps * group,
                )?;
                for s in part {
                    let invocations = s.n * self.oh * xblocks;
                    let groups = [
                        u32::try_from(invocations.div_ceil(DIRECT_WX)).map_err(|_| {
                            OpError::Invalid {
                                op: "conv2d",
                                message: format!(
                                    "{invocations} output rows exceed what one dispatch can index"
                                ),
                            }
                        })?,
                        u(group / (4 * nq)),
                        1,
                    ];
                    dev.launch(
                        if s.ic0 == 0 { &k } else { &k_add },
                        &[&s.window, &packed, &bias_buf, &y.buf],
                        &params(s, oc0, group),
                        groups,
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn dims4(op: &'static str, what: &str, s: &[usize]) -> Result<[usize; 4]> {
    s.try_into().map_err(|_| OpError::Shape {
        op,
        expected: format!("{what} with 4 dimensions"),
        got: format!("{s:?}"),
    })
}

fn check(
    op: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    spec: &Conv2dSpec,
) -> Result<(usize, usize)> {
    if x[1] != w[1] {
        return Err(OpError::Shape {
            op,
            expected: format!("input with {} channels (weight {w:?})", w[1]),
            got: format!("{x:?}"),
        });
    }
    spec.out_hw(op, x[2], x[3], w[2], w[3])
}

/// A convolution pass: forward, input gradient or weight gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    /// y from x and w.
    Forward,
    /// dx from dy and w.
    InputGrad,
    /// dw from dy and x.
    WeightGrad,
}

/// The variant the device's policy chooses for a convolution pass (x: [N, Ci, H, W], w:
/// [Co, Ci, KH, KW]) and its pipelines, for planning.
pub fn plan(
    dev: &Device,
    pass: ConvPass,
    xs: [usize; 4],
    ws: [usize; 4],
    spec: &Conv2dSpec,
) -> Result<crate::kernels::Planned> {
    let (oh, ow) = check("conv2d", xs, ws, spec)?;
    let mode = match pass {
        ConvPass::Forward => Mode::ConvForward,
        ConvPass::InputGrad => Mode::ConvInputGrad,
        ConvPass::WeightGrad => Mode::ConvWeightGrad,
    };
    let gemm_call = GemmCall::conv_geom(mode, xs, ws, oh, ow, spec);
    let direct = |d: Direct| crate::kernels::Planned {
        family: CONV.family,
        variant: "conv_direct",
        kernels: vec![
            KernelSpec::new("conv", "pack_weights", &d.consts()),
            KernelSpec::new("conv", "conv_direct", &d.consts()),
        ],
        largest_binding: gemm_call.lens.iter().max().copied().unwrap_or(0) as u64 * 4,
    };
    let through_gemm = |family: &'static str| -> Result<crate::kernels::Planned> {
        let mut p = crate::gemm::plan(dev, &gemm_call)?;
        p.family = family;
        p.variant = "conv_gemm";
        Ok(p)
    };
    match pass {
        ConvPass::WeightGrad => {
            let call = WgradCall {
                x: xs,
                w: ws,
                oh,
                ow,
                spec: *spec,
                gemm: gemm_call.clone(),
            };
            let v = WGRAD.choose(dev, &call)?;
            let lay = |tail| WgradLayout::new(xs[1], ws[0], ws[2], ws[3], spec, tail);
            let kernels = match v.plan {
                WgradPlan::Direct => {
                    vec![KernelSpec::new("conv", "conv_wgrad", &lay(true).consts)]
                }
                WgradPlan::Subgroup => vec![
                    KernelSpec::new("conv_wgrad_sg", "to_channels_last", &[]),
                    KernelSpec::new("conv_wgrad_sg", "conv_wgrad_sg", &lay(false).consts),
                ],
                WgradPlan::Gemm => return through_gemm(WGRAD.family),
            };
            Ok(crate::kernels::Planned {
                family: WGRAD.family,
                variant: v.variant,
                kernels,
                largest_binding: gemm_call.lens.iter().max().copied().unwrap_or(0) as u64 * 4,
            })
        }
        _ => {
            let d = if pass == ConvPass::Forward {
                Some(Direct {
                    n: xs[0],
                    ic: xs[1],
                    h: xs[2],
                    w: xs[3],
                    oc: ws[0],
                    oh,
                    ow,
                    kernel: (ws[2], ws[3]),
                    stride: spec.stride,
                    pad: spec.padding,
                    dil: spec.dilation,
                    flip: false,
                })
            } else {
                direct_input_grad(xs, ws, oh, ow, spec)
            };
            let call = ConvCall {
                direct: d,
                gemm: gemm_call.clone(),
            };
            match CONV.choose(dev, &call)?.plan {
                ConvPlan::Direct(d) => Ok(direct(d)),
                ConvPlan::Gemm => through_gemm(CONV.family),
            }
        }
    }
}

/// y = conv2d(x, w) + bias. x: `[N, Ci, H, W]`, w: `[Co, Ci, KH, KW]`, bias: `[Co]` -> y: `[N, Co, OH, OW]`.
pub fn conv2d(
    dev: &Device,
    x: &Array,
    w: &Array,
    bias: Option<&Array>,
    spec: &Conv2dSpec,
) -> Result<Array> {
    expect_dtype("conv2d", x, DType::F32)?;
    expect_dtype("conv2d", w, DType::F32)?;
    let xs = dims4("conv2d", "input", &x.shape)?;
    let ws = dims4("conv2d", "weight", &w.shape)?;
    let (oh, ow) = check("conv2d", xs, ws, spec)?;
    if let Some(b) = bias {
        if b.shape != [ws[0]] {
            return Err(OpError::Shape {
                op: "conv2d bias",
                expected: format!("[{}]", ws[0]),
                got: format!("{:?}", b.shape),
            });
        }
    }
    let y = Array::empty(dev, &[xs[0], ws[0], oh, ow])?;
    let direct = Direct {
        n: xs[0],
        ic: xs[1],
        h: xs[2],
        w: xs[3],
        oc: ws[0],
        oh,
        ow,
        kernel: (ws[2], ws[3]),
        stride: spec.stride,
        pad: spec.padding,
        dil: spec.dilation,
        flip: false,
    };
    let call = ConvCall {
        direct: Some(direct),
        gemm: GemmCall::conv_geom(Mode::ConvForward, xs, ws, oh, ow, spec),
    };
    match CONV.choose(dev, &call)?.plan {
        ConvPlan::Direct(direct) => direct.run(dev, x, w, bias, &y)?,
        ConvPlan::Gemm => {
            let b = bias.map(|b| &b.buf);
            gemm(dev, &call.gemm, &w.buf, &x.buf, b, None, &y.buf, None)?;
        }
    }
    Ok(y)
}

/// dx for dy: [N, Co, OH, OW], w: [Co, Ci, KH, KW] and the input's shape.
pub fn conv2d_backward_input(
    dev: &Device,
    dy: &Array,
    w: &Array,
    x_shape: &[usize],
    spec: &Conv2dSpec,
) -> Result<Array> {
    let xs = dims4("conv2d_backward_input", "input", x_shape)?;
    let ws = dims4("conv2d_backward_input", "weight", &w.shape)?;
    let (oh, ow) = check("conv2d_backward_input", xs, ws, spec)?;
    expect_dy(&dy.shape, [xs[0], ws[0], oh, ow])?;
    let dx = Array::empty(dev, x_shape)?;
    let call = ConvCall {
        direct: direct_input_grad(xs, ws, oh, ow, spec),
        gemm: GemmCall::conv_geom(Mode::ConvInputGrad, xs, ws, oh, ow, spec),
    };
    match CONV.choose(dev, &call)?.plan {
        ConvPlan::Direct(direct) => direct.run(dev, dy, w, None, &dx)?,
        ConvPlan::Gemm => gemm(dev, &call.gemm, &w.buf, &dy.buf, None, None, &dx.buf, None)?,
    }
    Ok(dx)
}

/// The input gradient as a direct correlation: at stride 1, dx is a correlation of dy with the
/// flipped, transposed weights, padded by (K - 1) * D - p; that needs p <= (K - 1) * D.
fn direct_input_grad(
    xs: [usize; 4],
    ws: [usize; 4],
    oh: usize,
    ow: usize,
    spec: &Conv2dSpec,
) -> Option<Direct> {
    let (kh, kw) = (ws[2], ws[3]);
    let (dh, dw) = spec.dilation;
    if spec.stride == (1, 1) && spec.padding.0 <= (kh - 1) * dh && spec.padding.1 <= (kw - 1) * dw {
        Some(Direct {
            n: xs[0],
            ic: ws[0],
            h: oh,
            w: ow,
            oc: ws[1],
            oh: xs[2],
            ow: xs[3],
            kernel: (kh, kw),
            stride: (1, 1),
            pad: (
                (kh - 1) * dh - spec.padding.0,
                (kw - 1) * dw - spec.padding.1,
            ),
            dil: spec.dilation,
            flip: true,
        })
    } else {
        None
    }
}

/// dw for dy: [N, Co, OH, OW], x: [N, Ci, H, W] and the weight's shape.
pub fn conv2d_backward_weight(
    dev: &Device,
    dy: &Array,
    x: &Array,
    w_shape: &[usize],
    spec: &Conv2dSpec,
) -> Result<Array> {
    let xs = dims4("conv2d_backward_weight", "input", &x.shape)?;
    let ws = dims4("conv2d_backward_weight", "weight", w_shape)?;
    let (oh, ow) = check("conv2d_backward_weight", xs, ws, spec)?;
    expect_dy(&dy.shape, [xs[0], ws[0], oh, ow])?;
    Ok(wgrad(dev, dy, x, xs, ws, oh, ow, spec, false)?.0)
}

/// The weight and bias gradients together: `(dw, dbias)`. Where conv.wgsl's `conv_wgrad` runs,
/// it sums dy for the bias while it reads dy for the weight, which saves the bias gradient's own
/// pass over dy.
pub fn conv2d_backward_weight_bias(
    dev: &Device,
    dy: &Array,
    x: &Array,
    w_shape: &[usize],
    spec: &Conv2dSpec,
) -> Result<(Array, Array)> {
    let xs = dims4("conv2d_backward_weight", "input", &x.shape)?;
    let ws = dims4("conv2d_backward_weight", "weight", w_shape)?;
    let (oh, ow) = check("conv2d_backward_weight", xs, ws, spec)?;
    expect_dy(&dy.shape, [xs[0], ws[0], oh, ow])?;
    match wgrad(dev, dy, x, xs, ws, oh, ow, spec, true)? {
        (dw, Some(db)) => Ok((dw, db)),
        (dw, None) => Ok((dw, conv2d_backward_bias(dev, dy)?)),
    }
}

/// The weight gradient by the variant [`WGRAD`] chooses, with the bias gradient where `bias`
/// and the variant computes it on the way (conv_wgrad).
#[allow(clippy::too_many_arguments)]
fn wgrad(
    dev: &Device,
    dy: &Array,
    x: &Array,
    xs: [usize; 4],
    ws: [usize; 4],
    oh: usize,
    ow: usize,
    spec: &Conv2dSpec,
    bias: bool,
) -> Result<(Array, Option<Array>)> {
    let call = WgradCall {
        x: xs,
        w: ws,
        oh,
        ow,
        spec: *spec,
        gemm: GemmCall::conv_geom(Mode::ConvWeightGrad, xs, ws, oh, ow, spec),
    };
    match WGRAD.choose(dev, &call)?.plan {
        WgradPlan::Direct => wgrad_direct(dev, dy, x, ws, oh, ow, spec, bias),
        WgradPlan::Subgroup => Ok((wgrad_subgroup(dev, dy, x, ws, oh, ow, spec)?, None)),
        WgradPlan::Gemm => {
            let dw = Array::empty(dev, &ws)?;
            gemm(dev, &call.gemm, &dy.buf, &x.buf, None, None, &dw.buf, None)?;
            Ok((dw, None))
        }
    }
}

/// What both weight-gradient kernels share: invocations per layer (one per input channel, kernel
/// row and quad of kernel columns, or for conv_wgrad, a quad and a tail of up to three columns),
/// workgroups, and override constants.
struct WgradLayout {
    ocp: usize,
    jquads: usize,
    /// Workgroups along x (lanes) and y (channel blocks).
    groups: [usize; 2],
    /// Image chunks per dispatch that keep a few threads busy; the chunks' partial sums are added.
    want_chunks: usize,
    consts: Vec<(&'static str, f64)>,
}

impl WgradLayout {
    /// `tail`: the kernel may own up to three kernel columns past a quad (conv.wgsl's TAIL).
    fn new(ic: usize, oc: usize, kh: usize, kw: usize, spec: &Conv2dSpec, tail: bool) -> Self {
        let (nq, ocp) = channel_quads(oc);
        let window = spec.stride.1 == 1 && spec.dilation.1 == 1;
        // A 5- to 7-wide kernel in one invocation: the dy it loads serves all its columns.
        let tail = if tail && window && (5..8).contains(&kw) {
            kw - 4
        } else {
            0
        };
        let jquads = if tail > 0 { 1 } else { kw.div_ceil(4) };
        let lanes = ic * kh * jquads;
        // Invocations past `lanes` do no useful work: a small layer gets a small workgroup.
        let wx = lanes.next_multiple_of(8).min(DIRECT_WX);
        let groups = [lanes.div_ceil(wx), ocp / (4 * nq)];
        let f = |v: usize| v as f64;
        let mut consts = geometry_consts((kh, kw), spec.stride, spec.dilation).to_vec();
        consts.extend([("NQ", f(nq)), ("WINDOW", f(window as usize)), ("WX", f(wx))]);
        if tail > 0 {
            consts.push(("TAIL", f(tail)));
        }
        WgradLayout {
            ocp,
            jquads,
            groups,
            want_chunks: 8usize.div_ceil(groups[0] * groups[1]),
            consts,
        }
    }
}

/// The weight gradient from per-chunk partial sums [chunks, OC * IC * KH * KW (+ OC)], and the
/// bias gradient where each row ends with its OC partial sums.
fn sum_chunks(
    dev: &Device,
    part: Array,
    chunks: usize,
    ws: [usize; 4],
    bias: bool,
) -> Result<(Array, Option<Array>)> {
    let sum = if chunks == 1 {
        part
    } else {
        reduce(dev, &part, 0, Reduce::Sum, false)?
    };
    if !bias {
        return Ok((sum.reshape(&ws)?, None));
    }
    let wlen = ws.iter().product::<usize>();
    let db = Array::empty(dev, &[ws[0]])?;
    crate::layout::strided_copy(dev, &sum.buf, &db.buf, &[ws[0]], wlen, &[1], 0, &[1])?;
    let dw = Array {
        buf: sum
            .buf
            .view(wlen, DType::F32)
            .expect("a prefix of the partial sums"),
        shape: ws.to_vec(),
    };
    Ok((dw, Some(db)))
}

/// The weight gradient by conv.wgsl's `conv_wgrad` (an image of x and of dy each fit a uniform
/// window), with the bias gradient too when `bias`.
#[allow(clippy::too_many_arguments)]
fn wgrad_direct(
    dev: &Device,
    dy: &Array,
    x: &Array,
    ws: [usize; 4],
    oh: usize,
    ow: usize,
    spec: &Conv2dSpec,
    bias: bool,
) -> Result<(Array, Option<Array>)> {
    let [n, ic, h, w] = dims4("conv2d_backward_weight", "input", &x.shape)?;
    let [oc, _, kh, kw] = ws;
    let runs = uniform_runs(dev, &[(&x.buf, ic * h * w), (&dy.buf, oc * oh * ow)], n)?.ok_or(
        OpError::Invalid {
            op: "conv2d_backward_weight",
            message: "conv_wgrad: an image is larger than a uniform window".into(),
        },
    )?;
    let lay = WgradLayout::new(ic, oc, kh, kw, spec, true);
    let k = dev.kernel("conv", "conv_wgrad", &lay.consts)?;
    // Each dispatch sums a run's images in chunks, and where a run has fewer images than the
    // chunks wanted, their rows in parts too: one chunk and part per workgroup z.
    let chunked: Vec<(usize, usize, usize)> = runs
        .iter()
        .map(|r| {
            let chunk = r.count.div_ceil(lay.want_chunks.min(r.count));
            let chunks = r.count.div_ceil(chunk);
            let rparts = lay.want_chunks.div_ceil(chunks).min(oh);
            (chunk, chunks * rparts, rparts)
        })
        .collect();
    let chunks: usize = chunked.iter().map(|c| c.1).sum();
    let part = Array::empty(dev, &[chunks, oc * (ic * kh * kw + bias as usize)])?;
    let u = |v: usize| v as u32;
    let mut chunk0 = 0;
    for (run, &(chunk, run_chunks, rparts)) in runs.iter().zip(&chunked) {
        let params = Params::new().us(&[
            u(run.count),
            u(ic),
            u(h),
            u(w),
            u(oc),
            u(oh),
            u(ow),
            u(spec.padding.0),
            u(spec.padding.1),
            u(lay.jquads),
            u(chunk),
            u(chunk0),
            u(run.windows[0].1),
            u(run.windows[1].1),
            bias as u32,
            u(rparts),
        ]);
        dev.launch(
            &k,
            &[&run.windows[0].0, &run.windows[1].0, &part.buf],
            &params,
            [u(lay.groups[0]), u(lay.groups[1]), u(run_chunks)],
        )?;
        chunk0 += run_chunks;
    }
    sum_chunks(dev, part, chunks, ws, bias)
}

/// The weight gradient by conv_wgrad_sg.wgsl, for software adapters with subgroups where an
/// image is too large for conv.wgsl's uniform windows.
fn wgrad_subgroup(
    dev: &Device,
    dy: &Array,
    x: &Array,
    ws: [usize; 4],
    oh: usize,
    ow: usize,
    spec: &Conv2dSpec,
) -> Result<Array> {
    let [n, ic, h, w] = dims4("conv2d_backward_weight", "input", &x.shape)?;
    let [oc, _, kh, kw] = ws;
    let lay = WgradLayout::new(ic, oc, kh, kw, spec, false);
    let ocp = lay.ocp;
    // Each workgroup z sums over a chunk of images.
    let chunks = lay.want_chunks.clamp(1, n);
    let chunk = n.div_ceil(chunks);
    let chunks = n.div_ceil(chunk);
    let u = |v: usize| v as u32;
    let params = Params::new().us(&[
        u(n),
        u(ic),
        u(h),
        u(w),
        u(oc),
        u(oh),
        u(ow),
        u(spec.padding.0),
        u(spec.padding.1),
        u(lay.jquads),
        u(ocp),
        u(chunk),
    ]);
    let dy_cl = dev.alloc(n * oh * ow * ocp, DType::F32)?;
    let k = dev.kernel("conv_wgrad_sg", "to_channels_last", &[])?;
    launch_1d(dev, &k, &[&dy.buf, &dy_cl], &params, n * oh * ow * ocp)?;
    let part = Array::empty(dev, &[chunks, oc * ic * kh * kw])?;
    let k = dev.kernel("conv_wgrad_sg", "conv_wgrad_sg", &lay.consts)?;
    dev.launch(
        &k,
        &[&x.buf, &dy_cl, &part.buf],
        &params,
        [u(lay.groups[0]), u(lay.groups[1]), u(chunks)],
    )?;
    Ok(sum_chunks(dev, part, chunks, ws, false)?.0)
}

/// `dbias[c]` = sum of dy over batch and space.
pub fn conv2d_backward_bias(dev: &Device, dy: &Array) -> Result<Array> {
    let s = dims4("conv2d_backward_bias", "dy", &dy.shape)?;
    let per_image = reduce(
        dev,
        &dy.reshape(&[s[0], s[1], s[2] * s[3]])?,
        2,
        Reduce::Sum,
        false,
    )?;
    reduce(dev, &per_image, 0, Reduce::Sum, false)
}

fn expect_dy(got: &[usize], want: [usize; 4]) -> Result<()> {
    if got != want {
        return Err(OpError::Shape {
            op: "conv2d backward",
            expected: format!("dy {want:?}"),
            got: format!("{got:?}"),
        });
    }
    Ok(())
}

/// CPU reference.
pub mod cpu {
    use super::Conv2dSpec;

    /// Direct convolution. x: [N, Ci, H, W], w: [Co, Ci, KH, KW].
    pub fn conv2d(
        x: &[f64],
        xs: [usize; 4],
        w: &[f64],
        ws: [usize; 4],
        bias: Option<&[f64]>,
        s: &Conv2dSpec,
    ) -> (Vec<f64>, [usize; 4]) {
        let [n, ci, h, wd] = xs;
        let [co, _, kh, kw] = ws;
        let (oh, ow) = s.out_hw("cpu", h, wd, kh, kw).expect("valid conv");
        let mut y = vec![0.0; n * co * oh * ow];
        for b in 0..n {
            for o in 0..co {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias.map_or(0.0, |bb| bb[o]);
                        for c in 0..ci {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let iy = (oy * s.stride.0 + i * s.dilation.0) as isize
                                        - s.padding.0 as isize;
                                    let ix = (ox * s.stride.1 + j * s.dilation.1) as isize
                                        - s.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    acc += x[((b * ci + c) * h + iy as usize) * wd + ix as usize]
                                        * w[((o * ci + c) * kh + i) * kw + j];
                                }
                            }
                        }
                        y[((b * co + o) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        (y, [n, co, oh, ow])
    }
}

/// 2-D convolution as an op: inputs x [N, C, H, W], weight [Co, C, KH, KW] and optionally bias
/// `[Co]`; the input's gradient (the most expensive product) is taken only where it is wanted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conv2d(pub Conv2dSpec);

impl crate::op::Op for Conv2d {
    fn name(&self) -> &str {
        "conv2d"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(conv2d(dev, inputs[0], inputs[1], inputs.get(2).copied(), &self.0)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let (x, w, spec) = (ctx.inputs[0], ctx.inputs[1], &self.0);
        let has_bias = ctx.inputs.len() > 2;
        let dx = if ctx.needs(0) {
            Some(conv2d_backward_input(dev, dy, w, &x.shape, spec)?)
        } else {
            None
        };
        let (dw, db) = match (ctx.needs(1), has_bias && ctx.needs(2)) {
            (true, true) => {
                let (dw, db) = conv2d_backward_weight_bias(dev, dy, x, &w.shape, spec)?;
                (Some(dw), Some(db))
            }
            (true, false) => (
                Some(conv2d_backward_weight(dev, dy, x, &w.shape, spec)?),
                None,
            ),
            (false, true) => (None, Some(conv2d_backward_bias(dev, dy)?)),
            (false, false) => (None, None),
        };
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(db);
        }
        Ok(grads)
    }
}
