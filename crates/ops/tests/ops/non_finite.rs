//! NaN and infinities: ReLU and max pooling propagate NaN as PyTorch does (on every adapter, in
//! both the quad and the one-element kernels), and the device-side finite check matches its CPU
//! reference.

use crate::common::dev;
use crate::common::expect_err;
use kiln_ops::elementwise::{unary, Unary};
use kiln_ops::finite::{cpu, finite_check, CLEAR};
use kiln_ops::pool::{max_pool2d, Pool2dSpec};
use kiln_ops::Array;

/// Bitwise class of a value: NaN, or the value itself.
fn same(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

#[test]
fn relu_propagates_nan_in_both_kernels() {
    let d = dev();
    // 8 elements take the quad kernel, 5 the one-element kernel.
    for n in [8, 5] {
        let x: Vec<f32> = [
            f32::NAN,
            -1.0,
            2.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            -0.0,
            0.5,
            -f32::NAN,
        ][..n]
            .to_vec();
        // torch.relu(torch.tensor([nan, -1, 2, -inf, inf, -0., 0.5, nan]))
        //   -> [nan, 0, 2, 0, inf, 0, 0.5, nan]
        let want = [f32::NAN, 0.0, 2.0, 0.0, f32::INFINITY, 0.0, 0.5, f32::NAN];
        let y = unary(&d, &Array::from_f32(&d, &x, &[n]).unwrap(), Unary::Relu)
            .unwrap()
            .to_f32(&d)
            .unwrap();
        for i in 0..n {
            assert!(
                same(y[i], want[i]),
                "n {n}: relu({}) = {}, want {}",
                x[i],
                y[i],
                want[i]
            );
            let cpu = kiln_ops::elementwise::cpu::unary(x[i] as f64, Unary::Relu) as f32;
            assert!(same(cpu, want[i]), "CPU reference relu({}) = {cpu}", x[i]);
        }
    }
}

#[test]
fn max_pooling_propagates_nan() {
    let d = dev();
    // Two 2x2 windows over [1, 1, 2, 4]; the first holds a NaN after a larger value, the second
    // none. torch.nn.functional.max_pool2d gives [nan, 8].
    let x = [5.0, f32::NAN, 7.0, 8.0, 1.0, 2.0, 3.0, 4.0];
    let (y, _) = max_pool2d(
        &d,
        &Array::from_f32(&d, &x, &[1, 1, 2, 4]).unwrap(),
        &Pool2dSpec::square(2),
    )
    .unwrap();
    let y = y.to_f32(&d).unwrap();
    assert!(y[0].is_nan() && y[1] == 8.0, "{y:?}");
}

#[test]
fn finite_check_counts_and_locates_bad_values() {
    let d = dev();
    let mut a = vec![0.5f32; 1000];
    a[700] = f32::INFINITY;
    a[321] = f32::NAN;
    a[999] = f32::NEG_INFINITY;
    let b = vec![1.0f32; 3];
    let flags = d.upload(&CLEAR.repeat(2)).unwrap();
    for (slot, v) in [&a, &b].into_iter().enumerate() {
        let buf = d.upload(v).unwrap();
        finite_check(&d, &buf, &flags, slot).unwrap();
    }
    let got: Vec<u32> = d.download(&flags).unwrap();
    assert_eq!(got[..2], cpu(&a));
    assert_eq!(got[..2], [3, 321]);
    assert_eq!(got[2..], CLEAR);
    // A slot past the flag buffer is an error, not a stray write.
    let buf = d.upload(&b).unwrap();
    expect_err(
        finite_check(&d, &buf, &flags, 2),
        "needs 6 flag words, the buffer has 4",
    );
}
