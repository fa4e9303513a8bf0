//! Storage buffers, their element types, and the pool that recycles them by size class.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Element types a kiln buffer can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit float (needs the adapter's `SHADER_F16` to be used in kernels).
    F16,
    /// 32-bit signed integer.
    I32,
    /// 32-bit unsigned integer.
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 => 2,
            _ => 4,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::U32 => "u32",
        })
    }
}

/// A plain-data element type with its kiln dtype.
pub trait Element: bytemuck::Pod {
    /// The matching dtype.
    const DTYPE: DType;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}

/// What a pooled buffer is used for; each kind has its own free lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Usage {
    Storage,
    Uniform,
    Staging,
}

impl Usage {
    fn wgpu(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            // UNIFORM too: a small operand can be bound as a uniform buffer, which software
            // adapters read far faster than storage when every lane reads the same address.
            Usage::Storage => U::STORAGE | U::UNIFORM | U::COPY_SRC | U::COPY_DST,
            Usage::Uniform => U::UNIFORM | U::COPY_DST,
            Usage::Staging => U::MAP_READ | U::COPY_DST,
        }
    }
}

/// Rounds a byte count up to its size class: four classes per power of two, at least 256 bytes,
/// so a recycled buffer wastes at most a quarter of its size.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(256);
    let p = 63 - (b - 1).leading_zeros() as u64; // 2^p < b <= 2^(p+1) for b > 1
    let step = (1u64 << p) / 4;
    b.div_ceil(step) * step
}

pub(crate) struct Raw {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) id: u64,
}

/// Byte counts reported by the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of every buffer the pool has created and not released to the driver.
    pub bytes_allocated: u64,
    /// Bytes held by live buffers (allocated minus free).
    pub bytes_in_use: u64,
    /// Number of buffers ever created by the pool.
    pub buffers_created: u64,
    /// Number of requests served from a free list.
    pub reuses: u64,
}

/// The device memory the pool accounts for, as `torch.cuda.memory_allocated`,
/// `max_memory_allocated` and `memory_reserved` report it (see [`Device::memory_stats`](crate::Device::memory_stats)). Every
/// buffer kiln creates goes through the pool (storage, uniform and staging), so these are the
/// bytes kiln holds on the device; the driver's own allocations (pipelines, command buffers) are
/// not counted. Sizes are the pool's size classes, which round each request up by at most a
/// quarter (more for small buffers on software adapters; see `Device::alloc`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live buffers (tensors, optimizer state, recorded plans' buffers).
    pub live_bytes: u64,
    /// The most `live_bytes` has been since the device was created or
    /// [`Device::reset_peak_memory_stats`](crate::Device::reset_peak_memory_stats) was last called.
    pub peak_live_bytes: u64,
    /// Bytes of every buffer the pool holds from the driver: live plus free for reuse.
    pub pool_bytes: u64,
    /// The most `pool_bytes` has been since creation or the last reset: the device memory
    /// high-water mark.
    pub peak_pool_bytes: u64,
}

type FreeLists = HashMap<(Usage, u64), Vec<Raw>>;

#[derive(Default)]
struct PoolState {
    free: FreeLists,
    stats: PoolStats,
    /// High-water marks of `stats.bytes_in_use` and `stats.bytes_allocated`.
    peak_in_use: u64,
    peak_allocated: u64,
    /// Recordings in progress, by thread: buffers their thread frees go to a private free list
    /// (reused only by the same recording, then owned by its plan), so a buffer a plan writes can
    /// never be handed to anyone else.
    captures: HashMap<std::thread::ThreadId, FreeLists>,
}

/// Recycles buffers by (usage, size class).
pub(crate) struct Pool {
    state: Mutex<PoolState>,
    next_id: AtomicU64,
}

impl Pool {
    pub(crate) fn new() -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(PoolState::default()),
            next_id: AtomicU64::new(1),
        })
    }

    pub(crate) fn take(self: &Arc<Self>, device: &wgpu::Device, usage: Usage, class: u64) -> Raw {
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        st.stats.bytes_in_use += class;
        st.peak_in_use = st.peak_in_use.max(st.stats.bytes_in_use);
        let me = std::thread::current().id();
        let private = st
            .captures
            .get_mut(&me)
            .and_then(|f| f.get_mut(&(usage, class)))
            .and_then(Vec::pop);
        if let Some(raw) = private.or_else(|| st.free.get_mut(&(usage, class)).and_then(Vec::pop)) {
            st.stats.reuses += 1;
            return raw;
        }
        st.stats.bytes_allocated += class;
        st.peak_allocated = st.peak_allocated.max(st.stats.bytes_allocated);
        st.stats.buffers_created += 1;
        drop(guard);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln"),
            size: class,
            usage: usage.wgpu(),
            mapped_at_creation: false,
        });
        Raw {
            buffer,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn give_back(&self, usage: Usage, class: u64, raw: Raw, pinned: bool) {
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        st.stats.bytes_in_use -= class;
        if let Some(private) = st.captures.get_mut(&std::thread::current().id()) {
            // A buffer the host wrote holds data a replayed plan still reads: no later op of the
            // recording may reuse it, so it goes straight to the plan (a key no take uses).
            let key = if pinned {
                (usage, u64::MAX)
            } else {
                (usage, class)
            };
            private.entry(key).or_default().push(raw);
            return;
        }
        st.free.entry((usage, class)).or_default().push(raw);
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.state.lock().unwrap().stats
    }

    pub(crate) fn memory_stats(&self) -> MemoryStats {
        let st = self.state.lock().unwrap();
        MemoryStats {
            live_bytes: st.stats.bytes_in_use,
            peak_live_bytes: st.peak_in_use,
            pool_bytes: st.stats.bytes_allocated,
            peak_pool_bytes: st.peak_allocated,
        }
    }

    /// Starts both high-water marks again from the current values.
    pub(crate) fn reset_peaks(&self) {
        let mut st = self.state.lock().unwrap();
        st.peak_in_use = st.stats.bytes_in_use;
        st.peak_allocated = st.stats.bytes_allocated;
    }

    /// Drops every free buffer, returning the memory to the driver.
    pub(crate) fn trim(&self) {
        let mut st = self.state.lock().unwrap();
        let freed: u64 = st
            .free
            .iter()
            .map(|((_, class), v)| class * v.len() as u64)
            .sum();
        st.free.clear();
        st.stats.bytes_allocated -= freed;
    }

    /// Starts a recording on this thread.
    pub(crate) fn begin_capture(&self) {
        let me = std::thread::current().id();
        self.state
            .lock()
            .unwrap()
            .captures
            .insert(me, FreeLists::new());
    }

    /// Ends this thread's recording: every buffer it freed belongs to the plan from now on.
    pub(crate) fn end_capture(&self) -> Vec<Raw> {
        let mut st = self.state.lock().unwrap();
        let lists = st
            .captures
            .remove(&std::thread::current().id())
            .unwrap_or_default();
        let held: Vec<Raw> = lists.into_values().flatten().collect();
        st.stats.bytes_in_use += held.iter().map(|r| r.buffer.size()).sum::<u64>();
        st.peak_in_use = st.peak_in_use.max(st.stats.bytes_in_use);
        held
    }

    pub(crate) fn release_held(&self, held: Vec<Raw>) {
        let mut st = self.state.lock().unwrap();
        for raw in held {
            let class = raw.buffer.size();
            st.stats.bytes_in_use -= class;
            let usage = if raw.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
                Usage::Storage
            } else {
                Usage::Uniform
            };
            st.free.entry((usage, class)).or_default().push(raw);
        }
    }
}

pub(crate) struct BufferInner {
    raw: Option<Raw>,
    usage: Usage,
    class: u64,
    pool: Weak<Pool>,
    pub(crate) host_written: AtomicBool,
}

impl Drop for BufferInner {
    fn drop(&mut self) {
        if let (Some(raw), Some(pool)) = (self.raw.take(), self.pool.upgrade()) {
            pool.give_back(
                self.usage,
                self.class,
                raw,
                self.host_written.load(Ordering::Relaxed),
            );
        }
    }
}

/// A GPU buffer holding `len` elements of `dtype`. Cloning shares the same memory; the memory goes
/// back to the device's pool when the last clone is dropped.
#[derive(Clone)]
pub struct Buffer {
    pub(crate) inner: Arc<BufferInner>,
    len: usize,
    dtype: DType,
    /// Bytes from the allocation's start where a [`Buffer::window`] begins (0 otherwise).
    offset: u64,
    /// Whether kernels see only `offset .. offset + bytes()` (a window) or the whole allocation.
    windowed: bool,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} x {}, id {})", self.len, self.dtype, self.id())
    }
}

impl Buffer {
    pub(crate) fn new(pool: &Arc<Pool>, raw: Raw, usage: Usage, len: usize, dtype: DType) -> Self {
        let class = raw.buffer.size();
        Buffer {
            inner: Arc::new(BufferInner {
                raw: Some(raw),
                usage,
                class,
                pool: Arc::downgrade(pool),
                host_written: AtomicBool::new(false),
            }),
            len,
            dtype,
            offset: 0,
            windowed: false,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of data (`len * dtype.size()`), not counting the size-class padding.
    pub fn bytes(&self) -> u64 {
        (self.len * self.dtype.size()) as u64
    }

    /// The pool's id of the underlying memory (equal ids: the same memory).
    pub fn id(&self) -> u64 {
        self.raw().id
    }

    /// The same memory seen as another element type or length (no copy). Used for free reshapes
    /// and for reinterpreting bits; the new view must fit in the allocation.
    pub fn view(&self, len: usize, dtype: DType) -> Option<Buffer> {
        ((len * dtype.size()) as u64 <= self.inner.class).then(|| Buffer {
            inner: self.inner.clone(),
            len,
            dtype,
            offset: 0,
            windowed: false,
        })
    }

    /// True when this handle is the only one to its memory (no clone, view or window of it
    /// lives): what it holds may then be overwritten in place without anyone else seeing it.
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// Bytes the allocation holds: at least [`Buffer::bytes`], rounded up to its pool size class.
    pub fn capacity(&self) -> u64 {
        self.inner.class
    }

    /// `len` elements of the same memory from byte `offset` of the allocation (no copy). A kernel
    /// sees only this range, so a 64 KiB uniform array can read a window of a larger buffer.
    /// None where the range passes the allocation's end. `offset` must be a multiple of the
    /// adapter's `min_uniform_buffer_offset_alignment` (or the storage one) when bound.
    pub fn window(&self, offset: u64, len: usize) -> Option<Buffer> {
        let end = offset.checked_add((len * self.dtype.size()) as u64)?;
        (len > 0 && end <= self.inner.class).then(|| Buffer {
            inner: self.inner.clone(),
            len,
            dtype: self.dtype,
            offset,
            windowed: true,
        })
    }

    /// Whether a kernel may bind this buffer as an array of 16-byte quads (`array<vec4<f32>>`)
    /// and reach every element: its binding (the window, or else the whole allocation) must
    /// start and end on a quad. An allocation's size class is a multiple of 32 bytes (except
    /// one capped at the binding limit), so its last quad may overhang `len`: kernels must leave
    /// the elements past `len` as they were.
    pub fn quad_aligned(&self) -> bool {
        if self.windowed {
            self.offset.is_multiple_of(16) && self.bytes().is_multiple_of(16)
        } else {
            self.inner.class.is_multiple_of(16)
        }
    }

    /// Bytes from the allocation's start to the first element.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// What a bind group entry binds: the window, or else the whole allocation.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        if self.windowed {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.wgpu(),
                offset: self.offset,
                size: std::num::NonZeroU64::new(self.bytes()),
            })
        } else {
            self.wgpu().as_entire_binding()
        }
    }

    /// [`Buffer::binding`] for a uniform array: an allocation larger than `max` bytes (the
    /// adapter's uniform binding limit) binds its first `max` bytes, since a uniform array the
    /// shader declares cannot be larger.
    pub(crate) fn uniform_binding(&self, max: u64) -> wgpu::BindingResource<'_> {
        if !self.windowed && self.inner.class > max {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.wgpu(),
                offset: 0,
                size: std::num::NonZeroU64::new(max),
            })
        } else {
            self.binding()
        }
    }

    pub(crate) fn raw(&self) -> &Raw {
        self.inner.raw.as_ref().expect("live buffer")
    }

    pub(crate) fn wgpu(&self) -> &wgpu::Buffer {
        &self.raw().buffer
    }
}

/// Bytes of a uniform window (see [`Buffer::window`]): 64 KiB, the smallest
/// `max_uniform_buffer_binding_size` wgpu allows.
pub const WINDOW_BYTES: u64 = 65536;

/// On software adapters, storage buffers of at least this many bytes are allocated with
/// [`WINDOW_BYTES`] or more (see `Device::take`).
pub(crate) const WINDOW_MIN_BYTES: u64 = 2048;
