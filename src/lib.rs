pub use kiln_device as device;
