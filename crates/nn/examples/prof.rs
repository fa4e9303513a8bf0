use kiln_ops::conv::{self, Conv2dSpec};
use kiln_ops::pool::{self, Pool2dSpec};
use kiln_ops::{elementwise, matmul, softmax, Array, Device};
fn main() {
    let d = Device::shared().unwrap();
    let b = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(64usize);
    let f = |s: &[usize]| Array::full(&d, s, 0.1).unwrap();
    let pad2 = Conv2dSpec {
        padding: (2, 2),
        ..Default::default()
    };
    let x = f(&[b, 1, 28, 28]);
    let w1 = f(&[6, 1, 5, 5]);
    let b1 = f(&[6]);
    let h1 = f(&[b, 6, 28, 28]);
    let p1 = f(&[b, 6, 14, 14]);
    let w2 = f(&[16, 6, 5, 5]);
    let h2 = f(&[b, 16, 10, 10]);
    let fc_in = f(&[b, 400]);
    let fw1 = f(&[120, 400]);
    let g120 = f(&[b, 120]);
    let mut total = 0.0;
    let mut t = |name: &str, work: &dyn Fn() -> kiln_ops::Result<()>| {
        work().unwrap();
        d.wait().unwrap();
        let s = d.time(work).unwrap().seconds;
        total += s;
        println!("{name:28} {:8.2} ms", s * 1e3);
    };
    t("conv1 fwd", &|| {
        conv::conv2d(&d, &x, &w1, Some(&b1), &pad2).map(|_| ())
    });
    t("conv1 dW", &|| {
        conv::conv2d_backward_weight(&d, &h1, &x, &[6, 1, 5, 5], &pad2).map(|_| ())
    });
    t("conv1 db", &|| {
        conv::conv2d_backward_bias(&d, &h1).map(|_| ())
    });
    t("relu1 fwd", &|| {
        elementwise::unary(&d, &h1, elementwise::Unary::Relu).map(|_| ())
    });
    t("relu1 bwd", &|| {
        elementwise::unary_backward(&d, &h1, &h1, elementwise::Unary::Relu).map(|_| ())
    });
    t("pool1 fwd", &|| {
        pool::max_pool2d(&d, &h1, &Pool2dSpec::square(2)).map(|_| ())
    });
    let (_, idx) = pool::max_pool2d(&d, &h1, &Pool2dSpec::square(2)).unwrap();
    t("pool1 bwd", &|| {
        pool::max_pool2d_backward(&d, &p1, &idx, &[b, 6, 28, 28], &Pool2dSpec::square(2))
            .map(|_| ())
    });
    t("conv2 fwd", &|| {
        conv::conv2d(&d, &p1, &w2, None, &Conv2dSpec::default()).map(|_| ())
    });
    t("conv2 dX", &|| {
        conv::conv2d_backward_input(&d, &h2, &w2, &[b, 6, 14, 14], &Conv2dSpec::default())
            .map(|_| ())
    });
    t("conv2 dW", &|| {
        conv::conv2d_backward_weight(&d, &h2, &p1, &[16, 6, 5, 5], &Conv2dSpec::default())
            .map(|_| ())
    });
    t("fc1 fwd", &|| {
        matmul::matmul(&d, &fc_in, &fw1, false, true, None).map(|_| ())
    });
    t("fc1 dX", &|| {
        matmul::matmul(&d, &g120, &fw1, false, false, None).map(|_| ())
    });
    t("fc1 dW", &|| {
        matmul::matmul(&d, &g120, &fc_in, true, false, None).map(|_| ())
    });
    let lab = Array::from_i32(&d, &vec![1; b], &[b]).unwrap();
    let lg = f(&[b, 10]);
    t("xent", &|| {
        softmax::cross_entropy(&d, &lg, &lab, None).map(|_| ())
    });
    println!("total {:.1} ms", total * 1e3);
}
