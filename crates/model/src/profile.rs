//! Where a forward's and a backward's time goes, by kind of op (`unetlab bench --profile`), with
//! the FLOPs of the kinds that multiply matrices.
//!
//! Off by default: a disabled [`span`] costs one atomic load. When on, each op of [`CandleOps`]
//! and each backward of unetlab's kernels adds its wall time to its kind (the CPU runs ops
//! eagerly, so wall time is the op's own). Backward passes of candle's own ops are not seen: a
//! caller reports them as the remainder of the backward's total.
//!
//! [`CandleOps`]: crate::CandleOps

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<(&'static str, Pass), Total>> = Mutex::new(BTreeMap::new());

/// Forward or backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pass {
    /// The forward pass.
    Forward,
    /// A backward pass (gradients of unetlab's kernels).
    Backward,
}

/// Time, calls and arithmetic of one kind of op in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Total {
    /// Seconds.
    pub seconds: f64,
    /// Calls.
    pub calls: u64,
    /// FLOPs (2 × multiply-adds of the products; 0 for kinds without products).
    pub flops: u64,
}

/// Starts (or stops) recording, clearing what was recorded.
pub fn enable(on: bool) {
    TOTALS.lock().expect("profile").clear();
    ENABLED.store(on, Ordering::Relaxed);
}

/// What was recorded since [`enable`], by kind and pass; clears it.
pub fn take() -> BTreeMap<(&'static str, Pass), Total> {
    std::mem::take(&mut *TOTALS.lock().expect("profile"))
}

/// A timed op: its time (and FLOPs) are added to `kind` when it is dropped.
pub struct Span {
    key: (&'static str, Pass),
    start: Instant,
    flops: u64,
}

impl Drop for Span {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        let mut totals = TOTALS.lock().expect("profile");
        let t = totals.entry(self.key).or_default();
        t.seconds += seconds;
        t.calls += 1;
        t.flops += self.flops;
    }
}

/// Times the rest of the enclosing scope as `kind` in `pass`, when recording.
pub fn span(kind: &'static str, pass: Pass) -> Option<Span> {
    span_with_flops(kind, pass, 0)
}

/// As [`span`], for an op of `flops` FLOPs (so that a report can set its rate against the
/// machine's GEMM peak).
pub fn span_with_flops(kind: &'static str, pass: Pass, flops: u64) -> Option<Span> {
    ENABLED.load(Ordering::Relaxed).then(|| Span {
        key: (kind, pass),
        start: Instant::now(),
        flops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_add_up_by_kind_only_while_enabled() {
        // A kind of its own: other tests' kernels may record while this one has recording on.
        const KIND: &str = "profile test";
        drop(span(KIND, Pass::Forward));
        enable(true);
        for _ in 0..3 {
            let _s = span(KIND, Pass::Forward);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        drop(span_with_flops(KIND, Pass::Backward, 7));
        drop(span_with_flops(KIND, Pass::Backward, 5));
        let totals = take();
        let fwd = totals[&(KIND, Pass::Forward)];
        assert_eq!((fwd.calls, fwd.flops), (3, 0));
        assert!(fwd.seconds >= 0.006, "{fwd:?}");
        let bwd = totals[&(KIND, Pass::Backward)];
        assert_eq!((bwd.calls, bwd.flops), (2, 12));
        assert!(!take().contains_key(&(KIND, Pass::Forward)));
        enable(false);
        drop(span(KIND, Pass::Forward));
        assert!(!take().contains_key(&(KIND, Pass::Forward)));
    }
}
