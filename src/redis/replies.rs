//! How answers travel from the connection back to the JS layer.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{Function, ToNapiValue, Unknown};
use napi::threadsafe_function::{
  ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi::{check_status, sys, Env, Result, Status};

use crate::errors::{guard_async, lock};
use crate::fastcall::buffer_copy;

use super::CACHE_STORE;

/// A cached response: status, headers joined as `name\0value\0…`, body.
pub type Cached = (u16, String, Vec<u8>);

/// The answer to one call, on its way back to JS.
pub enum Reply {
  /// A rate-limit hit: `count, resetAt`.
  Hit {
    count: f64,
    reset_at: f64,
  },
  /// A circuit snapshot: the state's code (see
  /// [`crate::circuit::CircuitState::code`]), then
  /// `failureCount, successCount, lastFailureTime, lastStateChange`.
  Snapshot {
    state: u8,
    numbers: [f64; 4],
  },
  /// A cache answer: a hit's status, joined headers and body (shared with
  /// a near cache's copy), or a miss.
  Cached(Option<Arc<Cached>>),
  Removed(bool),
  Done,
  /// The error message, naming the store and the cause: the server
  /// answered an error, or the store failed inside.
  Failed(String),
  /// The same, for a call the server did not answer: it could not be sent,
  /// its connection was lost, or its deadline passed. Such a call may
  /// still have run.
  Unavailable(String),
  /// An answer still to be computed, away from the I/O thread.
  Later(Box<dyn FnOnce() -> Reply + Send>),
  /// The answers of calls merged into one (see `job::coalesce`).
  Many(Vec<(f64, Reply)>),
  /// Not an answer: news for the JS layer (the primary moved in a
  /// failover), sent under id 0, which no call has.
  Event(String),
}

/// A batch of answers as the JS layer receives it: an array whose first
/// element is a `Float64Array` of every number of the batch, followed by
/// the answers' other values (strings, buffers) in order.
///
/// In the numbers, each answer is its call id followed by its values —
/// `count, resetAt` for a hit; `stateCode, failureCount, successCount,
/// lastFailureTime, lastStateChange` for a snapshot; `status` for a cache
/// hit (its headers and body are the next two other values) and `0` for a
/// miss; `1`/`0` for a removal; `0` for the rest; an event is id `0`, its
/// message the next other value. A failed call has `-id`
/// then `1` if the server did not answer it ([`Reply::Unavailable`]), `0`
/// otherwise, and its error message is the next other value. The JS side knows each
/// call's kind and builds the objects itself: V8 makes an object literal
/// far faster than N-API can assemble one property by property, and one
/// typed array costs a copy where setting each number as an element cost
/// two N-API calls and a property lookup (a tenth of the JS thread's time
/// at 64 calls in flight, in perf).
pub struct Batch(pub Vec<(f64, Reply)>);

impl ToNapiValue for Batch {
  unsafe fn to_napi_value(env: sys::napi_env, batch: Self) -> Result<sys::napi_value> {
    let mut numbers: Vec<f64> = Vec::with_capacity(batch.0.len() * 3);
    let mut others: Vec<sys::napi_value> = Vec::new();
    for (id, reply) in batch.0 {
      if let Reply::Failed(message) | Reply::Unavailable(message) = &reply {
        numbers.extend([
          -id,
          f64::from(u8::from(matches!(reply, Reply::Unavailable(_)))),
        ]);
        others.push(unsafe { <&str>::to_napi_value(env, message)? });
        continue;
      }
      numbers.push(id);
      match reply {
        Reply::Hit { count, reset_at } => numbers.extend([count, reset_at]),
        Reply::Snapshot {
          state,
          numbers: values,
        } => {
          numbers.push(f64::from(state));
          numbers.extend(values);
        }
        Reply::Cached(None) => numbers.push(0.0),
        Reply::Cached(Some(hit)) => {
          let (status, headers, body) = &*hit;
          numbers.push(f64::from(*status));
          others.push(unsafe { <&str>::to_napi_value(env, headers)? });
          // SAFETY: `to_napi_value` runs on the JS thread with its env.
          others.push(unsafe { buffer_copy(env, body)? });
        }
        Reply::Removed(removed) => numbers.push(if removed { 1.0 } else { 0.0 }),
        Reply::Done => numbers.push(0.0),
        // SAFETY: as above, on the JS thread with its env.
        Reply::Event(message) => others.push(unsafe { <&str>::to_napi_value(env, &message)? }),
        Reply::Failed(_) | Reply::Unavailable(_) | Reply::Later(_) | Reply::Many(_) => {
          unreachable!("handled above, or finished or spread before delivery")
        }
      }
    }
    let mut data = ptr::null_mut();
    let mut buffer = ptr::null_mut();
    let bytes = numbers.len() * std::mem::size_of::<f64>();
    check_status!(unsafe { sys::napi_create_arraybuffer(env, bytes, &mut data, &mut buffer) })?;
    if bytes > 0 {
      // SAFETY: `data` is the new buffer's `bytes` writable bytes, and an
      // ArrayBuffer's memory is aligned for any typed array.
      unsafe { ptr::copy_nonoverlapping(numbers.as_ptr(), data.cast::<f64>(), numbers.len()) };
    }
    let mut typed = ptr::null_mut();
    check_status!(unsafe {
      sys::napi_create_typedarray(
        env,
        sys::TypedarrayType::float64_array,
        numbers.len(),
        buffer,
        0,
        &mut typed,
      )
    })?;
    let mut array = ptr::null_mut();
    check_status!(unsafe {
      sys::napi_create_array_with_length(env, 1 + others.len(), &mut array)
    })?;
    for (index, value) in std::iter::once(typed).chain(others).enumerate() {
      check_status!(unsafe { sys::napi_set_element(env, array, index as u32, value) })?;
    }
    Ok(array)
  }
}

/// The JS function answers are delivered to. Weak: it does not by itself
/// keep Node's event loop alive (see [`Replies::hold`]).
type Deliver = ThreadsafeFunction<(), Unknown<'static>, Batch, Status, false, true>;

/// Answers travel back to JS in batches through one threadsafe function,
/// rather than through a Promise and threadsafe function made per call (as
/// napi-rs `async fn` does): at 64 calls in flight that per-call machinery
/// kept the JS thread busier than everything else together.
///
/// A finished call queues its answer and wakes the JS side only if the queue
/// was empty; the wake-up drains everything queued by then. Between the
/// first call started and the last answer delivered, the function is
/// referenced so Node waits for the answers; otherwise it is not, so a
/// process holding an idle connection still exits by itself.
pub struct Replies {
  queue: Arc<ReplyQueue>,
  deliver: Deliver,
}

/// What both the calls' tasks and the delivering callback reach.
#[derive(Default)]
struct ReplyQueue {
  ready: Mutex<Vec<(f64, Reply)>>,
  /// Calls started and not yet delivered; changed only on the JS thread.
  pending: AtomicUsize,
  /// The threadsafe function, for un-referencing it from its own callback
  /// (which only runs while it exists).
  raw: AtomicPtr<sys::napi_threadsafe_function__>,
}

impl ReplyQueue {
  /// Counts `count` calls delivered (on the JS thread, with its `env`); once
  /// none is left, Node need not wait for the threadsafe function any more.
  fn delivered(&self, env: sys::napi_env, count: usize) {
    if count > 0 && self.pending.fetch_sub(count, Ordering::Relaxed) == count {
      // SAFETY: on the JS thread with its env, for the function this queue
      // belongs to (stored before any call can be delivered).
      unsafe { sys::napi_unref_threadsafe_function(env, self.raw.load(Ordering::Relaxed)) };
    }
  }
}

impl Replies {
  pub fn new(settle: Function<'_, Batch, Unknown<'static>>) -> Result<Self> {
    let queue = Arc::new(ReplyQueue::default());
    let delivering = Arc::clone(&queue);
    let deliver = settle
      .build_threadsafe_function::<()>()
      .callee_handled::<false>()
      .weak::<true>()
      .build_callback(move |ctx: ThreadsafeCallContext<()>| {
        let batch = std::mem::take(&mut *lock(&delivering.ready));
        delivering.delivered(ctx.env.raw(), batch.len());
        Ok(Batch(batch))
      })?;
    queue.raw.store(deliver.raw(), Ordering::Relaxed);
    Ok(Replies { queue, deliver })
  }

  /// Counts a call started (on the JS thread), making Node wait for its answer.
  pub fn hold(&self, env: &Env) {
    if self.queue.pending.fetch_add(1, Ordering::Relaxed) == 0 {
      // SAFETY: called on the JS thread with its env.
      unsafe { sys::napi_ref_threadsafe_function(env.raw(), self.deliver.raw()) };
    }
  }

  /// Counts `count` calls answered directly on the JS thread (not through
  /// the threadsafe function).
  pub fn delivered_here(&self, env: &Env, count: usize) {
    self.queue.delivered(env.raw(), count);
  }

  /// Queues the answer to call `id` (from any thread).
  pub fn send(&self, id: f64, reply: Reply) {
    self.send_all(vec![(id, reply)]);
  }

  /// Queues answers (from any thread), waking the JS side if it has
  /// nothing queued yet.
  pub fn send_all(&self, answers: Vec<(f64, Reply)>) {
    if answers.is_empty() {
      return;
    }
    let was_empty = {
      let mut ready = lock(&self.queue.ready);
      let was_empty = ready.is_empty();
      ready.extend(answers);
      was_empty
    };
    if was_empty {
      self
        .deliver
        .call((), ThreadsafeFunctionCallMode::NonBlocking);
    }
  }
}

/// Computes a costly answer on napi-rs's multi-thread runtime, off the I/O
/// thread, and sends it as the answer to call `id`.
pub fn finish_elsewhere(id: f64, finish: Box<dyn FnOnce() -> Reply + Send>, replies: Arc<Replies>) {
  napi::bindgen_prelude::spawn(async move {
    let reply = guard_async(CACHE_STORE, async { Ok(finish()) }).await;
    replies.send(
      id,
      reply.unwrap_or_else(|panicked| Reply::Failed(panicked.reason.clone())),
    );
  });
}
