//! Timing of recorded GPU work.

use crate::{Device, DeviceError};
use std::time::Instant;

/// Where a timing came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingSource {
    /// GPU timestamp queries at the start and end of the compute pass.
    GpuTimestamps,
    /// CPU wall clock around submission and wait.
    CpuWallClock,
}

/// A measured duration.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Seconds.
    pub seconds: f64,
    /// How it was measured.
    pub source: TimingSource,
}

pub(crate) fn time<E: From<DeviceError>>(
    dev: &Device,
    work: impl FnOnce() -> Result<(), E>,
) -> Result<Timing, E> {
    dev.wait()?;
    let inner = &dev.inner;
    if !inner.caps.timestamps {
        let t0 = Instant::now();
        work()?;
        dev.wait()?;
        return Ok(Timing {
            seconds: t0.elapsed().as_secs_f64(),
            source: TimingSource::CpuWallClock,
        });
    }
    work()?;
    let d = &inner.device;
    let qs = d.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("kiln timing"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolve = d.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kiln timing resolve"),
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = d.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kiln timing read"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    dev.submit_timed(None, Some(&qs), |enc| {
        enc.resolve_query_set(&qs, 0..2, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16);
    })?;
    let bytes = dev.map_read(&read, 16)?;
    let t: &[u64] = bytemuck::cast_slice(&bytes);
    if t[1] < t[0] {
        return Err(DeviceError::Wgpu("timestamps went backwards".into()).into());
    }
    Ok(Timing {
        seconds: (t[1] - t[0]) as f64 * inner.timestamp_period as f64 * 1e-9,
        source: TimingSource::GpuTimestamps,
    })
}
