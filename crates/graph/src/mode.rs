//! Thread-local modes that change how ops are recorded: grad mode (`no_grad`) and mixed
//! precision (`autocast_f16`).

use std::cell::Cell;
use std::thread::LocalKey;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    static AUTOCAST_F16: Cell<bool> = const { Cell::new(false) };
}

/// Sets a mode for the duration of `f`, restoring the previous value afterwards (also when `f`
/// unwinds).
fn with_mode<T>(key: &'static LocalKey<Cell<bool>>, on: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(&'static LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(key, key.with(|c| c.replace(on)));
    f()
}

/// Runs `f` with matmuls (and so Linear layers and attention projections) in mixed precision, as
/// `torch.autocast(dtype=torch.float16)`: f32 operands are cast to f16, products are summed in f32
/// and results stay f32; the parameters themselves stay f32 (master weights), and their
/// gradients arrive in f32. The f16 products run on cooperative matrices where the adapter has
/// them and are widened to f32 elsewhere, so forward values are the same on every adapter;
/// backward, only cooperative matrices round the output gradients to f16 (after a power-of-two
/// scaling, see `kiln_ops::matmul::matmul_backward`).
pub fn autocast_f16<T>(f: impl FnOnce() -> T) -> T {
    with_mode(&AUTOCAST_F16, true, f)
}

/// [`autocast_f16`] where `enabled`, else `f` as it stands (`torch.autocast(enabled=...)`).
pub fn autocast_f16_when<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if enabled {
        autocast_f16(f)
    } else {
        f()
    }
}

/// Whether matmuls on this thread run in mixed precision ([`autocast_f16`]).
pub fn is_autocast_f16() -> bool {
    AUTOCAST_F16.with(|a| a.get())
}

/// Runs `f` without recording gradients (evaluation, inference), as `torch.no_grad()`.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    with_mode(&GRAD_ENABLED, false, f)
}

/// Runs `f` recording gradients even inside [`no_grad`], as `torch.enable_grad()` (activation
/// checkpointing recomputes a forward pass this way during backward).
pub fn enable_grad<T>(f: impl FnOnce() -> T) -> T {
    with_mode(&GRAD_ENABLED, true, f)
}

/// Whether ops record gradients on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}
