//! Turning Rust failures into JavaScript exceptions.
//!
//! A panic must never unwind into the JS engine (that aborts the process), so
//! every exported method runs its body inside [`guard`], which converts a
//! panic into an ordinary JS `Error` naming the store that failed.

use std::panic::{catch_unwind, AssertUnwindSafe};

use napi::{Error, Result, Status};

/// Runs `body`, turning a panic into a JS error that names `store`.
///
/// `AssertUnwindSafe` is sound here because every lock the stores use
/// (dashmap shards, [`lock`]) is either poison-free or recovered from poison,
/// and a half-applied update is at worst a single counter off.
pub fn guard<T>(store: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
  match catch_unwind(AssertUnwindSafe(body)) {
    Ok(result) => result,
    Err(payload) => {
      let cause = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
      Err(Error::new(
        Status::GenericFailure,
        format!("{store}: internal error: {cause}"),
      ))
    }
  }
}

/// An error about a call that can no longer be served (e.g. after `destroy()`).
pub fn store_error(store: &str, cause: impl std::fmt::Display) -> Error {
  Error::new(Status::GenericFailure, format!("{store}: {cause}"))
}

/// Locks a mutex, recovering the data if a previous holder panicked: the
/// stores keep no invariant that a panic mid-update could break badly enough
/// to justify failing every later call.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
