//! Fixed-window rate-limit counters, bounded by a key count.
//!
//! Same semantics as Stoma's `InMemoryRateLimitStore`: a key's first hit
//! opens a window of `windowMs`; later hits inside it add one; the first hit
//! at or after `resetAt` opens a new window at count 1. When `maxKeys` keys
//! are held and none has expired, a new key fails closed with
//! `count = Number.MAX_SAFE_INTEGER`.
//!
//! Unlike Stoma's store, which scans the whole map for expired keys whenever
//! it is full (~810 µs a call at 100k keys), expired keys are found through
//! expiry queues: one FIFO per window length, in which windows necessarily
//! expire in the order they opened. Each window opened pushes one entry and
//! each entry is popped once, so reclaiming is O(1) amortized per call.

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
use crate::errors::{guard, lock};
use crate::fastcall::{bound_call, Answer};
use crate::ffi::{self, Lane};

/// `Number.MAX_SAFE_INTEGER`: the count reported when the store is full.
pub const FAIL_CLOSED_COUNT: f64 = 9_007_199_254_740_991.0;

/// How many expired windows one call reclaims on its way. Two per opened
/// window keeps the queues draining faster than they fill.
const RECLAIM_PER_CALL: usize = 2;

#[derive(Clone, Copy, Debug)]
struct Window {
  count: u64,
  reset_at: i64,
}

/// One expiry queue entry: `key`'s window that ends at `reset_at`. It is stale
/// (and skipped) if the key has since opened a newer window.
struct Expiry {
  reset_at: i64,
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
      while out.len() < limit && queue.front().is_some_and(|e| e.reset_at <= now) {
        out.extend(queue.pop_front());
      }
    }
    self.by_window.retain(|(_, queue)| !queue.is_empty());
  }
}

/// The counters of one store (or of every store sharing a `name`).
pub struct FixedWindowCounters {
  /// Keys up to 24 bytes (IPs, user ids) are stored inline in the entry,
  /// saving a pointer chase (a cache miss at 100k keys) per lookup.
  windows: OrderedMap<Window>,
  /// Number of keys in `windows`, kept separately because counting them
  /// locks every shard.
  len: AtomicUsize,
  max_keys: usize,
  expiries: Mutex<ExpiryQueues>,
}

/// What [`FixedWindowCounters::increment`] answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
  pub count: f64,
  pub reset_at: i64,
}

impl FixedWindowCounters {
  pub fn new(max_keys: usize) -> Self {
    FixedWindowCounters {
      windows: OrderedMap::new(),
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
    let known = self.windows.with_mut(key, |window| {
      if now.is_before(window.reset_at) {
        window.count += 1;
        return Ok(Hit {
          count: window.count as f64,
          reset_at: window.reset_at,
        });
      }
      *window = Window {
        count: 1,
        reset_at: now.ms() + window_ms,
      };
      Err(window.reset_at)
    });
    match known {
      Some(Ok(hit)) => hit,
      Some(Err(reset_at)) => {
        self.opened(CompactString::from(key), window_ms, reset_at, now.ms());
        Hit {
          count: 1.0,
          reset_at,
        }
      }
      None => self.insert_new(key, window_ms, now),
    }
  }

  fn insert_new(&self, key: &str, window_ms: i64, now: &Now) -> Hit {
    let now_ms = now.ms();
    let reset_at = now_ms + window_ms;
    if !self.reserve_slot(now_ms) {
      return Hit {
        count: FAIL_CLOSED_COUNT,
        reset_at,
      };
    }
    if !self.windows.insert_new(key, Window { count: 1, reset_at }) {
      // Another thread inserted the key meanwhile: give the slot back and
      // count the hit on its window.
      self.len.fetch_sub(1, Ordering::Relaxed);
      return self.increment(key, window_ms, now);
    }
    self.opened(CompactString::from(key), window_ms, reset_at, now_ms);
    Hit {
      count: 1.0,
      reset_at,
    }
  }

  /// Claims room for one more key, reclaiming expired keys if the store is
  /// full. Returns false if it is full of live windows.
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

  /// Records a newly opened window and reclaims a few expired ones.
  fn opened(&self, key: CompactString, window_ms: i64, reset_at: i64, now: i64) {
    lock(&self.expiries).push(window_ms, Expiry { reset_at, key });
    self.reclaim(now, RECLAIM_PER_CALL);
  }

  /// Removes up to `limit` expired keys; returns how many were removed.
  /// Stops early at the first non-expired entry of each queue, so with
  /// `usize::MAX` it still only touches expired entries.
  fn reclaim(&self, now: i64, limit: usize) -> usize {
    let mut expired = Vec::new();
    lock(&self.expiries).pop_expired(now, limit, &mut expired);
    let mut removed = 0;
    for Expiry { reset_at, key } in expired {
      let is_current = |w: &Window| w.reset_at == reset_at && w.reset_at <= now;
      if self.windows.remove_if(&key, is_current) {
        self.len.fetch_sub(1, Ordering::Relaxed);
        removed += 1;
      }
    }
    removed
  }

  /// Forgets every key.
  pub fn clear(&self) {
    let mut expiries = lock(&self.expiries);
    self.windows.clear();
    expiries.by_window.clear();
    self.len.store(self.windows.len(), Ordering::Relaxed);
  }
}

pub(super) static NAMED: Registry<FixedWindowCounters> = Registry::new();
const STORE: &str = "MemoryRateLimitStore";

/// `stoma_rate_limit_increment(lane, keyLength, windowMs)`: the C-ABI form
/// of the bound `increment` (see [`ffi`]), for a key JS wrote into the lane.
///
/// # Safety
/// `lane` must be a lane from `NativeMemoryRateLimitStore#lane` that JS still
/// holds, called on the thread that holds it (see [`ffi::enter`]).
#[no_mangle]
pub unsafe extern "C" fn stoma_rate_limit_increment(
  lane: *const Lane<Arc<FixedWindowCounters>>,
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

/// The native half of `MemoryRateLimitStore` (see `lib/memory.js`).
#[napi]
pub struct NativeMemoryRateLimitStore {
  counters: Held<FixedWindowCounters>,
}

#[napi]
impl NativeMemoryRateLimitStore {
  /// `name` shares the counters with every store of that name in the process.
  #[napi(constructor)]
  pub fn new(max_keys: f64, name: Option<String>) -> Result<Self> {
    guard(STORE, || {
      let counters = NAMED.get_or_create(name.as_deref(), || {
        FixedWindowCounters::new(bound(max_keys))
      });
      Ok(NativeMemoryRateLimitStore {
        counters: Held::new(STORE, counters),
      })
    })
  }

  /// Returns `{ call, out }`: `call(key, windowMs)` counts one hit and
  /// returns the count, writing `resetAt` into `out[0]` (see [`bound_call`]).
  #[napi(ts_return_type = "{ call: (key: string, windowMs: number) => number; out: Float64Array }")]
  pub fn bind_increment(&self, env: &Env) -> Result<Object<'static>> {
    guard(STORE, || {
      let counters = self.counters.get()?;
      bound_call(env, c"increment", counters.clone(), 1, |bound, args| {
        let window_ms = duration_ms(args.number(1, "windowMs")?);
        let now = Now::read();
        let hit = args.with_str(0, "key", |key| bound.state.increment(key, window_ms, &now))?;
        bound.out.set(0, hit.reset_at as f64);
        Ok(Answer::Number(hit.count))
      })
    })
  }

  /// Returns `{ handle, memory }`, a lane for `stoma_rate_limit_increment`
  /// with room for a key of `keyBytes` bytes (see [`ffi::lane`]).
  #[napi(ts_return_type = "{ handle: number; memory: ArrayBuffer }")]
  pub fn lane(&self, env: &Env, key_bytes: u32) -> Result<Object<'static>> {
    guard(STORE, || {
      ffi::lane(env, self.counters.get()?.clone(), key_bytes as usize)
    })
  }

  /// Number of keys held.
  #[napi(getter)]
  pub fn size(&self) -> Result<f64> {
    guard(STORE, || Ok(self.counters.get()?.len() as f64))
  }

  /// Forgets every key (shared by every store of the same name).
  #[napi]
  pub fn reset(&self) -> Result<()> {
    guard(STORE, || {
      self.counters.get()?.clear();
      Ok(())
    })
  }

  /// Releases this store's hold on the counters; later calls throw.
  #[napi]
  pub fn destroy(&mut self) -> Result<()> {
    guard(STORE, || {
      self.counters.release();
      Ok(())
    })
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn counts_within_a_window_and_reopens_after_it() {
    let c = FixedWindowCounters::new(10);
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
  fn fails_closed_when_full_and_reclaims_expired_keys() {
    let c = FixedWindowCounters::new(2);
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
    let c = FixedWindowCounters::new(1);
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
    let c = FixedWindowCounters::new(1_000);
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
        let counters = FixedWindowCounters::new(max_keys);
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
          prop_assert_eq!(counters.len(), counters.windows.len());
        }
      }
    }
  }
}
