//! Timing recorded GPU work: timestamp queries around a submission or around each dispatch
//! ([`Device::time`], [`Device::profile`]), the CPU clock where the adapter has none.

use crate::device::Device;
use crate::error::DeviceError;
use crate::timing::{KernelTime, ProfileChunk, Timing, TimingSource};
use std::time::Instant;

pub(crate) fn time<E: From<DeviceError>>(
    dev: &Device,
    work: impl FnOnce() -> Result<(), E>,
) -> Result<Timing, E> {
    dev.wait()?;
    let inner = &dev.inner;
    if !inner.profile.caps.timestamps {
        let t0 = Instant::now();
        work()?;
        dev.wait()?;
        return Ok(Timing {
            seconds: t0.elapsed().as_secs_f64(),
            source: TimingSource::CpuWallClock,
        });
    }
    work()?;
    let q = Timestamps::new(dev, 2);
    dev.submit_timed(None, Some(&q.set), |enc| q.copy_out(enc))?;
    let bytes = dev.map_read(&q.read, 16)?;
    let t: &[u64] = bytemuck::cast_slice(&bytes);
    if t[1] < t[0] {
        return Err(DeviceError::Wgpu("timestamps went backwards".into()).into());
    }
    Ok(Timing {
        seconds: (t[1] - t[0]) as f64 * inner.timestamp_period as f64 * 1e-9,
        source: TimingSource::GpuTimestamps,
    })
}

/// Encodes each of the dispatches labelled `labels` (by `encode_one`, given its index) in its
/// own compute pass between two timestamps, then the copy of the timestamps to a mappable buffer.
pub(crate) fn encode_profiled(
    dev: &Device,
    enc: &mut wgpu::CommandEncoder,
    labels: Vec<String>,
    mut encode_one: impl FnMut(&mut wgpu::ComputePass<'_>, usize),
) -> ProfileChunk {
    let q = Timestamps::new(dev, 2 * labels.len() as u32);
    for (i, label) in labels.iter().enumerate() {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &q.set,
                beginning_of_pass_write_index: Some(2 * i as u32),
                end_of_pass_write_index: Some(2 * i as u32 + 1),
            }),
        });
        encode_one(&mut pass, i);
    }
    q.copy_out(enc);
    ProfileChunk {
        labels,
        read: q.read,
    }
}

/// A timestamp query set and the buffers its values travel through to the host.
struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    queries: u32,
}

impl Timestamps {
    fn new(dev: &Device, queries: u32) -> Timestamps {
        let d = &dev.inner.device;
        let buffer = |label, usage| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 8 * queries as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        Timestamps {
            set: d.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kiln timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: queries,
            }),
            resolve: buffer(
                "kiln timestamps resolve",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            read: buffer(
                "kiln timestamps read",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            queries,
        }
    }

    /// Resolves every query and copies the values to the mappable buffer.
    fn copy_out(&self, enc: &mut wgpu::CommandEncoder) {
        enc.resolve_query_set(&self.set, 0..self.queries, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, 8 * self.queries as u64);
    }
}

pub(crate) fn profile<E: From<DeviceError>>(
    dev: &Device,
    work: impl FnOnce() -> Result<(), E>,
) -> Result<Vec<KernelTime>, E> {
    if !dev.inner.profile.caps.timestamps {
        return Err(DeviceError::MissingFeature("timestamp-query").into());
    }
    dev.wait()?;
    *dev.inner.profiling.lock().unwrap() = Some(Vec::new());
    let worked = work();
    let flushed = dev.flush();
    let chunks = dev
        .inner
        .profiling
        .lock()
        .unwrap()
        .take()
        .unwrap_or_default();
    worked?;
    flushed?;
    let mut out: Vec<KernelTime> = Vec::new();
    let period = dev.inner.timestamp_period as f64 * 1e-9;
    for chunk in chunks {
        let bytes = dev.map_read(&chunk.read, 16 * chunk.labels.len() as u64)?;
        let t: &[u64] = bytemuck::cast_slice(&bytes);
        for (i, label) in chunk.labels.into_iter().enumerate() {
            let seconds = t[2 * i + 1].saturating_sub(t[2 * i]) as f64 * period;
            match out.iter_mut().find(|k| k.kernel == label) {
                Some(k) => {
                    k.calls += 1;
                    k.seconds += seconds;
                }
                None => out.push(KernelTime {
                    kernel: label,
                    calls: 1,
                    seconds,
                }),
            }
        }
    }
    out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Ok(out)
}

impl Device {
    /// Times `work` (which records dispatches) with GPU timestamps around one compute pass where
    /// the adapter has them, and with CPU wall time around submit-and-wait otherwise.
    pub fn time<E: From<DeviceError>>(
        &self,
        work: impl FnOnce() -> Result<(), E>,
    ) -> Result<Timing, E> {
        time(self, work)
    }

    /// Runs `work` with every dispatch in its own timed compute pass and returns GPU time per
    /// kernel label (shader, entry point and constants), most expensive first. The device's
    /// submissions from other threads meanwhile are counted too. Needs timestamp queries.
    pub fn profile<E: From<DeviceError>>(
        &self,
        work: impl FnOnce() -> Result<(), E>,
    ) -> Result<Vec<KernelTime>, E> {
        profile(self, work)
    }
}
