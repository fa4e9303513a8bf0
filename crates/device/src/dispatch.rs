//! What work on a device is made of, before any of it runs: parameter blocks, recorded
//! dispatches, the pending list a flush submits, recordings in progress, readbacks in flight and
//! the counters of all this. (The `Device` methods that make and submit them live in `submit`
//! and `capture`.)

use crate::buffer::{Buffer, BufferInner};
use crate::error::{DeviceError, Result};
use crate::kernel::Kernel;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

/// A kernel's parameter block: 32-bit words written in the order of the WGSL struct's fields.
#[derive(Clone, Debug, Default)]
pub struct Params(pub(crate) Vec<u32>);

impl Params {
    /// An empty block.
    pub fn new() -> Self {
        Params(Vec::new())
    }
    /// Appends a u32 field.
    pub fn u(mut self, v: u32) -> Self {
        self.0.push(v);
        self
    }
    /// Appends an i32 field.
    pub fn i(mut self, v: i32) -> Self {
        self.0.push(v as u32);
        self
    }
    /// Appends an f32 field.
    pub fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
    /// Appends several u32 fields.
    pub fn us(mut self, vs: &[u32]) -> Self {
        self.0.extend_from_slice(vs);
        self
    }
    /// The words.
    pub fn words(&self) -> &[u32] {
        &self.0
    }
}

pub(crate) struct Dispatch {
    pub(crate) kernel: Arc<Kernel>,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) groups: [u32; 3],
    /// The parameter block must outlive the submission: recycling it earlier would let a later
    /// `write_buffer` change what this dispatch reads.
    pub(crate) _params: Option<Buffer>,
    /// The allocations it binds, so that a host write to any other buffer need not submit it
    /// first ([`Pending::touches`]).
    pub(crate) bound: Vec<wgpu::Buffer>,
}

/// Work recorded and not yet submitted.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) dispatches: Vec<Arc<Dispatch>>,
    /// Copies for asynchronous readback, encoded after every dispatch of the submission.
    pub(crate) reads: Vec<Arc<ReadJob>>,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.dispatches.is_empty() && self.reads.is_empty()
    }

    /// Whether any recorded dispatch binds `buf`'s allocation or any readback copies from it: a
    /// host write to it must then wait until they are submitted. (`write_buffer` lands before
    /// the next submission's work, so a write to an allocation nothing pending touches may go
    /// ahead of them.)
    pub(crate) fn touches(&self, buf: &wgpu::Buffer) -> bool {
        self.dispatches.iter().any(|d| d.bound.contains(buf))
            || self.reads.iter().any(|r| r.src == *buf)
    }
}

/// A result that a wgpu callback delivers later (a buffer mapped, submitted work done), read
/// by polling ([`Signal::get`]) or awaited ([`Signal::wait`]): in the browser the callback runs
/// between turns of the event loop, so only awaiting it lets it come.
#[derive(Default)]
pub(crate) struct Signal {
    state: Mutex<SignalState>,
}

type SignalResult = std::result::Result<(), String>;

#[derive(Default)]
struct SignalState {
    result: Option<SignalResult>,
    waker: Option<std::task::Waker>,
}

impl Signal {
    /// Delivers the result and wakes whoever awaits it.
    pub(crate) fn set(&self, r: SignalResult) {
        let waker = {
            let mut s = self.state.lock().unwrap();
            s.result = Some(r);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The result, if delivered.
    pub(crate) fn get(&self) -> Option<SignalResult> {
        self.state.lock().unwrap().result.clone()
    }

    /// Resolves once the result is delivered.
    pub(crate) fn wait(self: &Arc<Self>) -> SignalWait {
        SignalWait(self.clone())
    }
}

/// The future of [`Signal::wait`].
pub(crate) struct SignalWait(Arc<Signal>);

impl std::future::Future for SignalWait {
    type Output = SignalResult;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<SignalResult> {
        let mut s = self.0.state.lock().unwrap();
        match &s.result {
            Some(r) => std::task::Poll::Ready(r.clone()),
            None => {
                s.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

pub(crate) type MapResult = Arc<Signal>;

pub(crate) struct ReadJob {
    pub(crate) device: wgpu::Device,
    pub(crate) src: wgpu::Buffer,
    pub(crate) src_offset: u64,
    pub(crate) staging: Buffer,
    pub(crate) bytes: u64,
    /// Bytes of data (the copy is padded to a multiple of 4).
    pub(crate) data_bytes: usize,
    pub(crate) submitted: std::sync::atomic::AtomicBool,
    /// Set where the job is dropped before its map completes (in the browser only).
    pub(crate) dropped: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) mapped: MapResult,
    pub(crate) data: OnceLock<Vec<u8>>,
}

impl Drop for ReadJob {
    fn drop(&mut self) {
        // The staging buffer must go back to the pool unmapped. Once read, it already is; a map
        // still in flight is waited for first (an unmap does not cancel it).
        if !self.submitted.load(Ordering::Acquire) || self.data.get().is_some() {
            return;
        }
        if cfg!(target_arch = "wasm32") && self.mapped.get().is_none() {
            // Nothing can wait here: the map callback, which holds the staging buffer until it
            // runs, unmaps it before it goes back to the pool.
            self.dropped.store(true, Ordering::Release);
            return;
        }
        let _ = await_mapping(&self.device, &self.mapped);
        if matches!(self.mapped.get(), Some(Ok(()))) {
            self.staging.wgpu().unmap();
        }
    }
}

/// Polls until the map callback has run. Another thread's poll may be the one that runs it, a
/// moment after our own poll returns, so one poll is not enough.
pub(crate) fn await_mapping(device: &wgpu::Device, mapped: &MapResult) -> Result<()> {
    if cfg!(target_arch = "wasm32") {
        return match mapped.get() {
            Some(_) => Ok(()),
            None => Err(DeviceError::WouldBlock("ReadTicket::wait")),
        };
    }
    let start = std::time::Instant::now();
    while mapped.get().is_none() {
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| DeviceError::Readback(e.to_string()))?;
        if mapped.get().is_some() {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            return Err(DeviceError::Readback(
                "the mapping did not complete within 60 s".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Ok(())
}

/// Counters for asserting how work reaches the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Queue submissions so far.
    pub submissions: u64,
    /// Dispatches recorded so far (eager and replayed).
    pub dispatches: u64,
    /// Pipeline requests served from the cache.
    pub pipeline_hits: u64,
    /// Pipelines compiled.
    pub pipeline_misses: u64,
}

/// A thread's recording in progress ([`crate::Device::begin_capture`]).
pub(crate) struct Capture {
    pub(crate) dispatches: Vec<Arc<Dispatch>>,
    /// Every buffer bound while recording; those still alive at the end are kept by the plan.
    pub(crate) touched: Vec<std::sync::Weak<BufferInner>>,
}
