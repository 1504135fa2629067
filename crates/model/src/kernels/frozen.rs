//! Parameters declared unchanging for a while (inference), so that kernels may keep what they
//! derive from them between calls instead of deriving it on every call, as inference runtimes
//! prepare their weights once per session. Today: the Winograd forward's transformed weights.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{Result, Storage, Tensor};

/// While one is alive, kernels keep values derived from the weights they see; dropping the last
/// one forgets them. Whoever creates one promises that no weight is changed in place while it
/// lives (an optimizer step would make the kept values stale): create it around inference only,
/// e.g. around a benchmark's forwards or a sampler's steps, never around training steps.
#[must_use = "weights are frozen only while the value lives"]
pub struct FrozenWeights(());

impl FrozenWeights {
    /// Declares the weights frozen until the value is dropped (scopes nest).
    pub fn new() -> FrozenWeights {
        state().scopes += 1;
        FrozenWeights(())
    }
}

impl Default for FrozenWeights {
    fn default() -> Self {
        FrozenWeights::new()
    }
}

impl Drop for FrozenWeights {
    fn drop(&mut self) {
        let mut state = state();
        state.scopes -= 1;
        if state.scopes == 0 {
            state.derived.clear();
            state.bytes = 0;
        }
    }
}

/// Most bytes of derived values kept at once; past it, kernels take their unfrozen path again
/// (SD 1.5's transformed 3×3 weights take about 1.7 GB).
const MAX_BYTES: usize = 6 << 30;

/// One weight tensor, as its storage's address, its offset in it and its shape, plus what was
/// derived from it: detached copies of a parameter (one per forward) share the key.
type Key = (usize, usize, Vec<usize>, &'static str);

struct State {
    scopes: usize,
    bytes: usize,
    /// Each value with the weight it came from, held so that its storage (whose address is the
    /// key) cannot be freed and reused by another tensor while the value is kept.
    derived: BTreeMap<Key, (Tensor, Arc<Vec<f32>>)>,
}

static STATE: Mutex<State> = Mutex::new(State {
    scopes: 0,
    bytes: 0,
    derived: BTreeMap::new(),
});

fn state() -> MutexGuard<'static, State> {
    // A panic elsewhere while the lock was held leaves the map consistent.
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether some [`FrozenWeights`] is alive.
pub(super) fn active() -> bool {
    state().scopes > 0
}

/// `derive()` of weight `w` for `kind`, kept while the weights are frozen: from an earlier call,
/// or computed now and kept; `None` when they are not frozen, or when keeping it would pass
/// [`MAX_BYTES`] (the caller then takes its path for unfrozen weights).
pub(super) fn derived(
    w: &Tensor,
    kind: &'static str,
    derive: impl FnOnce() -> Result<Vec<f32>>,
) -> Result<Option<Arc<Vec<f32>>>> {
    if !active() {
        return Ok(None);
    }
    let key = {
        let (storage, layout) = w.storage_and_layout();
        let address = std::ptr::from_ref::<Storage>(&storage).addr();
        (address, layout.start_offset(), w.dims().to_vec(), kind)
    };
    if let Some((_, value)) = state().derived.get(&key) {
        return Ok(Some(value.clone()));
    }
    // Derived outside the lock: `derive` may run parallel tasks that call kernels themselves.
    let value = Arc::new(derive()?);
    let mut state = state();
    let bytes = 4 * value.len();
    if state.scopes == 0 || state.bytes + bytes > MAX_BYTES {
        return Ok(None);
    }
    state.bytes += bytes;
    state.derived.insert(key, (w.clone(), value.clone()));
    Ok(Some(value))
}

/// Held by every test that freezes weights: scopes are process-wide, and a test that checks
/// what happens outside one would see another test's.
#[cfg(test)]
pub(super) static SCOPED_TESTS: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values are kept per weight while a scope lives (detached copies share them), and
    /// forgotten when the last scope ends.
    #[test]
    fn keeps_values_while_frozen() {
        let _alone = SCOPED_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let var = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let other = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let calls = std::cell::Cell::new(0);
        let derive = || {
            calls.set(calls.get() + 1);
            Ok(vec![calls.get() as f32])
        };
        assert!(derived(var.as_tensor(), "test", derive).unwrap().is_none());
        {
            let _outer = FrozenWeights::new();
            let first = derived(&var.as_tensor().detach(), "test", derive).unwrap();
            {
                let _inner = FrozenWeights::new();
                let again = derived(&var.as_tensor().detach(), "test", derive).unwrap();
                assert_eq!(first, again);
            }
            let after_inner = derived(var.as_tensor(), "test", derive).unwrap();
            assert_eq!(first, after_inner, "the outer scope still keeps it");
            let elsewhere = derived(&other, "test", derive).unwrap();
            assert_ne!(first, elsewhere, "another tensor's storage is another key");
            let other_kind = derived(var.as_tensor(), "other", derive).unwrap();
            assert_ne!(first, other_kind);
        }
        assert_eq!(calls.get(), 3);
        let _scope = FrozenWeights::new();
        let fresh = derived(var.as_tensor(), "test", derive).unwrap();
        assert_eq!(
            fresh.as_deref(),
            Some(&vec![4f32]),
            "forgotten after the last scope"
        );
    }
}
