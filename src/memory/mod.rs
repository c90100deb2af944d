//! In-process stores, called synchronously on the JS thread.
//!
//! A napi `async fn` costs ~32 µs a call through tokio while a JS `Map`
//! answers in ~0.2 µs, so these stores do their work inline and the JS layer
//! wraps each result in an already-resolved Promise. State lives behind an
//! `Arc` and thread-safe maps, so stores created with the same `name` in any
//! worker thread of the process share one state, which lives until
//! [`release_memory_state`] (see [`Registry`]).

mod cache;

pub(crate) use cache::ENTRY_OVERHEAD;
mod circuit_breaker;
mod lru_map;
mod ordered_map;
mod rate_limit;
mod short_lock;

pub use cache::NativeMemoryCacheStore;
pub use circuit_breaker::NativeMemoryCircuitBreakerStore;
pub use rate_limit::NativeMemoryRateLimitStore;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::Float64ArraySlice;
use napi::Result;
use napi_derive::napi;

use crate::errors::{guard, lock, store_error};

/// Process-wide map from a store name to its shared state.
///
/// The registry holds each named state, so it lives for the life of the
/// process: a worker pool that recycles its workers keeps its counters even
/// when no store holds them for a while. It stays bounded by the limits of
/// the first store created under the name, and is forgotten only by
/// [`release_memory_state`]. An unnamed state is never registered: it goes
/// with the last store (and bound function) holding it.
pub(crate) struct Registry<T> {
  named: Mutex<BTreeMap<String, Arc<T>>>,
}

impl<T> Registry<T> {
  pub(crate) const fn new() -> Self {
    Registry {
      named: Mutex::new(BTreeMap::new()),
    }
  }

  /// Returns the state registered under `name`, or a new one from `make`.
  /// Without a name every call gets a private state.
  pub(crate) fn get_or_create(&self, name: Option<&str>, make: impl FnOnce() -> T) -> Arc<T> {
    let Some(name) = name else {
      return Arc::new(make());
    };
    let mut named = lock(&self.named);
    if let Some(state) = named.get(name) {
      return state.clone();
    }
    let state = Arc::new(make());
    named.insert(name.to_string(), state.clone());
    state
  }

  /// Forgets the state registered under `name`; answers whether there was
  /// one. Stores still holding it keep it until they go.
  pub(crate) fn release(&self, name: &str) -> bool {
    lock(&self.named).remove(name).is_some()
  }
}

/// `releaseMemoryState(name)`: forgets the rate-limit counters, circuits and
/// cache registered under `name`, so stores created under it afterwards
/// start fresh; answers whether there was any. Its memory is freed once no
/// store created before the call holds it.
#[napi]
pub fn release_memory_state(name: String) -> Result<bool> {
  guard("releaseMemoryState", || {
    // `|`, not `||`: every kind is released.
    Ok(
      rate_limit::release(&name)
        | circuit_breaker::NAMED.release(&name)
        | cache::NAMED.release(&name),
    )
  })
}

/// A store's hold on its (possibly shared) state. `destroy()` releases it
/// (a named state stays registered); using a released store is an error
/// that names the store.
pub(crate) struct Held<T> {
  store: &'static str,
  state: Option<Arc<T>>,
}

impl<T> Held<T> {
  pub(crate) fn new(store: &'static str, state: Arc<T>) -> Self {
    Held {
      store,
      state: Some(state),
    }
  }

  pub(crate) fn get(&self) -> Result<&Arc<T>> {
    self
      .state
      .as_ref()
      .ok_or_else(|| store_error(self.store, "the store was destroyed"))
  }

  pub(crate) fn release(&mut self) {
    self.state = None;
  }
}

/// Converts a bound passed from JS (validated there as a positive integer)
/// into a `usize`, treating anything out of range as "as large as possible".
pub(crate) fn bound(value: f64) -> usize {
  if value.is_finite() && value >= 1.0 {
    value.min(usize::MAX as f64) as usize
  } else {
    usize::MAX
  }
}

/// Writes `values` into the start of a JS `Float64Array` passed by the JS
/// layer, which reads results from it instead of receiving a JS object
/// (building one from Rust costs ~1 µs, more than the store operation).
pub(crate) fn write_out(out: &mut Float64ArraySlice, values: &[f64]) {
  // SAFETY: the slice borrows a typed array argument for the duration of a
  // synchronous call on the JS thread; no JS code runs and no other Rust
  // reference to it exists until the call returns.
  let out = unsafe { out.as_mut() };
  for (slot, value) in out.iter_mut().zip(values) {
    *slot = *value;
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_named_state_lives_until_released() {
    let registry = Registry::new();
    let first = registry.get_or_create(Some("pool"), || 1);
    assert!(Arc::ptr_eq(
      &first,
      &registry.get_or_create(Some("pool"), || 2)
    ));
    let weak = Arc::downgrade(&first);
    drop(first);
    let again = registry.get_or_create(Some("pool"), || 3);
    assert_eq!(*again, 1, "kept with no store holding it");

    assert!(registry.release("pool"));
    assert!(!registry.release("pool"));
    assert_eq!(*again, 1, "a holder keeps the released state");
    assert_eq!(*registry.get_or_create(Some("pool"), || 4), 4);
    drop(again);
    assert!(weak.upgrade().is_none(), "freed with its last holder");
  }

  #[test]
  fn unnamed_states_are_private_and_never_registered() {
    let registry = Registry::new();
    let state = registry.get_or_create(None, || 1);
    let weak = Arc::downgrade(&state);
    assert!(!Arc::ptr_eq(&state, &registry.get_or_create(None, || 1)));
    drop(state);
    assert!(weak.upgrade().is_none());
    assert!(lock(&registry.named).is_empty());
  }
}
