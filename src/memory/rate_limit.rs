//! Rate-limit counters, bounded by a key count, under either algorithm:
//! [`fixed::FixedWindow`] (Stoma's semantics, the default) or
//! [`sliding::SlidingWindow`] (issue #18). When `maxKeys` keys are held and
//! none has expired, a new key fails closed with
//! `count = Number.MAX_SAFE_INTEGER`.
//!
//! Unlike Stoma's store, which scans the whole map for expired keys whenever
//! it is full (~810 µs a call at 100k keys), expired keys are found through
//! expiry queues: one FIFO per window length, in which entries necessarily
//! expire in the order they were written. Each window opened pushes one
//! entry and each entry is popped once, so reclaiming is O(1) amortized per
//! call.

mod fixed;
mod sliding;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use compact_str::CompactString;
use napi::bindgen_prelude::Object;
use napi::{Env, Result};
use napi_derive::napi;

use super::ordered_map::OrderedMap;
use super::{bound, Held, Registry};
use crate::clock::{duration_ms, Now};
use crate::errors::{guard, lock, store_error};
use crate::fastcall::{bound_call, Answer, Args, Bound, CallError};
use crate::ffi::{self, Lane};
use fixed::FixedWindow;
use sliding::SlidingWindow;

/// `Number.MAX_SAFE_INTEGER`: the count reported when the store is full.
pub const FAIL_CLOSED_COUNT: f64 = 9_007_199_254_740_991.0;

/// How many expired windows one call reclaims on its way. Two per opened
/// window keeps the queues draining faster than they fill.
const RECLAIM_PER_CALL: usize = 2;

/// What [`Counters::increment`] answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
  pub count: f64,
  pub reset_at: i64,
}

impl Hit {
  fn new(count: u64, reset_at: i64) -> Self {
    Hit {
      count: count as f64,
      reset_at,
    }
  }
}

/// How a key's hits are counted: what it keeps per key, and when that
/// entry may be forgotten.
pub trait Algorithm: Send + Sync + 'static {
  type Entry: Copy + Send;

  /// A new key's entry and the answer to its first hit.
  fn first(window_ms: i64, now: &Now) -> (Self::Entry, Hit);

  /// Counts a hit on a held key; the flag says whether the entry's expiry
  /// moved (a new window), so that it is queued again.
  fn hit(entry: &mut Self::Entry, window_ms: i64, now: &Now) -> (Hit, bool);

  /// From when the entry counts for nothing, so it may be reclaimed.
  fn expires_at(entry: &Self::Entry) -> i64;
}

/// One expiry queue entry: `key`'s entry that expires at `expires_at`. It is
/// stale (and skipped) if the key has since moved to a newer window.
struct Expiry {
  expires_at: i64,
  key: CompactString,
}

/// Expiry queues keyed by window length; almost always exactly one.
#[derive(Default)]
struct ExpiryQueues {
  by_window: Vec<(i64, VecDeque<Expiry>)>,
}

impl ExpiryQueues {
  fn push(&mut self, window_ms: i64, expiry: Expiry) {
    match self.by_window.iter_mut().find(|(w, _)| *w == window_ms) {
      Some((_, queue)) => queue.push_back(expiry),
      None => self.by_window.push((window_ms, VecDeque::from([expiry]))),
    }
  }

  /// Pops up to `limit` entries that have expired by `now`.
  fn pop_expired(&mut self, now: i64, limit: usize, out: &mut Vec<Expiry>) {
    for (_, queue) in &mut self.by_window {
      while out.len() < limit && queue.front().is_some_and(|e| e.expires_at <= now) {
        out.extend(queue.pop_front());
      }
    }
    self.by_window.retain(|(_, queue)| !queue.is_empty());
  }
}

/// The counters of one store (or of every store sharing a `name`).
pub struct Counters<A: Algorithm> {
  /// Keys up to 24 bytes (IPs, user ids) are stored inline in the entry,
  /// saving a pointer chase (a cache miss at 100k keys) per lookup.
  entries: OrderedMap<A::Entry>,
  /// Number of keys in `entries`, kept separately because counting them
  /// locks every shard.
  len: AtomicUsize,
  max_keys: usize,
  expiries: Mutex<ExpiryQueues>,
}

impl<A: Algorithm> Counters<A> {
  pub fn new(max_keys: usize) -> Self {
    Counters {
      entries: OrderedMap::new(),
      len: AtomicUsize::new(0),
      max_keys: max_keys.max(1),
      expiries: Mutex::new(ExpiryQueues::default()),
    }
  }

  pub fn len(&self) -> usize {
    self.len.load(Ordering::Relaxed)
  }

  /// Counts one hit on `key` for a window of `window_ms` at time `now`.
  pub fn increment(&self, key: &str, window_ms: i64, now: &Now) -> Hit {
    // Fast path: the key exists. The shard's lock is released before the
    // expiry queues are locked, so the two locks are never held together.
    let known = self.entries.with_mut(key, |entry| {
      let (hit, moved) = A::hit(entry, window_ms, now);
      (hit, moved.then(|| A::expires_at(entry)))
    });
    match known {
      Some((hit, None)) => hit,
      Some((hit, Some(expires_at))) => {
        self.opened(CompactString::from(key), window_ms, expires_at, now.ms());
        hit
      }
      None => self.insert_new(key, window_ms, now),
    }
  }

  fn insert_new(&self, key: &str, window_ms: i64, now: &Now) -> Hit {
    let (entry, hit) = A::first(window_ms, now);
    if !self.reserve_slot(now.ms()) {
      return Hit {
        count: FAIL_CLOSED_COUNT,
        ..hit
      };
    }
    if !self.entries.insert_new(key, entry) {
      // Another thread inserted the key meanwhile: give the slot back and
      // count the hit on its entry.
      self.len.fetch_sub(1, Ordering::Relaxed);
      return self.increment(key, window_ms, now);
    }
    self.opened(
      CompactString::from(key),
      window_ms,
      A::expires_at(&entry),
      now.ms(),
    );
    hit
  }

  /// Claims room for one more key, reclaiming expired keys if the store is
  /// full. Returns false if it is full of live entries.
  fn reserve_slot(&self, now: i64) -> bool {
    loop {
      let len = self.len.load(Ordering::Relaxed);
      if len >= self.max_keys {
        if self.reclaim(now, usize::MAX) == 0 {
          return false;
        }
        continue;
      }
      if self
        .len
        .compare_exchange(len, len + 1, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
      {
        return true;
      }
    }
  }

  /// Records an entry written for a new window and reclaims a few expired ones.
  fn opened(&self, key: CompactString, window_ms: i64, expires_at: i64, now: i64) {
    lock(&self.expiries).push(window_ms, Expiry { expires_at, key });
    self.reclaim(now, RECLAIM_PER_CALL);
  }

  /// Removes up to `limit` expired keys; returns how many were removed.
  /// Stops early at the first non-expired entry of each queue, so with
  /// `usize::MAX` it still only touches expired entries.
  fn reclaim(&self, now: i64, limit: usize) -> usize {
    let mut expired = Vec::new();
    lock(&self.expiries).pop_expired(now, limit, &mut expired);
    let mut removed = 0;
    for Expiry { expires_at, key } in expired {
      let is_current = |e: &A::Entry| A::expires_at(e) == expires_at && expires_at <= now;
      if self.entries.remove_if(&key, is_current) {
        self.len.fetch_sub(1, Ordering::Relaxed);
        removed += 1;
      }
    }
    removed
  }

  /// Forgets every key.
  pub fn clear(&self) {
    let mut expiries = lock(&self.expiries);
    self.entries.clear();
    expiries.by_window.clear();
    self.len.store(self.entries.len(), Ordering::Relaxed);
  }
}

static NAMED_FIXED: Registry<Counters<FixedWindow>> = Registry::new();
static NAMED_SLIDING: Registry<Counters<SlidingWindow>> = Registry::new();

/// Forgets the counters of both algorithms registered under `name`.
pub(super) fn release(name: &str) -> bool {
  NAMED_FIXED.release(name) | NAMED_SLIDING.release(name)
}

const STORE: &str = "MemoryRateLimitStore";

/// Counts one hit through a lane (see [`ffi`]), for a key JS wrote into it.
///
/// # Safety
/// As for the symbols below.
unsafe fn lane_increment<A: Algorithm>(
  lane: *const Lane<Arc<Counters<A>>>,
  key_len: u32,
  window_ms: f64,
) -> f64 {
  // SAFETY: the caller's promise.
  unsafe {
    ffi::enter(lane, |lane| {
      let hit = lane
        .state
        .increment(lane.key(key_len)?, duration_ms(window_ms), &Now::read());
      lane.set(0, hit.reset_at as f64);
      Ok(hit.count)
    })
  }
}

/// `stoma_rate_limit_increment(lane, keyLength, windowMs)`: the C-ABI form
/// of the bound `increment` of a fixed-window store.
///
/// # Safety
/// `lane` must be a lane from `NativeMemoryRateLimitStore#lane` that JS still
/// holds, called on the thread that holds it (see [`ffi::enter`]).
#[no_mangle]
pub unsafe extern "C" fn stoma_rate_limit_increment(
  lane: *const Lane<Arc<Counters<FixedWindow>>>,
  key_len: u32,
  window_ms: f64,
) -> f64 {
  // SAFETY: the caller's promise.
  unsafe { lane_increment(lane, key_len, window_ms) }
}

/// `stoma_sliding_rate_limit_increment(lane, keyLength, windowMs)`: the same
/// for a sliding-window store (a lane of the other kind is refused).
///
/// # Safety
/// As for [`stoma_rate_limit_increment`].
#[no_mangle]
pub unsafe extern "C" fn stoma_sliding_rate_limit_increment(
  lane: *const Lane<Arc<Counters<SlidingWindow>>>,
  key_len: u32,
  window_ms: f64,
) -> f64 {
  // SAFETY: the caller's promise.
  unsafe { lane_increment(lane, key_len, window_ms) }
}

/// The bound `increment(key, windowMs)` of either algorithm (see [`bound_call`]).
fn bound_increment<A: Algorithm>(
  bound: &Bound<Counters<A>>,
  args: &Args,
) -> std::result::Result<Answer, CallError> {
  let window_ms = duration_ms(args.number(1, "windowMs")?);
  let now = Now::read();
  let hit = args.with_str(0, "key", |key| bound.state.increment(key, window_ms, &now))?;
  bound.out.set(0, hit.reset_at as f64);
  Ok(Answer::Number(hit.count))
}

/// A store's counters, of the algorithm it was built with.
enum Kind {
  Fixed(Held<Counters<FixedWindow>>),
  Sliding(Held<Counters<SlidingWindow>>),
}

/// The native half of `MemoryRateLimitStore` (see `lib/memory.js`).
#[napi]
pub struct NativeMemoryRateLimitStore {
  counters: Kind,
}

#[napi]
impl NativeMemoryRateLimitStore {
  /// `algorithm` is "fixed-window" (when absent) or "sliding-window"; `name`
  /// shares the counters with every store of that name and algorithm in the
  /// process.
  #[napi(constructor)]
  pub fn new(max_keys: f64, name: Option<String>, algorithm: Option<String>) -> Result<Self> {
    guard(STORE, || {
      let name = name.as_deref();
      let max_keys = bound(max_keys);
      let counters = match algorithm.as_deref().unwrap_or("fixed-window") {
        "fixed-window" => Kind::Fixed(Held::new(
          STORE,
          NAMED_FIXED.get_or_create(name, || Counters::new(max_keys)),
        )),
        "sliding-window" => Kind::Sliding(Held::new(
          STORE,
          NAMED_SLIDING.get_or_create(name, || Counters::new(max_keys)),
        )),
        other => return Err(store_error(STORE, format!("unknown algorithm {other:?}"))),
      };
      Ok(NativeMemoryRateLimitStore { counters })
    })
  }

  /// Returns `{ call, out }`: `call(key, windowMs)` counts one hit and
  /// returns the count, writing `resetAt` into `out[0]` (see [`bound_call`]).
  #[napi(ts_return_type = "{ call: (key: string, windowMs: number) => number; out: Float64Array }")]
  pub fn bind_increment(&self, env: &Env) -> Result<Object<'static>> {
    guard(STORE, || match &self.counters {
      Kind::Fixed(held) => bound_call(env, c"increment", held.get()?.clone(), 1, bound_increment),
      Kind::Sliding(held) => bound_call(env, c"increment", held.get()?.clone(), 1, bound_increment),
    })
  }

  /// Returns `{ handle, memory }`, a lane with room for a key of `keyBytes`
  /// bytes (see [`ffi::lane`]) for `stoma_rate_limit_increment`, or for
  /// `stoma_sliding_rate_limit_increment` if the store slides.
  #[napi(ts_return_type = "{ handle: number; memory: ArrayBuffer }")]
  pub fn lane(&self, env: &Env, key_bytes: u32) -> Result<Object<'static>> {
    let bytes = key_bytes as usize;
    guard(STORE, || match &self.counters {
      Kind::Fixed(held) => ffi::lane(env, held.get()?.clone(), bytes),
      Kind::Sliding(held) => ffi::lane(env, held.get()?.clone(), bytes),
    })
  }

  /// Number of keys held.
  #[napi(getter)]
  pub fn size(&self) -> Result<f64> {
    guard(STORE, || match &self.counters {
      Kind::Fixed(held) => Ok(held.get()?.len() as f64),
      Kind::Sliding(held) => Ok(held.get()?.len() as f64),
    })
  }

  /// Forgets every key (shared by every store of the same name).
  #[napi]
  pub fn reset(&self) -> Result<()> {
    guard(STORE, || {
      match &self.counters {
        Kind::Fixed(held) => held.get()?.clear(),
        Kind::Sliding(held) => held.get()?.clear(),
      }
      Ok(())
    })
  }

  /// Releases this store's hold on the counters; later calls throw.
  #[napi]
  pub fn destroy(&mut self) -> Result<()> {
    guard(STORE, || {
      match &mut self.counters {
        Kind::Fixed(held) => held.release(),
        Kind::Sliding(held) => held.release(),
      }
      Ok(())
    })
  }
}

#[cfg(test)]
mod tests {
  use super::super::short_lock::contending_threads;
  use super::*;

  #[test]
  fn counts_within_a_window_and_reopens_after_it() {
    let c = Counters::<FixedWindow>::new(10);
    assert_eq!(
      c.increment("a", 1000, &Now::at(0)),
      Hit {
        count: 1.0,
        reset_at: 1000
      }
    );
    assert_eq!(
      c.increment("a", 1000, &Now::at(999)),
      Hit {
        count: 2.0,
        reset_at: 1000
      }
    );
    assert_eq!(
      c.increment("a", 1000, &Now::at(1000)),
      Hit {
        count: 1.0,
        reset_at: 2000
      }
    );
  }

  #[test]
  fn concurrent_increments_from_many_threads_hand_out_each_count_once() {
    let c = Counters::<FixedWindow>::new(10);
    let mut counts: Vec<f64> = std::thread::scope(|scope| {
      let threads: Vec<_> = (0..contending_threads())
        .map(|_| {
          scope.spawn(|| {
            (0..20_000)
              .map(|_| c.increment("a", 60_000, &Now::at(0)).count)
              .collect::<Vec<_>>()
          })
        })
        .collect();
      threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
    });
    counts.sort_by(f64::total_cmp);
    let total = contending_threads() as u32 * 20_000;
    let expected: Vec<f64> = (1..=total).map(f64::from).collect();
    assert_eq!(counts, expected);
  }

  #[test]
  fn fails_closed_when_full_and_reclaims_expired_keys() {
    let c = Counters::<FixedWindow>::new(2);
    c.increment("a", 100, &Now::at(0));
    c.increment("b", 500, &Now::at(0));
    assert_eq!(c.increment("c", 100, &Now::at(50)).count, FAIL_CLOSED_COUNT);
    assert_eq!(c.len(), 2);
    // "a" expired at 100, so "c" takes its place.
    assert_eq!(c.increment("c", 100, &Now::at(100)).count, 1.0);
    assert_eq!(c.len(), 2);
    assert_eq!(c.increment("b", 500, &Now::at(100)).count, 2.0);
  }

  #[test]
  fn a_reopened_window_is_not_reclaimed_by_its_stale_expiry() {
    let c = Counters::<FixedWindow>::new(1);
    c.increment("a", 100, &Now::at(0));
    c.increment("a", 100, &Now::at(100)); // reopens until 200; the entry for 100 is stale
    assert_eq!(
      c.increment("b", 100, &Now::at(150)).count,
      FAIL_CLOSED_COUNT
    );
    assert_eq!(c.increment("a", 100, &Now::at(150)).count, 2.0);
  }

  #[test]
  fn queues_stay_bounded_under_key_churn() {
    let c = Counters::<FixedWindow>::new(1_000);
    for i in 0..100_000i64 {
      c.increment(&format!("k{i}"), 10, &Now::at(i));
    }
    assert!(c.len() <= 1_000);
    let queued: usize = lock(&c.expiries)
      .by_window
      .iter()
      .map(|(_, q)| q.len())
      .sum();
    assert!(
      queued <= 1_000 + RECLAIM_PER_CALL,
      "{queued} entries queued"
    );
  }

  /// Model-based fuzzing: random keys, windows and clock steps against a
  /// plain map with Stoma's fixed-window rules and the fail-closed bound.
  mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    struct Step {
      key: String,
      window_ms: i64,
      advance_ms: i64,
    }

    fn step() -> impl Strategy<Value = Step> {
      let key = prop_oneof![4 => "[a-e]", 1 => ".{0,40}", 1 => "[\\x00\\n\\u{e9}\\u{1F600}]{1,3}"];
      let window = prop_oneof![
        Just(0i64),
        1i64..50,
        Just(1000),
        Just(crate::clock::MAX_DURATION_MS)
      ];
      (key, window, prop_oneof![3 => Just(0i64), 2 => 0i64..30]).prop_map(
        |(key, window_ms, advance_ms)| Step {
          key,
          window_ms,
          advance_ms,
        },
      )
    }

    proptest! {
      #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

      #[test]
      fn matches_the_fixed_window_model(max_keys in 1usize..6, steps in prop::collection::vec(step(), 1..120)) {
        let counters = Counters::<FixedWindow>::new(max_keys);
        let mut model: HashMap<String, (u64, i64)> = HashMap::new();
        let mut now = 1_700_000_000_000i64;
        for Step { key, window_ms, advance_ms } in steps {
          now += advance_ms;
          let hit = counters.increment(&key, window_ms, &Now::at(now));
          let expected = match model.get_mut(&key) {
            Some((count, reset_at)) if now < *reset_at => {
              *count += 1;
              Hit { count: *count as f64, reset_at: *reset_at }
            }
            _ => {
              let live_others = model.iter().filter(|(k, (_, r))| **k != key && now < *r).count();
              if live_others >= max_keys {
                model.remove(&key);
                Hit { count: FAIL_CLOSED_COUNT, reset_at: now + window_ms }
              } else {
                model.insert(key.clone(), (1, now + window_ms));
                Hit { count: 1.0, reset_at: now + window_ms }
              }
            }
          };
          prop_assert_eq!(hit, expected, "key {:?} at {}", key, now);
          prop_assert!(counters.len() <= max_keys);
          prop_assert_eq!(counters.len(), counters.entries.len());
        }
      }
    }
  }
}
