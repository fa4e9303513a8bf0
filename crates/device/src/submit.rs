//! Submission and readback: recording dispatches, one command buffer
//! and one queue submission per flush, host writes ordered between submissions, and readbacks
//! (blocking, or through a [`ReadTicket`]).

use crate::buffer::{Buffer, DType, Element, Usage};
use crate::device::Device;
use crate::dispatch::{await_mapping, Dispatch, Params, Pending, ReadJob, Signal};
use crate::error::{DeviceError, Result};
use crate::kernel::Kernel;
use crate::shaders::BindingKind;
use crate::{profiling, timing};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// A readback in flight: the buffer's contents as of the end of the submission that carried it.
/// Reading it never stalls the GPU; [`ReadTicket::try_read`] does not block either.
pub struct ReadTicket {
    job: Arc<ReadJob>,
    dev: Device,
}

impl ReadTicket {
    fn take<T: Element>(&self) -> Option<Vec<T>> {
        if self.job.data.get().is_none() {
            if !matches!(self.job.mapped.get(), Some(Ok(()))) {
                return None;
            }
            let slice = self.job.staging.wgpu().slice(..self.job.bytes);
            let bytes = slice.get_mapped_range().ok()?.to_vec();
            self.job.staging.wgpu().unmap();
            let _ = self.job.data.set(bytes);
        }
        let bytes = self.job.data.get()?;
        let n = self.job.data_bytes.min(bytes.len());
        Some(bytemuck::pod_collect_to_vec(
            &bytes[..n - n % T::DTYPE.size()],
        ))
    }

    fn failed(&self) -> Result<()> {
        match self.job.mapped.get() {
            Some(Err(e)) => Err(DeviceError::Readback(e)),
            _ => Ok(()),
        }
    }

    /// The values if the GPU has finished (polls the device without waiting), else None.
    pub fn try_read<T: Element>(&self) -> Result<Option<Vec<T>>> {
        self.dev
            .inner
            .device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| DeviceError::Readback(e.to_string()))?;
        self.failed()?;
        Ok(self.take())
    }

    /// The values once the GPU has finished (submitting the carrying work first if it is still
    /// pending), without blocking where the platform cannot block: in the browser the map
    /// completes between turns of the event loop while this awaits; natively it waits as
    /// [`ReadTicket::wait`] does.
    pub async fn read<T: Element>(&self) -> Result<Vec<T>> {
        if !self.job.submitted.load(Ordering::Acquire) {
            self.dev.flush()?;
        }
        if cfg!(target_arch = "wasm32") {
            self.job
                .mapped
                .wait()
                .await
                .map_err(DeviceError::Readback)?;
        } else {
            await_mapping(&self.dev.inner.device, &self.job.mapped)?;
        }
        self.dev.check_fault()?;
        self.failed()?;
        self.take()
            .ok_or_else(|| DeviceError::Readback("mapping did not complete".into()))
    }

    /// Waits for the values (submitting the carrying work first if it is still pending). In
    /// the browser, where nothing may block, use [`ReadTicket::read`].
    pub fn wait<T: Element>(&self) -> Result<Vec<T>> {
        if !self.job.submitted.load(Ordering::Acquire) {
            self.dev.flush()?;
        }
        await_mapping(&self.dev.inner.device, &self.job.mapped)?;
        self.failed()?;
        self.take()
            .ok_or_else(|| DeviceError::Readback("mapping did not complete".into()))
    }
}
impl Device {
    /// Overwrites a buffer's contents from the host. Work recorded before this call still sees
    /// the old contents (it is submitted first).
    pub fn write<T: Element>(&self, buf: &Buffer, data: &[T]) -> Result<()> {
        if data.len() != buf.len() || T::DTYPE != buf.dtype() {
            return Err(DeviceError::Binding {
                kernel: "write".into(),
                message: format!(
                    "buffer holds {} x {}, data is {} x {}",
                    buf.len(),
                    buf.dtype(),
                    data.len(),
                    T::DTYPE
                ),
            });
        }
        // Under the pending lock: a host write must land after every dispatch recorded before
        // it that reads or writes the buffer, so those are submitted first and no other thread
        // may slip a submission of older ones in behind it. Work that does not touch the
        // buffer stays pending (an optimizer's hyper-parameters written between a step's
        // backward pass and its update cost no extra submission).
        let mut pending = self.inner.pending.lock().unwrap();
        if pending.touches(buf.wgpu()) {
            self.submit_locked(&mut pending, None, None, |_| {})?;
        }
        buf.inner
            .host_written
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len().is_multiple_of(4) {
            self.inner
                .queue
                .write_buffer(buf.wgpu(), buf.offset(), bytes);
        } else {
            // Copies must be 4-byte multiples: pad odd f16 lengths.
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.inner
                .queue
                .write_buffer(buf.wgpu(), buf.offset(), &padded);
        }
        Ok(())
    }

    /// Submits pending work and reads a buffer back, awaiting the GPU without blocking the
    /// browser's event loop ([`Device::download`] natively).
    pub async fn download_async<T: Element>(&self, buf: &Buffer) -> Result<Vec<T>> {
        if T::DTYPE.size() != buf.dtype().size() {
            return Err(DeviceError::Binding {
                kernel: "download".into(),
                message: format!("buffer holds {}, asked for {}", buf.dtype(), T::DTYPE),
            });
        }
        if !cfg!(target_arch = "wasm32") {
            return self.download(buf);
        }
        self.read_async(buf)?.read().await
    }

    /// Submits pending work and reads a buffer back. In the browser, where nothing may block,
    /// use [`Device::download_async`].
    pub fn download<T: Element>(&self, buf: &Buffer) -> Result<Vec<T>> {
        if cfg!(target_arch = "wasm32") {
            return Err(DeviceError::WouldBlock("Device::download"));
        }
        if T::DTYPE.size() != buf.dtype().size() {
            return Err(DeviceError::Binding {
                kernel: "download".into(),
                message: format!("buffer holds {}, asked for {}", buf.dtype(), T::DTYPE),
            });
        }
        let bytes = buf.bytes().next_multiple_of(4).max(4);
        let staging = self.take(Usage::Staging, bytes)?;
        let staging = Buffer::new(
            &self.inner.pool,
            staging,
            Usage::Staging,
            bytes as usize / 4,
            DType::U32,
        );
        self.submit_with(None, |enc| {
            enc.copy_buffer_to_buffer(buf.wgpu(), buf.offset(), staging.wgpu(), 0, bytes)
        })?;
        let bytes_out = self.map_read(staging.wgpu(), bytes)?;
        let n = buf.bytes() as usize;
        Ok(bytemuck::pod_collect_to_vec(&bytes_out[..n]))
    }

    /// Records one dispatch of `kernel` over `groups` workgroups, binding `buffers` to the entry
    /// point's storage bindings (and uniform arrays) in binding order and `params` to its
    /// parameter block (its uniform struct).
    ///
    /// A 1-D count above the adapter's per-dimension limit is split into x and y; kernels compute
    /// their linear workgroup index as `wid.x + wid.y * nwg.x` and bounds-check it.
    pub fn launch(
        &self,
        kernel: &Arc<Kernel>,
        buffers: &[&Buffer],
        params: &Params,
        groups: [u32; 3],
    ) -> Result<()> {
        let err = |message: String| DeviceError::Binding {
            kernel: kernel.name.clone(),
            message,
        };
        let storage: Vec<(u32, BindingKind)> = kernel
            .bindings
            .iter()
            .filter(|(_, k)| *k != BindingKind::Uniform)
            .copied()
            .collect();
        let uniform = kernel
            .bindings
            .iter()
            .find(|(_, k)| *k == BindingKind::Uniform)
            .map(|(b, _)| *b);
        if storage.len() != buffers.len() {
            return Err(err(format!(
                "entry point uses {} storage buffers, {} were given",
                storage.len(),
                buffers.len()
            )));
        }
        if uniform.is_some() == params.0.is_empty() {
            return Err(err(format!(
                "entry point {} a parameter block, {} words were given",
                if uniform.is_some() { "uses" } else { "has no" },
                params.0.len()
            )));
        }
        if groups.contains(&0) {
            return Ok(()); // nothing to do: empty tensors
        }
        let max = self
            .inner
            .profile
            .limits
            .max_compute_workgroups_per_dimension;
        let groups = if groups[0] > max && groups[1] == 1 && groups[2] == 1 {
            let y = groups[0].div_ceil(max);
            [groups[0].div_ceil(y), y, 1]
        } else {
            groups
        };
        if groups.iter().any(|&g| g > max) {
            return Err(DeviceError::DispatchTooLarge {
                kernel: kernel.name.clone(),
                groups,
                limit: max,
            });
        }
        let params_buf = match uniform {
            Some(_) => {
                let mut words = params.0.clone();
                words.resize(words.len().next_multiple_of(4), 0);
                let raw = self.take(Usage::Uniform, (words.len() * 4) as u64)?;
                let b = Buffer::new(
                    &self.inner.pool,
                    raw,
                    Usage::Uniform,
                    words.len(),
                    DType::U32,
                );
                self.inner
                    .queue
                    .write_buffer(b.wgpu(), 0, bytemuck::cast_slice(&words));
                Some(b)
            }
            None => None,
        };
        let mut entries: Vec<wgpu::BindGroupEntry> = storage
            .iter()
            .zip(buffers)
            .map(|(&(binding, kind), b)| wgpu::BindGroupEntry {
                binding,
                resource: if kind == BindingKind::UniformRead {
                    b.uniform_binding(self.inner.profile.limits.max_uniform_buffer_binding_size)
                } else {
                    b.binding()
                },
            })
            .collect();
        if let (Some(binding), Some(p)) = (uniform, &params_buf) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: p.wgpu().as_entire_binding(),
            });
        }
        let (bind_group, error) = crate::error::scoped(&self.inner.device, || {
            self.inner
                .device
                .create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &kernel.layout,
                    entries: &entries,
                })
        });
        if let Some(e) = error {
            return Err(err(e.to_string()));
        }
        let dispatch = Arc::new(Dispatch {
            kernel: kernel.clone(),
            bind_group,
            groups,
            _params: params_buf,
            bound: buffers.iter().map(|b| b.wgpu().clone()).collect(),
        });
        let me = std::thread::current().id();
        if let Some(cap) = self.inner.captures.lock().unwrap().get_mut(&me) {
            cap.dispatches.push(dispatch.clone());
            cap.touched
                .extend(buffers.iter().map(|b| Arc::downgrade(&b.inner)));
        }
        self.inner.pending.lock().unwrap().dispatches.push(dispatch);
        Ok(())
    }

    pub(crate) fn encode(pass: &mut wgpu::ComputePass<'_>, dispatches: &[Arc<Dispatch>]) {
        for d in dispatches {
            pass.set_pipeline(&d.kernel.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
    }

    /// Encodes `extra` dispatches after the pending ones, then `after` (copies), in one command
    /// buffer and one submission.
    pub(crate) fn submit_with(
        &self,
        extra: Option<&[Arc<Dispatch>]>,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        self.submit_timed(extra, None, after)
    }

    pub(crate) fn submit_timed(
        &self,
        extra: Option<&[Arc<Dispatch>]>,
        timestamps: Option<&wgpu::QuerySet>,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        let mut pending = self.inner.pending.lock().unwrap();
        self.submit_locked(&mut pending, extra, timestamps, after)
    }

    /// Encodes and submits with the pending list locked for the whole time, so host writes
    /// (`write`) are ordered exactly between submissions.
    pub(crate) fn submit_locked(
        &self,
        pending: &mut Pending,
        extra: Option<&[Arc<Dispatch>]>,
        timestamps: Option<&wgpu::QuerySet>,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        self.check_fault()?;
        let mut pending = std::mem::take(pending);
        // A scope per submission: its validation errors come back to this caller, and a bad
        // submission does not poison later ones.
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self
            .inner
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kiln"),
            });
        let reads = std::mem::take(&mut pending.reads);
        let n = pending.dispatches.len() + extra.map_or(0, |e| e.len());
        let profiling = timestamps.is_none() && self.inner.profiling.lock().unwrap().is_some();
        let mut profiled = Vec::new();
        if profiling && n > 0 {
            let all: Vec<&Arc<Dispatch>> = pending
                .dispatches
                .iter()
                .chain(extra.into_iter().flatten())
                .collect();
            for chunk in all.chunks(timing::PROFILE_CHUNK) {
                let labels = chunk.iter().map(|d| d.kernel.label().to_string()).collect();
                profiled.push(profiling::encode_profiled(
                    self,
                    &mut enc,
                    labels,
                    |pass, i| Self::encode(pass, std::slice::from_ref(chunk[i])),
                ));
            }
        } else if n > 0 || timestamps.is_some() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("kiln"),
                timestamp_writes: timestamps.map(|q| wgpu::ComputePassTimestampWrites {
                    query_set: q,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            Self::encode(&mut pass, &pending.dispatches);
            if let Some(e) = extra {
                Self::encode(&mut pass, e);
            }
        }
        for r in &reads {
            enc.copy_buffer_to_buffer(&r.src, r.src_offset, r.staging.wgpu(), 0, r.bytes);
        }
        after(&mut enc);
        self.inner.queue.submit([enc.finish()]);
        for r in &reads {
            r.submitted.store(true, Ordering::Release);
            let mapped = r.mapped.clone();
            let dropped = r.dropped.clone();
            let staging = r.staging.clone();
            r.staging
                .wgpu()
                .slice(..r.bytes)
                .map_async(wgpu::MapMode::Read, move |res| {
                    let ok = res.is_ok();
                    mapped.set(res.map_err(|e| e.to_string()));
                    if ok && dropped.load(Ordering::Acquire) {
                        staging.wgpu().unmap();
                    }
                });
        }
        if profiling {
            if let Some(list) = self.inner.profiling.lock().unwrap().as_mut() {
                list.extend(profiled);
            }
        }
        self.inner.submissions.fetch_add(1, Ordering::Relaxed);
        self.inner.dispatches.fetch_add(n as u64, Ordering::Relaxed);
        // In the browser no scope was pushed (its pop cannot be waited for): errors reach the
        // uncaptured-error handler and come back from a later check.
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(DeviceError::Wgpu(e.to_string()));
        }
        self.check_fault()
    }

    /// Starts an asynchronous readback of `buf`: a copy is added to the next submission, after all
    /// of its dispatches (a plan replayed next included), and the returned ticket yields the
    /// values once the GPU is done. Staging buffers come from the pool, so steady periodic reads
    /// cycle through a few of them.
    pub fn read_async(&self, buf: &Buffer) -> Result<ReadTicket> {
        let bytes = buf.bytes().next_multiple_of(4).max(4);
        let raw = self.take(Usage::Staging, bytes)?;
        let staging = Buffer::new(
            &self.inner.pool,
            raw,
            Usage::Staging,
            bytes as usize / 4,
            DType::U32,
        );
        let job = Arc::new(ReadJob {
            device: self.inner.device.clone(),
            src: buf.wgpu().clone(),
            src_offset: buf.offset(),
            staging,
            bytes,
            data_bytes: buf.bytes() as usize,
            submitted: std::sync::atomic::AtomicBool::new(false),
            dropped: Arc::default(),
            mapped: Arc::default(),
            data: OnceLock::new(),
        });
        self.inner.pending.lock().unwrap().reads.push(job.clone());
        Ok(ReadTicket {
            job,
            dev: self.clone(),
        })
    }

    /// Submits all pending work (one submission; none if nothing is pending).
    pub fn flush(&self) -> Result<()> {
        if self.inner.pending.lock().unwrap().is_empty() {
            return self.check_fault();
        }
        self.submit_with(None, |_| {})
    }

    /// Submits pending work and resolves once the GPU has finished everything submitted,
    /// without blocking the browser's event loop ([`Device::wait`] natively).
    pub async fn wait_async(&self) -> Result<()> {
        if !cfg!(target_arch = "wasm32") {
            return self.wait();
        }
        self.flush()?;
        let done = Arc::new(Signal::default());
        let d = done.clone();
        self.inner
            .queue
            .on_submitted_work_done(move || d.set(Ok(())));
        done.wait().await.map_err(DeviceError::Wgpu)?;
        self.check_fault()
    }

    /// Blocks until the GPU has finished all submitted work. In the browser, where nothing may
    /// block, use [`Device::wait_async`].
    pub fn wait(&self) -> Result<()> {
        if cfg!(target_arch = "wasm32") {
            return Err(DeviceError::WouldBlock("Device::wait"));
        }
        self.flush()?;
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| DeviceError::Wgpu(e.to_string()))?;
        self.check_fault()
    }

    pub(crate) fn map_read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        if cfg!(target_arch = "wasm32") {
            return Err(DeviceError::WouldBlock("a blocking readback"));
        }
        let slice = buffer.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| DeviceError::Readback(e.to_string()))?;
        self.check_fault()?;
        rx.recv()
            .map_err(|e| DeviceError::Readback(e.to_string()))?
            .map_err(|e| DeviceError::Readback(e.to_string()))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| DeviceError::Readback(e.to_string()))?
            .to_vec();
        buffer.unmap();
        Ok(out)
    }
}

impl Device {
    /// [`Device::launch`] with a typed parameter block, checked against the kernel's WGSL
    /// struct the first time this kernel is launched with `P`.
    pub fn launch_with<P: crate::params::KernelParams>(
        &self,
        kernel: &Arc<Kernel>,
        buffers: &[&Buffer],
        params: &P,
        groups: [u32; 3],
    ) -> Result<()> {
        let key = (kernel.label().to_string(), std::any::TypeId::of::<P>());
        let checked = self.inner.params_checked.lock().unwrap().contains(&key);
        if !checked {
            kernel.check_params::<P>()?;
            self.inner.params_checked.lock().unwrap().insert(key);
        }
        self.launch(kernel, buffers, &Params::new().us(params.words()), groups)
    }
}
