//! Turning Rust failures into JavaScript exceptions.
//!
//! A panic must never unwind into the JS engine (that aborts the process), so
//! every exported method runs its body inside [`guard`] (or, for `async fn`
//! methods, [`guard_async`]), which converts a panic into an ordinary JS
//! `Error` naming the store that failed.

use std::any::Any;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::task::Poll;

use napi::{Error, Result, Status};

/// Runs `body`, turning a panic into a JS error that names `store`.
///
/// `AssertUnwindSafe` is sound here because every lock the stores use is
/// either poison-free or recovered from poison (through [`lock`]), and a
/// half-applied update is at worst a single counter off.
pub fn guard<T>(store: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
  match catch_unwind(AssertUnwindSafe(body)) {
    Ok(result) => result,
    Err(payload) => Err(panic_error(store, payload)),
  }
}

/// The `async` counterpart of [`guard`]: polls `future` inside
/// `catch_unwind`, so a panic rejects the call's Promise with an error naming
/// `store` (napi-rs alone would reject with an anonymous "Panic in async
/// function"). The future is not polled again after a panic.
pub async fn guard_async<T>(store: &str, future: impl Future<Output = Result<T>>) -> Result<T> {
  let mut future = pin!(future);
  poll_fn(
    |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
      Ok(poll) => poll,
      Err(payload) => Poll::Ready(Err(panic_error(store, payload))),
    },
  )
  .await
}

fn panic_error(store: &str, payload: Box<dyn Any + Send>) -> Error {
  Error::new(Status::GenericFailure, panic_reason(store, &*payload))
}

fn panic_reason(store: &str, payload: &(dyn Any + Send)) -> String {
  let cause = payload
    .downcast_ref::<&str>()
    .map(|s| s.to_string())
    .or_else(|| payload.downcast_ref::<String>().cloned())
    .unwrap_or_else(|| "unknown panic".to_string());
  format!("{store}: internal error: {cause}")
}

/// An error about a call that can no longer be served (e.g. after `destroy()`).
pub fn store_error(store: &str, cause: impl std::fmt::Display) -> Error {
  Error::new(Status::GenericFailure, format!("{store}: {cause}"))
}

/// A call the backend did not answer: it could not be reached, the
/// connection was lost, or the call timed out (it may still have run).
/// `Status::Cancelled` carries that to the JS layer, which gives the error
/// `code: 'STORE_UNAVAILABLE'` (lib/fallback.js) before anyone sees it.
pub fn unavailable_error(store: &str, cause: impl std::fmt::Display) -> Error {
  Error::new(Status::Cancelled, format!("{store}: {cause}"))
}

/// A bad option found at construction; the JS layer throws it as a
/// `TypeError`.
pub fn option_error(store: &str, cause: impl std::fmt::Display) -> Error {
  Error::new(Status::InvalidArg, format!("{store}: {cause}"))
}

/// Locks a mutex, recovering the data if a previous holder panicked: the
/// stores keep no invariant that a panic mid-update could break badly enough
/// to justify failing every later call.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  mutex
    .lock()
    .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
  use super::*;

  // (A test binary cannot drop a `napi::Error`: that links against Node's
  // N-API symbols, which only exist inside a Node process.)
  #[test]
  fn a_panic_reads_as_an_internal_error_of_the_store() {
    let payload = catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
    assert_eq!(
      panic_reason("SomeStore", &*payload),
      "SomeStore: internal error: boom 1"
    );
    let payload = catch_unwind(|| std::panic::panic_any(7)).unwrap_err();
    assert_eq!(
      panic_reason("SomeStore", &*payload),
      "SomeStore: internal error: unknown panic"
    );
  }
}
