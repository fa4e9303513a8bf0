//! The LSTM and GRU cells against the CPU and finite differences.

use crate::common::{arr, dev};
use kiln_ops::numeric::{assert_close, finite_diff, to_f64};
use kiln_ops::random::Rng;
use kiln_ops::OpError;

#[test]
fn recurrent_cells_match_the_cpu_and_finite_differences() {
    let d = dev();
    let mut r = Rng::new(31);
    for (rows, units) in [(3, 5), (1, 1), (2, 67)] {
        let xg = r.vec(rows * 4 * units, -2.0, 2.0);
        let hg = r.vec(rows * 4 * units, -2.0, 2.0);
        let cp = r.vec(rows * units, -1.5, 1.5);
        let (xa, ha, ca) = (
            arr(&d, &xg, &[rows, 4 * units]),
            arr(&d, &hg, &[rows, 4 * units]),
            arr(&d, &cp, &[rows, units]),
        );
        let pre: Vec<f64> = xg.iter().zip(&hg).map(|(a, b)| (a + b) as f64).collect();
        let hc = kiln_ops::rnn::lstm_cell(&d, &xa, &ha, &ca).unwrap();
        assert_eq!(hc.shape, [rows, 2 * units]);
        let want = kiln_ops::rnn::cpu::lstm_cell(&pre, &to_f64(&cp), units);
        let what = format!("lstm_cell {rows}x{units}");
        assert_close(&what, &hc.to_f32(&d).unwrap(), &want, 1e-6, 1e-5);
        // The gradient of sum(w * hc) against finite differences of the CPU cell.
        let w = r.vec(rows * 2 * units, -1.0, 1.0);
        let (dpre, dcp) =
            kiln_ops::rnn::lstm_cell_backward(&d, &xa, &ha, &ca, &arr(&d, &w, &[rows, 2 * units]))
                .unwrap();
        let loss = |pre: &[f64], cp: &[f64]| {
            let hc = kiln_ops::rnn::cpu::lstm_cell(pre, cp, units);
            hc.iter().zip(&w).map(|(a, b)| a * *b as f64).sum::<f64>()
        };
        let cp64 = to_f64(&cp);
        let fd_pre = finite_diff(|v| loss(v, &cp64), &pre, 1e-5);
        let fd_c = finite_diff(|v| loss(&pre, v), &cp64, 1e-5);
        assert_close(
            &format!("{what} d(pre)"),
            &dpre.to_f32(&d).unwrap(),
            &fd_pre,
            1e-4,
            1e-3,
        );
        assert_close(
            &format!("{what} d(c_prev)"),
            &dcp.to_f32(&d).unwrap(),
            &fd_c,
            1e-4,
            1e-3,
        );
    }
    for (rows, units) in [(3, 5), (1, 1), (2, 67)] {
        let xg = r.vec(rows * 3 * units, -2.0, 2.0);
        let hg = r.vec(rows * 3 * units, -2.0, 2.0);
        let hp = r.vec(rows * units, -1.0, 1.0);
        let (xa, ha, pa) = (
            arr(&d, &xg, &[rows, 3 * units]),
            arr(&d, &hg, &[rows, 3 * units]),
            arr(&d, &hp, &[rows, units]),
        );
        let (x64, g64, p64) = (to_f64(&xg), to_f64(&hg), to_f64(&hp));
        let h = kiln_ops::rnn::gru_cell(&d, &xa, &ha, &pa).unwrap();
        let want = kiln_ops::rnn::cpu::gru_cell(&x64, &g64, &p64, units);
        let what = format!("gru_cell {rows}x{units}");
        assert_close(&what, &h.to_f32(&d).unwrap(), &want, 1e-6, 1e-5);
        let w = r.vec(rows * units, -1.0, 1.0);
        let (dx, dg, dp) =
            kiln_ops::rnn::gru_cell_backward(&d, &xa, &ha, &pa, &arr(&d, &w, &[rows, units]))
                .unwrap();
        let loss = |x: &[f64], g: &[f64], p: &[f64]| {
            let h = kiln_ops::rnn::cpu::gru_cell(x, g, p, units);
            h.iter().zip(&w).map(|(a, b)| a * *b as f64).sum::<f64>()
        };
        let fds = [
            finite_diff(|v| loss(v, &g64, &p64), &x64, 1e-5),
            finite_diff(|v| loss(&x64, v, &p64), &g64, 1e-5),
            finite_diff(|v| loss(&x64, &g64, v), &p64, 1e-5),
        ];
        for ((name, got), fd) in [("xg", dx), ("hg", dg), ("h_prev", dp)]
            .into_iter()
            .zip(&fds)
        {
            let got = got.to_f32(&d).unwrap();
            assert_close(&format!("{what} d({name})"), &got, fd, 1e-4, 1e-3);
        }
    }
    let a = arr(&d, &[0.0; 8], &[1, 8]);
    let c = arr(&d, &[0.0; 3], &[1, 3]);
    let e = kiln_ops::rnn::gru_cell(&d, &a, &a, &c).unwrap_err();
    assert!(
        matches!(e, OpError::Shape { .. }) && e.to_string().contains("[1, 9]"),
        "{e}"
    );
    let e = kiln_ops::rnn::lstm_cell(&d, &a, &a, &c).unwrap_err();
    assert!(
        matches!(e, OpError::Shape { .. }) && e.to_string().contains("[1, 12]"),
        "{e}"
    );
}
