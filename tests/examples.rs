//! The seed models that run quickly, end to end on the default adapter.
use kiln::device::Device;
use kiln::nn::regression::fit_line;

#[test]
fn linear_regression_learns_slope_and_intercept() {
    let dev = Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)");
    let fit = fit_line(&dev, 256, 300, 0.1, 0).unwrap();
    assert!((fit.w - 3.0).abs() < 0.05, "{fit:?}");
    assert!((fit.b - 2.0).abs() < 0.05, "{fit:?}");
    // The noise is N(0, 0.1^2): the fitted MSE sits near 0.01.
    assert!(fit.loss < 0.02, "{fit:?}");
}
