//! Numeric comparison: one tolerance check (what `gradcheck` and every test compare with),
//! central finite differences, and the small conversions they need. The seeded generator is
//! `crate::random::Rng`.

/// Checks `|got - want| <= atol + rtol * |want|` element-wise; on failure the message names the
/// worst difference and the first mismatches.
pub fn check_close(
    what: &str,
    got: &[f32],
    want: &[f64],
    atol: f64,
    rtol: f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: length {} != reference length {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst = (0.0f64, 0usize);
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w).abs();
        let ok = d <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        if !ok || d.is_nan() {
            if bad.len() < 5 {
                bad.push(format!("[{i}] got {g} want {w}"));
            }
            if d > worst.0 || d.is_nan() {
                worst = (d, i);
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: worst |diff| {:.3e} at {} (atol {atol:e}, rtol {rtol:e}); first mismatches: {}",
            worst.0,
            worst.1,
            bad.join(", ")
        ))
    }
}

/// Panicking form of [`check_close`], for tests.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    if let Err(e) = check_close(what, got, want, atol, rtol) {
        panic!("{e}");
    }
}

/// Central finite differences of a scalar function: d f / d x_i ~ (f(x + h e_i) - f(x - h e_i)) / 2h.
pub fn finite_diff(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let fp = f(&xp);
            xp[i] = orig - h;
            let fm = f(&xp);
            xp[i] = orig;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// f32 slice to f64.
pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Sum of element-wise products (used to turn an output into a scalar for gradient checks).
pub fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x * y as f64).sum()
}
