//! In-process stores, called synchronously on the JS thread.
//!
//! A napi `async fn` costs ~32 µs a call through tokio while a JS `Map`
//! answers in ~0.2 µs, so these stores do their work inline and the JS layer
//! wraps each result in an already-resolved Promise. State lives behind an
//! `Arc` and thread-safe maps, so stores created with the same `name` in any
//! worker thread of the process share one state (see [`Registry`]).

mod cache;
mod circuit_breaker;
mod rate_limit;

pub use cache::NativeMemoryCacheStore;
pub use circuit_breaker::NativeMemoryCircuitBreakerStore;
pub use rate_limit::NativeMemoryRateLimitStore;

use std::sync::{Arc, Mutex, Weak};

use napi::bindgen_prelude::Float64ArraySlice;

use napi::Result;

use crate::errors::{lock, store_error};

/// Process-wide map from a store name to its shared state.
///
/// Entries are weak: a named state lives as long as some store (in any
/// worker) holds it, and the first store created under a name fixes its
/// bounds. A `Vec` is used because there are a handful of names at most and
/// it can be built in a `static`.
pub(crate) struct Registry<T> {
  named: Mutex<Vec<(String, Weak<T>)>>,
}

impl<T> Registry<T> {
  pub(crate) const fn new() -> Self {
    Registry {
      named: Mutex::new(Vec::new()),
    }
  }

  /// Returns the state registered under `name`, or a new one from `make`.
  /// Without a name every call gets a private state.
  pub(crate) fn get_or_create(&self, name: Option<&str>, make: impl FnOnce() -> T) -> Arc<T> {
    let Some(name) = name else {
      return Arc::new(make());
    };
    let mut named = lock(&self.named);
    named.retain(|(_, state)| state.strong_count() > 0);
    if let Some(state) = named
      .iter()
      .find(|(n, _)| n == name)
      .and_then(|(_, state)| state.upgrade())
    {
      return state;
    }
    let state = Arc::new(make());
    named.push((name.to_string(), Arc::downgrade(&state)));
    state
  }
}

/// A store's hold on its (possibly shared) state. `destroy()` releases it;
/// using a released store is an error that names the store.
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
