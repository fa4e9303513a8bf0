//! kiln-ops' integration tests, one module per op family, in one test binary (one link, one
//! shared device and pipeline cache). Every op against its CPU reference, every backward against
//! central finite differences of the reference (f64), on small and odd shapes; kernel variants
//! forced through the kernel policy, each counting the cases it checked and the shapes it
//! refused ([`common::Tally`]), failing where it checked none. Run one family with a filter:
//! `cargo test --release -p kiln-ops --test ops -- conv::`.

mod common;

mod attention;
mod banks;
mod conv;
mod decode;
mod elementwise;
mod layout;
mod limits;
mod lookup;
mod matmul;
mod non_finite;
mod optim;
mod quant;
mod reduce;
mod rnn;
mod rows;
mod shapes;
