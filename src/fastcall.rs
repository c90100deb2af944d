//! Raw N-API functions for the calls made on every request.
//!
//! A napi-rs method call costs ~300 ns here (argument conversion, instance
//! unwrapping and type-tag checks, borrow bookkeeping), more than the whole
//! JS `Map` operation Stoma's memory store performs. A raw N-API function
//! costs ~60 ns. So each memory store hands the JS layer one [`bound_call`]:
//! a plain JS function bound to the store's state (no `this` to unwrap) plus
//! a `Float64Array` of result slots it writes into (no JS object to build).
//!
//! Everything unsafe about that lives in this module: the callback data
//! pointer, the external ArrayBuffer, argument reading and exception throwing
//! — and the Buffer copies that cache hits cross into JS as ([`buffer_copy`]).

use std::ffi::{c_void, CStr};
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::{FromNapiValue, Object};
use napi::{sys, Env, Error, Result, Status};

/// Result slots shared with JS as a `Float64Array`. Atomics make the type
/// `Sync` at no cost: a relaxed store is a plain move, and `AtomicU64` has the
/// layout of the `f64` bits JS reads.
pub struct Slots(Box<[AtomicU64]>);

impl Slots {
  pub fn set(&self, index: usize, value: f64) {
    if let Some(slot) = self.0.get(index) {
      slot.store(value.to_bits(), Ordering::Relaxed);
    }
  }
}

/// What a bound function's callback receives: the store state and its slots.
pub struct Bound<T> {
  pub state: Arc<T>,
  pub out: Arc<Slots>,
}

/// Why a call failed; thrown into JS as the matching error class.
#[derive(Debug)]
pub enum CallError {
  Type(String),
  Store(String),
}

/// The signature of a bound function's body: the state, the result slots and
/// the raw arguments, answering a JS value.
pub type Body<T> = fn(&Bound<T>, &Args) -> std::result::Result<Answer, CallError>;

/// What a bound function returns to JS.
pub enum Answer {
  Number(f64),
  Undefined,
}

/// The arguments of one call, read on demand.
pub struct Args {
  env: sys::napi_env,
  values: [sys::napi_value; 3],
  count: usize,
}

/// Keys up to this many UTF-8 bytes are read without a heap allocation.
const INLINE_KEY: usize = 256;

impl Args {
  fn value(&self, index: usize) -> Option<sys::napi_value> {
    (index < self.count).then(|| self.values[index])
  }

  /// Reads argument `index` as a number.
  pub fn number(&self, index: usize, name: &str) -> std::result::Result<f64, CallError> {
    let mut value = 0f64;
    let status = match self.value(index) {
      Some(v) => unsafe { sys::napi_get_value_double(self.env, v, &mut value) },
      None => sys::Status::napi_number_expected,
    };
    if status != sys::Status::napi_ok {
      return Err(CallError::Type(format!("{name} must be a number")));
    }
    Ok(value)
  }

  /// Reads argument `index` as a string and passes it to `f` as `&str`.
  ///
  /// The string is fetched as UTF-16 (a straight copy out of V8, much
  /// cheaper than V8's UTF-8 writer) and transcoded here, on the stack for
  /// short strings. Lone surrogates become U+FFFD, as with N-API's UTF-8.
  pub fn with_str<R>(
    &self,
    index: usize,
    name: &str,
    f: impl FnOnce(&str) -> R,
  ) -> std::result::Result<R, CallError> {
    let not_a_string = || CallError::Type(format!("{name} must be a string"));
    let value = self.value(index).ok_or_else(not_a_string)?;
    // Uninitialised: zeroing 768 bytes of stack costs more than the copy.
    let mut units = [MaybeUninit::<u16>::uninit(); INLINE_KEY];
    let mut len = 0usize;
    let status = unsafe {
      sys::napi_get_value_string_utf16(
        self.env,
        value,
        units.as_mut_ptr().cast(),
        INLINE_KEY,
        &mut len,
      )
    };
    if status != sys::Status::napi_ok {
      return Err(not_a_string());
    }
    // N-API leaves room for a NUL, so a full buffer may be truncated.
    if len < INLINE_KEY - 1 {
      // SAFETY: N-API initialised the first `len` units.
      let units = unsafe { std::slice::from_raw_parts(units.as_ptr().cast::<u16>(), len) };
      if units.iter().all(|&u| u < 0x80) {
        let mut ascii = [MaybeUninit::<u8>::uninit(); INLINE_KEY];
        for (byte, &unit) in ascii.iter_mut().zip(units) {
          byte.write(unit as u8);
        }
        // SAFETY: the first `len` bytes were just written, all ASCII, hence UTF-8.
        let key = unsafe {
          std::str::from_utf8_unchecked(std::slice::from_raw_parts(
            ascii.as_ptr().cast::<u8>(),
            len,
          ))
        };
        return Ok(f(key));
      }
      return Ok(f(&String::from_utf16_lossy(units)));
    }
    let mut total = 0usize;
    unsafe { sys::napi_get_value_string_utf16(self.env, value, ptr::null_mut(), 0, &mut total) };
    let mut heap = vec![0u16; total + 1];
    unsafe {
      sys::napi_get_value_string_utf16(self.env, value, heap.as_mut_ptr(), total + 1, &mut len)
    };
    Ok(f(&String::from_utf16_lossy(&heap[..len])))
  }
}

/// Creates `{ call, out }`: `call` is a JS function named `name` that runs
/// `body` against `state`, and `out` a `Float64Array` of `slots` results.
pub fn bound_call<T: Send + Sync + 'static>(
  env: &Env,
  name: &'static CStr,
  state: Arc<T>,
  slots: usize,
  body: Body<T>,
) -> Result<Object<'static>> {
  let out = Arc::new(Slots((0..slots).map(|_| AtomicU64::new(0)).collect()));
  let raw_env = env.raw();
  unsafe {
    // The typed array views memory owned by `out`; the ArrayBuffer's
    // finalizer holds one reference to it, the function's data another.
    let out_ptr = out.0.as_ptr() as *mut c_void;
    let hint = Arc::into_raw(out.clone()) as *mut c_void;
    let mut buffer = ptr::null_mut();
    check(sys::napi_create_external_arraybuffer(
      raw_env,
      out_ptr,
      slots * 8,
      Some(release::<Slots>),
      hint,
      &mut buffer,
    ))
    .inspect_err(|_| drop(Arc::from_raw(hint as *const Slots)))?;
    let mut typed = ptr::null_mut();
    check(sys::napi_create_typedarray(
      raw_env,
      sys::TypedarrayType::float64_array,
      slots,
      buffer,
      0,
      &mut typed,
    ))?;

    let data = Box::into_raw(Box::new((Bound { state, out }, body))) as *mut c_void;
    let mut function = ptr::null_mut();
    let created = check(sys::napi_create_function(
      raw_env,
      name.as_ptr(),
      name.count_bytes() as isize,
      Some(trampoline::<T>),
      data,
      &mut function,
    ))
    .and_then(|_| {
      check(sys::napi_add_finalizer(
        raw_env,
        function,
        data,
        Some(release_boxed::<(Bound<T>, Body<T>)>),
        ptr::null_mut(),
        ptr::null_mut(),
      ))
    });
    if let Err(e) = created {
      drop(Box::from_raw(data as *mut (Bound<T>, Body<T>)));
      return Err(e);
    }

    let mut object = ptr::null_mut();
    check(sys::napi_create_object(raw_env, &mut object))?;
    check(sys::napi_set_named_property(
      raw_env,
      object,
      c"call".as_ptr(),
      function,
    ))?;
    check(sys::napi_set_named_property(
      raw_env,
      object,
      c"out".as_ptr(),
      typed,
    ))?;
    Object::from_napi_value(raw_env, object)
  }
}

fn check(status: sys::napi_status) -> Result<()> {
  if status == sys::Status::napi_ok {
    Ok(())
  } else {
    Err(Error::new(
      Status::GenericFailure,
      format!("N-API call failed with status {status}"),
    ))
  }
}

unsafe extern "C" fn release<T>(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
  drop(unsafe { Arc::from_raw(hint as *const T) });
}

unsafe extern "C" fn release_boxed<T>(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
  drop(unsafe { Box::from_raw(data as *mut T) });
}

/// The C entry point of every bound function: reads the arguments, runs the
/// body with panics caught, and turns its answer or error into JS.
unsafe extern "C" fn trampoline<T>(
  env: sys::napi_env,
  info: sys::napi_callback_info,
) -> sys::napi_value {
  let mut args = Args {
    env,
    values: [ptr::null_mut(); 3],
    count: 3,
  };
  let mut data = ptr::null_mut();
  let status = unsafe {
    sys::napi_get_cb_info(
      env,
      info,
      &mut args.count,
      args.values.as_mut_ptr(),
      ptr::null_mut(),
      &mut data,
    )
  };
  if status != sys::Status::napi_ok || data.is_null() {
    throw(env, CallError::Store("stoma-native: bad call".into()));
    return ptr::null_mut();
  }
  args.count = args.count.min(3);
  // SAFETY: `data` is the Box made in `bound_call`, freed only by the
  // function's finalizer, which cannot run while the function is executing.
  let (bound, body) = unsafe { &*(data as *const (Bound<T>, Body<T>)) };
  let outcome = catch_unwind(AssertUnwindSafe(|| body(bound, &args))).unwrap_or_else(|panic| {
    let cause = panic
      .downcast_ref::<&str>()
      .map(|s| s.to_string())
      .or_else(|| panic.downcast_ref::<String>().cloned())
      .unwrap_or_else(|| "unknown panic".into());
    Err(CallError::Store(format!(
      "stoma-native: internal error: {cause}"
    )))
  });
  let mut result = ptr::null_mut();
  match outcome {
    Ok(Answer::Number(n)) => unsafe { sys::napi_create_double(env, n, &mut result) },
    Ok(Answer::Undefined) => unsafe { sys::napi_get_undefined(env, &mut result) },
    Err(error) => {
      throw(env, error);
      return ptr::null_mut();
    }
  };
  result
}

fn throw(env: sys::napi_env, error: CallError) {
  let (message, is_type) = match error {
    CallError::Type(m) => (m, true),
    CallError::Store(m) => (m, false),
  };
  let message = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
  unsafe {
    if is_type {
      sys::napi_throw_type_error(env, ptr::null(), message.as_ptr());
    } else {
      sys::napi_throw_error(env, ptr::null(), message.as_ptr());
    }
  }
}

/// A Node Buffer holding a copy of `bytes`, in memory V8 owns. Not a `Vec`
/// lent as an external buffer: that is freed only when V8 finalizes the
/// Buffer, and such blocks, freed in bursts at each GC, come back from
/// malloc as fresh pages the kernel must zero — costing more than the copy
/// (see the memory cache's `get`).
///
/// # Safety
/// `env` must be the live env of the calling JS thread.
pub unsafe fn buffer_copy(env: sys::napi_env, bytes: &[u8]) -> Result<sys::napi_value> {
  let mut data = ptr::null_mut();
  let mut buffer = ptr::null_mut();
  // SAFETY: `env` is live (the caller's promise); `bytes` is readable for
  // its length, and napi copies it before returning.
  check(unsafe {
    sys::napi_create_buffer_copy(
      env,
      bytes.len(),
      bytes.as_ptr().cast(),
      &mut data,
      &mut buffer,
    )
  })?;
  Ok(buffer)
}

/// Bytes that cross into JS as a Buffer holding a copy (see [`buffer_copy`]),
/// for values napi-rs converts, such as fields of returned objects.
pub struct CopiedBuffer(pub Vec<u8>);

impl napi::bindgen_prelude::TypeName for CopiedBuffer {
  fn type_name() -> &'static str {
    "Buffer"
  }

  fn value_type() -> napi::ValueType {
    napi::ValueType::Object
  }
}

impl napi::bindgen_prelude::ToNapiValue for CopiedBuffer {
  unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> Result<sys::napi_value> {
    // SAFETY: napi-rs calls `to_napi_value` on the JS thread with its env.
    unsafe { buffer_copy(env, &value.0) }
  }
}
