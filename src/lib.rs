pub use kiln_device as device;
pub use kiln_ops as ops;
