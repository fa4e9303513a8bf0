pub use kiln_device as device;
#[cfg(feature = "dist")]
pub use kiln_dist as dist;
pub use kiln_graph as graph;
pub use kiln_nn as nn;
pub use kiln_ops as ops;
pub use kiln_train as train;
