//! Typed kernel parameter blocks: a `#[repr(C)]` struct of 32-bit scalars declared with
//! [`kernel_params!`](crate::kernel_params), laid out word for word as the WGSL struct the kernel
//! binds as its uniform. [`Device::launch_with`](crate::Device::launch_with) checks the two against each other (names,
//! offsets and scalar types, read from naga's reflection of the kernel) before the first launch,
//! so a Rust struct and a WGSL struct that drift apart are a typed error, not wrong numbers.

/// A 32-bit scalar a parameter block may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `u32`.
    U32,
    /// `i32`.
    I32,
    /// `f32`.
    F32,
}

/// The Rust types a [`kernel_params!`](crate::kernel_params) struct's fields may have.
pub trait ParamScalar: Copy + 'static {
    /// The WGSL scalar it matches.
    const KIND: ParamKind;
}
impl ParamScalar for u32 {
    const KIND: ParamKind = ParamKind::U32;
}
impl ParamScalar for i32 {
    const KIND: ParamKind = ParamKind::I32;
}
impl ParamScalar for f32 {
    const KIND: ParamKind = ParamKind::F32;
}

/// One field of a parameter block: its name, byte offset and scalar type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamField {
    /// The field's name (the WGSL member must be called the same).
    pub name: &'static str,
    /// Byte offset in the block.
    pub offset: u32,
    /// Scalar type.
    pub kind: ParamKind,
}

/// A kernel parameter block (made by [`kernel_params!`](crate::kernel_params)).
pub trait KernelParams: bytemuck::Pod {
    /// Its fields, in order.
    const FIELDS: &'static [ParamField];

    /// Its 32-bit words, in field order.
    fn words(&self) -> &[u32] {
        bytemuck::cast_slice(bytemuck::bytes_of(self))
    }
}

/// Declares a kernel parameter block: a `#[repr(C)]` struct of `u32`, `i32` and `f32` fields
/// that implements [`KernelParams`], to be bound as the WGSL struct of the same fields (same
/// names, order and types). [`Device::launch_with`](crate::Device::launch_with) checks the match.
///
/// ```
/// kiln_device::kernel_params! {
///     /// The swish kernels' parameters.
///     pub struct SwishParams { pub n: u32, pub beta: f32 }
/// }
/// use kiln_device::KernelParams;
/// assert_eq!(SwishParams::FIELDS[1].offset, 4);
/// assert_eq!(SwishParams { n: 3, beta: 1.0 }.words(), &[3, 1.0f32.to_bits()]);
/// ```
#[macro_export]
macro_rules! kernel_params {
    ($(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq)]
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty),*
        }
        // SAFETY: every field is a 4-byte scalar (u32, i32 or f32: `ParamScalar` is implemented
        // for nothing else, checked below), so the repr(C) struct has no padding, and any bit
        // pattern is a valid value.
        unsafe impl $crate::bytemuck::Zeroable for $name {}
        unsafe impl $crate::bytemuck::Pod for $name {}
        impl $crate::KernelParams for $name {
            const FIELDS: &'static [$crate::ParamField] = &[$(
                $crate::ParamField {
                    name: stringify!($field),
                    offset: ::core::mem::offset_of!($name, $field) as u32,
                    kind: <$ty as $crate::ParamScalar>::KIND,
                }
            ),*];
        }
    };
}

/// The members of a WGSL parameter struct, as [`ParamField`]s (names owned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgslField {
    /// Member name.
    pub name: String,
    /// Byte offset.
    pub offset: u32,
    /// Scalar type, None for anything but u32, i32 and f32.
    pub kind: Option<ParamKind>,
}
