//! Uniform windows: bulk data read through 64 KiB uniform arrays, which software adapters
//! gather far faster than storage buffers.

use crate::{launch_1d, Buffer, DType, Device, Params, Result};

/// f32 elements in the uniform arrays kernels read bulk data through (`array<vec4<f32>, 4096>`,
/// 64 KiB, the smallest `max_uniform_buffer_binding_size` wgpu allows).
pub(crate) const WINDOW_FLOATS: usize = (kiln_device::WINDOW_BYTES / 4) as usize;

/// A run of whole items that one 64 KiB uniform window of each buffer holds.
pub(crate) struct UniformRun {
    /// The first item of the run.
    pub first: usize,
    /// Items in the run.
    pub count: usize,
    /// Per buffer: the window, to bind to an `array<vec4<f32>, 4096>` uniform, and the elements
    /// from its start to the run's first item.
    pub windows: Vec<(Buffer, usize)>,
}

/// Splits `items` items, laid one after another from element 0 of each buffer (`item_len` f32
/// each), into runs that one 64 KiB uniform window of every buffer holds, so that a kernel can
/// read them through uniform arrays. Software adapters gather a uniform array's elements in one
/// vector operation but load a storage buffer's one invocation at a time, four to five times
/// slower on lavapipe. None where one item (plus the offset alignment's slack) is larger than a
/// window.
pub(crate) fn uniform_runs(
    dev: &Device,
    bufs: &[(&Buffer, usize)],
    items: usize,
) -> Result<Option<Vec<UniformRun>>> {
    let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
    if bufs
        .iter()
        .any(|&(_, len)| len == 0 || len + align - 1 > WINDOW_FLOATS)
    {
        return Ok(None);
    }
    // Per buffer, what to window and the last aligned start that leaves a whole window.
    let mut sources = Vec::new();
    for &(buf, len) in bufs {
        if buf.capacity() < (WINDOW_FLOATS * 4) as u64 {
            // A binding must be a full 64 KiB: copy a small buffer into one.
            let full = dev.alloc(WINDOW_FLOATS, DType::F32)?;
            let n = len * items;
            if n > 0 {
                let copy = dev.kernel("fill", "copy", &[])?;
                launch_1d(
                    dev,
                    &copy,
                    &[&full, buf],
                    &Params::new().u(n as u32).f(0.0),
                    n,
                )?;
            }
            sources.push(full);
        } else {
            sources.push(buf.clone());
        }
    }
    let mut runs = Vec::new();
    let mut first = 0;
    while first < items {
        let mut count = items - first;
        let mut windows = Vec::new();
        for (src, &(_, len)) in sources.iter().zip(bufs) {
            let (window, skip) = window_at(src, align, first * len);
            count = count.min((WINDOW_FLOATS - skip) / len);
            windows.push((window, skip));
        }
        runs.push(UniformRun {
            first,
            count,
            windows,
        });
        first += count;
    }
    Ok(Some(runs))
}

/// The 64 KiB uniform window of `buf` (a window's size or larger) that starts at or before
/// element `start`, aligned, inside the allocation, and the elements from its start to `start`.
fn window_at(buf: &Buffer, align: usize, start: usize) -> (Buffer, usize) {
    let last = (buf.capacity() as usize / 4 - WINDOW_FLOATS) / align * align;
    let at = (start / align * align).min(last);
    let window = buf
        .window((at * 4) as u64, WINDOW_FLOATS)
        .expect("window inside the allocation");
    (window, start - at)
}

/// The 64 KiB uniform window of `buf` that holds its elements `start .. start + len`, and the
/// elements from the window's start to `start`, for a kernel that reads one range of a larger
/// buffer through a uniform array. None where the range (plus the offset alignment's slack) is
/// larger than a window or the buffer's allocation is smaller than one.
pub(crate) fn uniform_window(
    dev: &Device,
    buf: &Buffer,
    start: usize,
    len: usize,
) -> Option<(Buffer, usize)> {
    let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
    if len == 0 || buf.capacity() < (WINDOW_FLOATS * 4) as u64 {
        return None;
    }
    let (window, skip) = window_at(buf, align, start);
    (skip + len <= WINDOW_FLOATS).then_some((window, skip))
}
