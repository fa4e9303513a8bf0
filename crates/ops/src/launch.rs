//! Launch helpers that size the grid, for kiln's kernels and users' own (as
//! `Device::kernel_from_source` compiles them, with `KILN_WG` and `kiln_index` from the prelude).
//!
//! ```no_run
//! # fn main() -> Result<(), kiln_ops::OpError> {
//! use kiln_ops::{launch, Array, Device};
//! kiln_device::kernel_params! { struct N { n: u32 } }
//! let dev = Device::shared()?;
//! let x = Array::from_f32(&dev, &[1.0, -2.0, 3.0], &[3])?;
//! let y = Array::empty_like(&dev, &x)?;
//! let src = "struct N { n: u32 }
//!     @group(0) @binding(0) var<storage, read> x: array<f32>;
//!     @group(0) @binding(1) var<storage, read_write> y: array<f32>;
//!     @group(0) @binding(2) var<uniform> p: N;
//!     @compute @workgroup_size(KILN_WG)
//!     fn relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
//!             @builtin(local_invocation_index) lid: u32) {
//!         let i = kiln_index(wid, nwg, lid);
//!         if (i < p.n) { y[i] = max(x[i], 0.0); }
//!     }";
//! let k = dev.kernel_from_source("my_relu", src, "relu", &[])?;
//! launch::elementwise(&dev, &k, &[&x.buf, &y.buf], &N { n: 3 }, 3)?;
//! # Ok(()) }
//! ```

use crate::{Buffer, Device, KernelParams, OpError, Params, Result};
use std::sync::Arc;

/// Workgroup size of the 1-D kernels (the WGSL `WG` constant).
pub const WG: u32 = 256;

/// Launches a 1-D kernel over `n` invocations of 256 per workgroup.
pub(crate) fn launch_1d(
    dev: &Device,
    kernel: &Arc<kiln_device::Kernel>,
    bufs: &[&Buffer],
    params: &Params,
    n: usize,
) -> Result<()> {
    let groups = u32::try_from(n.div_ceil(WG as usize)).map_err(|_| OpError::Invalid {
        op: "launch",
        message: format!("{n} elements exceed what one dispatch can index"),
    })?;
    dev.launch(kernel, bufs, params, [groups, 1, 1])?;
    Ok(())
}

/// Launches the 1-D kernel `shader::entry` over `n` elements: its quad entry point (`entry`
/// followed by "4", four elements per invocation, loaded as vec4s) where every buffer is
/// [`Buffer::quad_aligned`], else `entry` itself, one element per invocation. Software adapters
/// run the quad form about three times as fast.
pub(crate) fn launch_quads(
    dev: &Device,
    shader: &str,
    entry: &str,
    constants: &[(&str, f64)],
    bufs: &[&Buffer],
    params: &Params,
    n: usize,
) -> Result<()> {
    if bufs.iter().all(|b| b.quad_aligned()) {
        let k = dev.kernel(shader, &format!("{entry}4"), constants)?;
        launch_1d(dev, &k, bufs, params, n.div_ceil(4))
    } else {
        let k = dev.kernel(shader, entry, constants)?;
        launch_1d(dev, &k, bufs, params, n)
    }
}

fn groups_of(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| OpError::Invalid {
        op,
        message: format!("{n} workgroups exceed what one dispatch can index"),
    })
}

/// Launches `kernel` over `n` invocations, [`WG`] to a workgroup (a kernel written with
/// `@workgroup_size(KILN_WG)` and `kiln_index`), with a typed parameter block checked against
/// the kernel's WGSL struct.
pub fn elementwise<P: KernelParams>(
    dev: &Device,
    kernel: &Arc<kiln_device::Kernel>,
    bufs: &[&Buffer],
    params: &P,
    n: usize,
) -> Result<()> {
    let groups = groups_of("launch::elementwise", n.div_ceil(WG as usize))?;
    dev.launch_with(kernel, bufs, params, [groups, 1, 1])?;
    Ok(())
}

/// Launches one workgroup per row (`kiln_group` numbers them), for kernels whose workgroup
/// reduces or scans a row together.
pub fn per_row<P: KernelParams>(
    dev: &Device,
    kernel: &Arc<kiln_device::Kernel>,
    bufs: &[&Buffer],
    params: &P,
    rows: usize,
) -> Result<()> {
    let groups = groups_of("launch::per_row", rows)?;
    dev.launch_with(kernel, bufs, params, [groups, 1, 1])?;
    Ok(())
}

/// Launches a 2-D grid of tiles covering `extent` = [columns, rows], each workgroup one
/// `tile` = [columns, rows] tile (workgroup_id.x along columns, .y along rows).
pub fn tiled<P: KernelParams>(
    dev: &Device,
    kernel: &Arc<kiln_device::Kernel>,
    bufs: &[&Buffer],
    params: &P,
    extent: [usize; 2],
    tile: [usize; 2],
) -> Result<()> {
    let x = groups_of("launch::tiled", extent[0].div_ceil(tile[0].max(1)))?;
    let y = groups_of("launch::tiled", extent[1].div_ceil(tile[1].max(1)))?;
    dev.launch_with(kernel, bufs, params, [x, y, 1])?;
    Ok(())
}
