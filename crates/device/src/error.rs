use thiserror::Error;

/// Everything the device layer can report instead of panicking.
#[derive(Debug, Error, Clone)]
pub enum DeviceError {
    /// No adapter matched (none installed, or `WGPU_ADAPTER_NAME` matched none).
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The adapter refused the device request.
    #[error("requesting a device from adapter {adapter:?} failed: {reason}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// What wgpu said.
        reason: String,
    },
    /// A buffer request above what the adapter allows in one buffer or one binding.
    #[error(
        "buffer of {requested} bytes exceeds the adapter's limits \
         (max_buffer_size {max_buffer_size}, max_storage_buffer_binding_size {max_binding_size})"
    )]
    BufferTooLarge {
        /// Bytes asked for.
        requested: u64,
        /// The adapter's largest buffer.
        max_buffer_size: u64,
        /// The adapter's largest storage binding.
        max_binding_size: u64,
    },
    /// A shader that naga could not parse or validate.
    #[error("shader `{name}` is invalid: {message}")]
    Shader {
        /// The shader's registered name.
        name: String,
        /// naga's or wgpu's message.
        message: String,
    },
    /// No shader of that name is registered.
    #[error("no shader named `{0}` is registered (shaders/*.wgsl)")]
    UnknownShader(String),
    /// WGSL source given a name that already stands for other source on this device: one of
    /// kiln's registered shaders, or different source compiled earlier under that name.
    #[error("shader name `{name}` is taken by {taken_by}; give this source a name of its own")]
    ShaderNameTaken {
        /// The name asked for.
        name: String,
        /// What holds the name.
        taken_by: &'static str,
    },
    /// An entry point the shader does not define.
    #[error("shader `{shader}` has no compute entry point `{entry}`")]
    UnknownEntryPoint {
        /// The shader.
        shader: String,
        /// The missing entry point.
        entry: String,
    },
    /// A kernel launched with the wrong number or kind of buffers.
    #[error("kernel `{kernel}`: {message}")]
    Binding {
        /// `shader::entry`.
        kernel: String,
        /// What did not fit.
        message: String,
    },
    /// A dispatch larger than the adapter can run even after splitting.
    #[error(
        "kernel `{kernel}`: workgroup count {groups:?} exceeds the per-dimension limit {limit}"
    )]
    DispatchTooLarge {
        /// `shader::entry`.
        kernel: String,
        /// The workgroup counts asked for (after splitting).
        groups: [u32; 3],
        /// The adapter's per-dimension limit.
        limit: u32,
    },
    /// A kernel whose specialised module asks more of the adapter than its limits allow.
    #[error("kernel `{kernel}` needs {needed} for {limit}; {adapter} allows {allowed}")]
    OverLimit {
        /// `shader::entry`.
        kernel: String,
        /// The adapter (or profile) whose limit it exceeds.
        adapter: String,
        /// The limit, named as in `wgpu::Limits`.
        limit: &'static str,
        /// What the kernel needs.
        needed: u64,
        /// What the adapter allows.
        allowed: u64,
    },
    /// A kernel variant forced by the policy that cannot run this shape here.
    #[error(
        "{family} variant `{variant}` (forced by the kernel policy) cannot run here: {reason}"
    )]
    VariantUnsupported {
        /// The op family.
        family: &'static str,
        /// The variant.
        variant: &'static str,
        /// Why not.
        reason: String,
    },
    /// A variant name the family does not have.
    #[error("op family `{family}` has no kernel variant `{variant}` (it has: {known})")]
    UnknownVariant {
        /// The op family.
        family: String,
        /// The name asked for.
        variant: String,
        /// The family's variants.
        known: String,
    },
    /// No variant of the family runs this shape on this adapter.
    #[error("no {family} kernel runs this shape on {adapter}: {reasons}")]
    NoVariant {
        /// The op family.
        family: &'static str,
        /// The adapter (or profile).
        adapter: String,
        /// Each variant's reason.
        reasons: String,
    },
    /// A feature the operation needs and the adapter lacks.
    #[error("the adapter lacks the feature `{0}`")]
    MissingFeature(&'static str),
    /// A wgpu validation or out-of-memory error.
    #[error("wgpu reported an error: {0}")]
    Wgpu(String),
    /// The device was lost (driver reset, timeout, or destroyed).
    #[error("the GPU device was lost: {0}")]
    Lost(String),
    /// A blocking call (a readback, a wait, a device request) where nothing may block: in a
    /// browser page the GPU's work completes between turns of the JavaScript event loop.
    #[error(
        "`{0}` waits for the GPU, which a browser page cannot do: use its async form \
         (Device::new_async, download_async, wait_async, Tensor::to_vec_async, item_async)"
    )]
    WouldBlock(&'static str),
    /// Mapping a buffer for readback failed.
    #[error("reading a buffer back failed: {0}")]
    Readback(String),
    /// Reading or writing a pipeline cache file.
    #[error("pipeline cache file {path}: {message}")]
    CacheFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The device layer's result type.
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// Runs `make` inside a validation error scope and returns what it made and the scope's error.
/// Natively the scope is popped at once; in the browser popping it is a promise that cannot be
/// waited for, so no scope is pushed and an error reaches the device's uncaptured-error handler,
/// reported at the next submission or readback.
pub(crate) fn scoped<T>(
    device: &wgpu::Device,
    make: impl FnOnce() -> T,
) -> (T, Option<wgpu::Error>) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let made = make();
        (made, pollster::block_on(scope.pop()))
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = device;
        (make(), None)
    }
}
