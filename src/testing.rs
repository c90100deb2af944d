//! Hidden hooks that panic on purpose, so the tests can prove that no panic
//! crosses the FFI boundary on any of the paths the stores use:
//!
//! - `__forcePanicSync`     — a napi-rs method body under [`guard`];
//! - `__forcePanicAsync`    — a napi-rs `async fn` under [`guard_async`],
//!   panicking after it has been suspended once (on a tokio worker);
//! - `__forcePanicSpawned`  — a future handed to `Env::spawn_future` (the
//!   `PromiseRaw` path PostgreSQL's `cachePut` uses) under [`guard_async`];
//! - `__forcePanicFastcall` — a raw N-API function made by [`bound_call`]
//!   (the per-request path of every memory store);
//! - `stoma_test_panic`     — a C-ABI symbol called through a lane from
//!   `__testLane` (the per-request path in Bun and Deno, see [`crate::ffi`]).
//!
//! `__setTestClock(ms | null)` freezes the time every native store reads
//! (see [`crate::clock::freeze`]), so the sliding-window tests can place
//! calls at exact instants.
//!
//! They are not part of the public API (`index.js` does not export them) and
//! refuse to run unless the environment has `STOMA_NATIVE_TEST_HOOKS=1`, so
//! production code cannot trip them by accident.

use std::sync::Arc;

use napi::bindgen_prelude::{Object, PromiseRaw};
use napi::{Env, Result};
use napi_derive::napi;

use crate::errors::{guard, guard_async, store_error};
use crate::fastcall::{bound_call, CallError};
use crate::ffi::{self, Lane};

const HOOK: &str = "stoma-native test hook";

fn enabled() -> Result<()> {
  if std::env::var_os("STOMA_NATIVE_TEST_HOOKS").is_some_and(|v| v == "1") {
    Ok(())
  } else {
    Err(store_error(
      HOOK,
      "disabled (set STOMA_NATIVE_TEST_HOOKS=1 to run it)",
    ))
  }
}

/// Panics inside a synchronous napi-rs method guarded like every store method.
#[napi(js_name = "__forcePanicSync", skip_typescript)]
pub fn force_panic_sync(message: String) -> Result<()> {
  guard(HOOK, || {
    enabled()?;
    std::panic::panic_any(message)
  })
}

/// Panics on a tokio worker inside an `async fn` guarded like the Redis and
/// PostgreSQL stores' methods.
#[napi(js_name = "__forcePanicAsync", skip_typescript)]
pub async fn force_panic_async(message: String) -> Result<()> {
  guard_async(HOOK, async move {
    enabled()?;
    tokio::task::yield_now().await;
    std::panic::panic_any(message)
  })
  .await
}

/// Panics inside a future spawned with `Env::spawn_future`.
#[napi(js_name = "__forcePanicSpawned", skip_typescript)]
pub fn force_panic_spawned<'env>(env: &'env Env, message: String) -> Result<PromiseRaw<'env, ()>> {
  enabled()?;
  env.spawn_future(guard_async(HOOK, async move {
    tokio::task::yield_now().await;
    std::panic::panic_any(message)
  }))
}

/// Returns `{ call, out }` like the memory stores' bound calls; `call(message)`
/// panics with `message` inside the raw N-API trampoline.
#[napi(js_name = "__forcePanicFastcall", skip_typescript)]
pub fn force_panic_fastcall(env: &Env) -> Result<Object<'static>> {
  enabled()?;
  bound_call(env, c"forcePanic", Arc::new(()), 1, |_, args| {
    let message = args.with_str(0, "message", str::to_string)?;
    if message.is_empty() {
      return Err(CallError::Store("empty message".into()));
    }
    std::panic::panic_any(message)
  })
}

/// Returns `{ handle, memory }`, a lane of `bytes` bytes over nothing, for
/// `stoma_test_panic`. Made even when the hooks are disabled, so that the
/// symbol's refusal can be seen too.
#[napi(js_name = "__testLane", skip_typescript)]
pub fn test_lane(env: &Env, bytes: u32) -> Result<Object<'static>> {
  ffi::lane(env, (), bytes as usize)
}

/// `stoma_test_panic(lane, messageLength)`: panics with the message JS wrote
/// into the lane (an empty one fails with an ordinary error instead).
///
/// # Safety
/// `lane` must be a lane from `__testLane` that JS still holds, called on the
/// thread that holds it (see [`ffi::enter`]).
#[no_mangle]
pub unsafe extern "C" fn stoma_test_panic(lane: *const Lane<()>, len: u32) -> f64 {
  // SAFETY: the caller's promise.
  unsafe {
    ffi::enter(lane, |lane| {
      enabled().map_err(|e| CallError::Store(e.reason.clone()))?;
      let message = lane.key(len)?;
      if message.is_empty() {
        return Err(CallError::Store("empty message".into()));
      }
      std::panic::panic_any(message.to_string())
    })
  }
}

/// Panics inside an `async fn` with no guard of ours, to show what napi-rs
/// itself does if a method ever forgets [`guard_async`] (run only in a child
/// process by the tests).
#[napi(js_name = "__forcePanicAsyncUnguarded", skip_typescript)]
pub async fn force_panic_async_unguarded(message: String) -> Result<()> {
  enabled()?;
  tokio::task::yield_now().await;
  std::panic::panic_any(message)
}

/// Freezes the stores' clock at `ms` (epoch milliseconds), or lets it run
/// again with `null`.
#[napi(js_name = "__setTestClock", skip_typescript)]
pub fn set_test_clock(ms: Option<f64>) -> Result<()> {
  enabled()?;
  crate::clock::freeze(ms.map(|ms| ms as i64));
  Ok(())
}
