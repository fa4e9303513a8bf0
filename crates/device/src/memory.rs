//! Device memory: allocation from the pool, uploads, and what the pool holds.

use crate::buffer::{size_class, Buffer, DType, Element, MemoryStats, Raw, Usage};
use crate::buffer::{WINDOW_BYTES, WINDOW_MIN_BYTES};
use crate::device::Device;
use crate::error::{DeviceError, Result};

impl Device {
    pub(crate) fn take(&self, usage: Usage, bytes: u64) -> Result<Raw> {
        let l = &self.inner.profile.limits;
        let max_binding = l.max_storage_buffer_binding_size;
        if bytes > l.max_buffer_size || (usage == Usage::Storage && bytes > max_binding) {
            return Err(DeviceError::BufferTooLarge {
                requested: bytes,
                max_buffer_size: l.max_buffer_size,
                max_binding_size: max_binding,
            });
        }
        let cap = l.max_buffer_size.min(max_binding) & !3;
        let mut class = size_class(bytes);
        // Software adapters' kernels read operands through 64 KiB uniform windows, and a window
        // binding needs 64 KiB behind it: a medium storage buffer gets that much, so that it is
        // bound in place instead of copied into a full-size buffer on every read.
        if usage == Usage::Storage
            && self.inner.summary.is_software
            && bytes >= WINDOW_MIN_BYTES
            && l.max_uniform_buffer_binding_size >= WINDOW_BYTES
        {
            class = class.max(WINDOW_BYTES);
        }
        let class = class.min(cap.max(bytes.next_multiple_of(4)));
        Ok(self.inner.pool.take(&self.inner.device, usage, class))
    }

    /// A storage buffer for `len` elements of `dtype`, contents unspecified (a recycled buffer
    /// keeps old data; kernels that accumulate must clear it first).
    pub fn alloc(&self, len: usize, dtype: DType) -> Result<Buffer> {
        let bytes = (len.max(1) * dtype.size()) as u64;
        let raw = self.take(Usage::Storage, bytes)?;
        Ok(Buffer::new(
            &self.inner.pool,
            raw,
            Usage::Storage,
            len,
            dtype,
        ))
    }

    /// The device memory kiln's buffers hold now and at most (see [`MemoryStats`]), as
    /// PyTorch's `torch.cuda.memory_stats`. Training loops report `peak_pool_bytes` as the
    /// memory high-water mark.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), kiln_device::DeviceError> {
    /// let dev = kiln_device::Device::new()?;
    /// dev.reset_peak_memory_stats();
    /// let buf = dev.alloc(1 << 20, kiln_device::DType::F32)?;
    /// assert!(dev.memory_stats().peak_live_bytes >= 4 << 20);
    /// # drop(buf); Ok(()) }
    /// ```
    pub fn memory_stats(&self) -> MemoryStats {
        self.inner.pool.memory_stats()
    }

    /// Starts the high-water marks of [`Device::memory_stats`] again from the current values
    /// (`torch.cuda.reset_peak_memory_stats`), to measure one phase of a run.
    pub fn reset_peak_memory_stats(&self) {
        self.inner.pool.reset_peaks()
    }

    /// A new storage buffer holding `data`.
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<Buffer> {
        let buf = self.alloc(data.len(), T::DTYPE)?;
        self.write(&buf, data)?;
        Ok(buf)
    }
}
