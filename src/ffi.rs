//! Plain C-ABI entry points for Bun's `bun:ffi` and Deno's `Deno.dlopen`.
//!
//! Node's N-API calls are cheap enough ([`crate::fastcall`], ~60 ns), but in
//! Bun and Deno one N-API call costs ~90–110 ns, more than Stoma's whole
//! `Map` operation (~10 ns) and its Promise. Both runtimes JIT-compile calls
//! to C symbols that take only numbers and pointers, so the addon exports
//! `stoma_*` functions beside its N-API classes, and in those runtimes each
//! memory store calls them through a [`Lane`]:
//!
//! - the lane holds the store's state (the same `Arc` its N-API class holds,
//!   so a named state is shared by both roads and by every worker);
//! - its memory, shared with JS as an external `ArrayBuffer`, is
//!   [`SLOTS`] `f64` result slots followed by bytes: JS writes a key's UTF-8
//!   there and passes its length, so no string crosses the call;
//! - JS passes the lane's address as a number (a pointer in Deno), and the
//!   `ArrayBuffer` owns the lane: it is freed when JS drops the buffer, which
//!   the JS store keeps for as long as it may call with the address.
//!
//! A symbol never unwinds or throws: it answers a number, or a negative code
//! ([`FAILED`], [`FAILED_TYPE`]) with the message in the lane's bytes, which
//! JS throws as an `Error` or `TypeError`. Everything unsafe about the road
//! lives here; the symbols' bodies live beside their stores.

use std::any::TypeId;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use napi::bindgen_prelude::{FromNapiValue, Object};
use napi::{sys, Env, Error, Result, Status};
use napi_derive::napi;

pub use crate::fastcall::CallError;

/// The number of `f64` result slots at the start of a lane's memory.
pub const SLOTS: usize = 8;
/// The slot a failed call writes its message's byte length into.
const MESSAGE_SLOT: usize = SLOTS - 1;

/// Answered by a call that failed with an `Error`.
pub const FAILED: f64 = -1.0;
/// Answered by a call that failed with a `TypeError`.
pub const FAILED_TYPE: f64 = -3.0;

/// A memory store's road for calls through C symbols: its state and the
/// memory it shares with JS. `repr(C)` with the type first, so that a
/// symbol handed another store's lane can tell before touching its state.
#[repr(C)]
pub struct Lane<T: 'static> {
  kind: TypeId,
  /// `SLOTS` f64 slots, then the bytes; `u64` words keep the slots aligned.
  memory: NonNull<u64>,
  words: usize,
  pub state: T,
}

impl<T: 'static> Lane<T> {
  /// The lane's byte area (after the slots) for `len` bytes from `start`,
  /// or an error naming `what` if it does not fit.
  pub fn bytes(
    &self,
    start: usize,
    len: usize,
    what: &str,
  ) -> std::result::Result<&[u8], CallError> {
    let capacity = (self.words - SLOTS) * 8;
    if start.checked_add(len).is_none_or(|end| end > capacity) {
      return Err(CallError::Type(format!(
        "{what} ({len} bytes at {start}) exceeds the lane's {capacity} bytes"
      )));
    }
    // SAFETY: in bounds (checked above) of the lane's allocation, which lives
    // as long as `self`. JS writes it only between calls, and the calls of a
    // lane come from the one JS thread of its store, so nothing writes it
    // while this borrow, which ends with the call, is held.
    Ok(unsafe {
      std::slice::from_raw_parts(self.memory.as_ptr().add(SLOTS).cast::<u8>().add(start), len)
    })
  }

  /// The UTF-8 text of `len` bytes from `start` in the byte area.
  pub fn text(&self, start: usize, len: usize, what: &str) -> std::result::Result<&str, CallError> {
    std::str::from_utf8(self.bytes(start, len, what)?)
      .map_err(|_| CallError::Type(format!("{what} is not UTF-8")))
  }

  /// The key JS wrote at the start of the byte area.
  pub fn key(&self, len: u32) -> std::result::Result<&str, CallError> {
    self.text(0, len as usize, "key")
  }

  /// Writes result slot `index` (ignored past the last).
  pub fn set(&self, index: usize, value: f64) {
    if index < SLOTS {
      // SAFETY: in bounds; the slots are written only by the lane's calls
      // and read by JS between them (see `bytes`), and no Rust reference to
      // them is ever held.
      unsafe { self.memory.as_ptr().add(index).write(value.to_bits()) };
    }
  }

  /// Writes `message` into the byte area (cut at a character boundary if
  /// it does not fit) and its length into [`MESSAGE_SLOT`].
  fn fail(&self, message: &str) {
    let capacity = (self.words - SLOTS) * 8;
    let mut len = message.len().min(capacity);
    while !message.is_char_boundary(len) {
      len -= 1;
    }
    // SAFETY: `len` bytes fit in the byte area (see `bytes` for why nothing
    // else touches it now); every borrow of it from this call has ended, as
    // the body that took them has returned.
    unsafe {
      ptr::copy_nonoverlapping(
        message.as_ptr(),
        self.memory.as_ptr().add(SLOTS).cast::<u8>(),
        len,
      )
    };
    self.set(MESSAGE_SLOT, len as f64);
  }
}

impl<T: 'static> Drop for Lane<T> {
  fn drop(&mut self) {
    // SAFETY: `memory` came from a boxed slice of `words` words in `lane`,
    // and only this drop frees it.
    drop(unsafe {
      Box::from_raw(ptr::slice_from_raw_parts_mut(
        self.memory.as_ptr(),
        self.words,
      ))
    });
  }
}

/// Creates `{ handle, memory }` for a lane over `state` with `bytes` bytes
/// after the slots: `handle` is the lane's address (a number), `memory` an
/// `ArrayBuffer` over its slots and bytes that owns it.
pub fn lane<T: Send + 'static>(env: &Env, state: T, bytes: usize) -> Result<Object<'static>> {
  let words = SLOTS + bytes.div_ceil(8);
  let memory: Box<[u64]> = vec![0u64; words].into_boxed_slice();
  let memory = NonNull::from(Box::leak(memory)).cast::<u64>();
  let lane = Box::into_raw(Box::new(Lane {
    kind: TypeId::of::<T>(),
    memory,
    words,
    state,
  }));
  let address = lane as usize;
  // A number holds every address below 2^53; refuse a lane it cannot name
  // (tagged pointers), so JS keeps the N-API road.
  if address as f64 as usize != address {
    // SAFETY: `lane` was just made by `Box::into_raw` and never shared.
    drop(unsafe { Box::from_raw(lane) });
    return Err(Error::new(
      Status::GenericFailure,
      "lane address does not fit a number",
    ));
  }
  let raw_env = env.raw();
  // SAFETY: `env` is live on this thread. The buffer views the lane's
  // memory and its finalizer frees the lane, so the memory lives exactly as
  // long as the buffer; on failure the lane is freed here instead.
  unsafe {
    let mut buffer = ptr::null_mut();
    let status = sys::napi_create_external_arraybuffer(
      raw_env,
      memory.as_ptr().cast(),
      words * 8,
      Some(release_lane::<T>),
      lane.cast(),
      &mut buffer,
    );
    if status != sys::Status::napi_ok {
      drop(Box::from_raw(lane));
      return Err(napi_failure(status));
    }
    let mut object = ptr::null_mut();
    let mut handle = ptr::null_mut();
    for status in [
      sys::napi_create_object(raw_env, &mut object),
      sys::napi_create_double(raw_env, address as f64, &mut handle),
      sys::napi_set_named_property(raw_env, object, c"handle".as_ptr(), handle),
      sys::napi_set_named_property(raw_env, object, c"memory".as_ptr(), buffer),
    ] {
      if status != sys::Status::napi_ok {
        return Err(napi_failure(status));
      }
    }
    Object::from_napi_value(raw_env, object)
  }
}

fn napi_failure(status: sys::napi_status) -> Error {
  Error::new(
    Status::GenericFailure,
    format!("N-API call failed with status {status}"),
  )
}

unsafe extern "C" fn release_lane<T: 'static>(
  _env: sys::napi_env,
  _data: *mut c_void,
  hint: *mut c_void,
) {
  // SAFETY: `hint` is the lane made by `lane`, freed only here.
  drop(unsafe { Box::from_raw(hint as *mut Lane<T>) });
}

/// Runs `body` for one call on `lane`, catching panics: answers its number,
/// or [`FAILED`] / [`FAILED_TYPE`] with the message in the lane (a lane of
/// another store answers [`FAILED_TYPE`]; a null one [`FAILED`], with no
/// message, as there is nowhere to write one).
///
/// # Safety
/// `lane` must be null or an address answered by [`lane`] whose `memory`
/// buffer JS still holds, and be called on the JS thread that holds it.
pub unsafe fn enter<T: 'static>(
  lane: *const Lane<T>,
  body: impl FnOnce(&Lane<T>) -> std::result::Result<f64, CallError>,
) -> f64 {
  if lane.is_null() {
    return FAILED;
  }
  // SAFETY: the caller's promise. A lane's first fields do not depend on
  // its type (`repr(C)`, the state last), so they are read through the raw
  // pointer before any reference to a `Lane<T>` is made.
  let (kind, memory) = unsafe { ((*lane).kind, (*lane).memory) };
  if kind != TypeId::of::<T>() {
    // SAFETY: every lane's memory starts with its slots; the message slot
    // is zeroed (no text: the byte area's size is another type's to tell).
    unsafe { memory.as_ptr().add(MESSAGE_SLOT).write(0f64.to_bits()) };
    return FAILED_TYPE;
  }
  // SAFETY: the lane is a `Lane<T>`, alive for the call (the caller's promise).
  let lane = unsafe { &*lane };
  match catch_unwind(AssertUnwindSafe(|| body(lane))) {
    Ok(Ok(value)) => value,
    Ok(Err(CallError::Type(message))) => {
      lane.fail(&message);
      FAILED_TYPE
    }
    Ok(Err(CallError::Store(message))) => {
      lane.fail(&message);
      FAILED
    }
    Err(panic) => {
      let cause = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
      lane.fail(&format!("stoma-native: internal error: {cause}"));
      FAILED
    }
  }
}

/// Bytes JS passed as a pointer and a length (a body). A length of 0 needs
/// no pointer (a runtime may pass null for an empty array).
///
/// # Safety
/// Unless `len` is 0, `data` must point to `len` readable bytes that stay
/// unchanged for the call.
pub unsafe fn passed<'a>(data: *const u8, len: f64) -> std::result::Result<&'a [u8], CallError> {
  if len == 0.0 {
    return Ok(&[]);
  }
  if data.is_null() || !(len > 0.0 && len <= isize::MAX as f64 && len.fract() == 0.0) {
    return Err(CallError::Type(format!(
      "body must be a buffer of {len} bytes"
    )));
  }
  // SAFETY: the caller's promise.
  Ok(unsafe { std::slice::from_raw_parts(data, len as usize) })
}

/// `ffiLibraryPath()`: the absolute path of the shared library this code was
/// loaded from, for Bun and Deno to open with their FFI: the same file N-API
/// loaded, hence the same copy of every static (named states included).
/// `null` where the platform cannot tell (the JS layer keeps N-API then).
#[napi(js_name = "ffiLibraryPath", skip_typescript)]
pub fn library_path() -> Option<String> {
  #[cfg(unix)]
  {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `library_path` is code in this library, and `info` is a valid
    // out-parameter; `dli_fname` is a NUL-terminated string owned by the
    // loader, copied before returning.
    let found = unsafe { libc::dladdr(library_path as *const c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
      return None;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    name.to_str().ok().map(str::to_string)
  }
  #[cfg(not(unix))]
  {
    None
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// A lane made without N-API, as `lane` makes it.
  fn test_lane<T: 'static>(state: T, bytes: usize) -> Box<Lane<T>> {
    let words = SLOTS + bytes.div_ceil(8);
    let memory = NonNull::from(Box::leak(vec![0u64; words].into_boxed_slice())).cast::<u64>();
    Box::new(Lane {
      kind: TypeId::of::<T>(),
      memory,
      words,
      state,
    })
  }

  fn message<T>(lane: &Lane<T>) -> String {
    // SAFETY: test lanes are whole; the slot and bytes were written by `fail`.
    unsafe {
      let len = f64::from_bits(*lane.memory.as_ptr().add(MESSAGE_SLOT)) as usize;
      let bytes = std::slice::from_raw_parts(lane.memory.as_ptr().add(SLOTS).cast::<u8>(), len);
      String::from_utf8(bytes.to_vec()).unwrap()
    }
  }

  fn write<T>(lane: &Lane<T>, bytes: &[u8]) {
    // SAFETY: test lanes have room for the bytes written.
    unsafe {
      ptr::copy_nonoverlapping(
        bytes.as_ptr(),
        lane.memory.as_ptr().add(SLOTS).cast::<u8>(),
        bytes.len(),
      )
    }
  }

  #[test]
  fn a_call_reads_its_key_and_answers_a_number() {
    let lane = test_lane(7u32, 16);
    write(&lane, "héllo".as_bytes());
    let answer = unsafe {
      enter(&*lane, |lane| {
        assert_eq!(lane.key(6)?, "héllo");
        Ok(f64::from(lane.state))
      })
    };
    assert_eq!(answer, 7.0);
  }

  #[test]
  fn bad_keys_and_panics_fail_with_a_message() {
    let lane = test_lane((), 64);
    assert_eq!(
      unsafe { enter(&*lane, |lane| lane.key(65).map(|_| 0.0)) },
      FAILED_TYPE
    );
    assert_eq!(
      message(&lane),
      "key (65 bytes at 0) exceeds the lane's 64 bytes"
    );
    write(&lane, &[0xff, 0xfe]);
    assert_eq!(
      unsafe { enter(&*lane, |lane| lane.key(2).map(|_| 0.0)) },
      FAILED_TYPE
    );
    assert_eq!(message(&lane), "key is not UTF-8");
    assert_eq!(unsafe { enter(&*lane, |_| panic!("boom")) }, FAILED);
    assert_eq!(message(&lane), "stoma-native: internal error: boom");
  }

  #[test]
  fn a_lane_of_another_store_or_none_is_refused() {
    let lane = test_lane(1u8, 8);
    let other = &*lane as *const Lane<u8> as *const Lane<u64>;
    assert_eq!(unsafe { enter(other, |_| Ok(1.0)) }, FAILED_TYPE);
    assert_eq!(
      unsafe { enter(ptr::null::<Lane<u8>>(), |_| Ok(1.0)) },
      FAILED
    );
  }

  #[test]
  fn messages_are_cut_at_a_character_boundary() {
    let lane = test_lane((), 8);
    lane.fail("ééééé");
    assert_eq!(message(&lane), "éééé");
  }

  #[test]
  fn passed_bytes_check_their_length() {
    assert_eq!(unsafe { passed(ptr::null(), 0.0) }.ok(), Some(&[][..]));
    assert!(unsafe { passed(ptr::null(), 4.0) }.is_err());
    assert!(unsafe { passed([1u8].as_ptr(), 0.5) }.is_err());
  }

  #[test]
  fn the_library_path_names_this_binary() {
    #[cfg(unix)]
    assert!(library_path().is_some_and(|path| path.starts_with('/')));
  }
}
