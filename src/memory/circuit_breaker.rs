//! Circuit-breaker state per key, bounded by a key count.
//!
//! Same transitions as Stoma's `InMemoryCircuitBreakerStore`: failures and
//! successes are counted, `transition` stamps `lastStateChange`, going to
//! `closed` zeroes both counters and going to `half-open` zeroes the success
//! count. Stoma's map grows with every key ever seen; this one holds at most
//! `maxKeys` circuits and forgets the least recently used one beyond that
//! (a forgotten circuit reads as a fresh closed circuit). Reading an unknown
//! key stores nothing, so a flood of reads cannot fill it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::Object;
use napi::{Env, Result};
use napi_derive::napi;

use super::lru_map::LruMap;
use super::short_lock::ShortLock;
use super::{bound, Held, Registry};
use crate::circuit::{CircuitOperation, CircuitState};
use crate::clock::Now;
use crate::errors::guard;
use crate::fastcall::{bound_call, Answer, CallError};
use crate::ffi::{self, Lane};

/// The five fields of Stoma's `CircuitBreakerSnapshot`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapshot {
  pub state: CircuitState,
  pub failure_count: u64,
  pub success_count: u64,
  pub last_failure_time: i64,
  pub last_state_change: i64,
}

impl Snapshot {
  pub fn fresh(now: i64) -> Self {
    Snapshot {
      state: CircuitState::Closed,
      failure_count: 0,
      success_count: 0,
      last_failure_time: 0,
      last_state_change: now,
    }
  }

  /// Applies Stoma's transition rules.
  pub fn transition(&mut self, to: CircuitState, now: i64) {
    self.state = to;
    self.last_state_change = now;
    match to {
      CircuitState::Closed => {
        self.failure_count = 0;
        self.success_count = 0;
      }
      CircuitState::HalfOpen => self.success_count = 0,
      CircuitState::Open => {}
    }
  }

  /// The snapshot as five numbers, in field order, for the JS layer.
  fn fields(&self) -> [f64; 5] {
    [
      self.state.code() as f64,
      self.failure_count as f64,
      self.success_count as f64,
      self.last_failure_time as f64,
      self.last_state_change as f64,
    ]
  }
}

/// The circuits of one store (or of every store sharing a `name`).
pub struct CircuitTable {
  circuits: ShortLock<LruMap<Snapshot>>,
  max_keys: usize,
  /// Circuits forgotten to make room, for `stats()`; counted under the lock.
  evictions: AtomicU64,
}

impl CircuitTable {
  pub fn new(max_keys: usize) -> Self {
    CircuitTable {
      circuits: ShortLock::new(LruMap::new()),
      max_keys: max_keys.max(1),
      evictions: AtomicU64::new(0),
    }
  }

  /// The key's circuit, marking it recently used (an open circuit is read on
  /// every request, so it must not be the first forgotten).
  pub fn get(&self, key: &str, now: &Now) -> Snapshot {
    // Looked up first, so that an unknown key's clock read is not made
    // under the lock.
    let found = self.circuits.lock().get_mut(key).map(|snapshot| *snapshot);
    found.unwrap_or_else(|| Snapshot::fresh(now.ms()))
  }

  /// Applies `change` to the key's circuit (creating it if needed) and
  /// returns the result, all under one lock so concurrent updates from
  /// several worker threads are never lost.
  pub fn update(&self, key: &str, now: &Now, change: impl FnOnce(&mut Snapshot)) -> Snapshot {
    let mut circuits = self.circuits.lock();
    if let Some(stored) = circuits.get_mut(key) {
      // Changed in a copy and written back whole: reading the snapshot
      // back right after one field's store stalls the CPU (a failed store
      // forward, ~10 ns, a third of the call in a tight loop).
      let mut snapshot = *stored;
      change(&mut snapshot);
      *stored = snapshot;
      return snapshot;
    }
    let mut snapshot = Snapshot::fresh(now.ms());
    change(&mut snapshot);
    while circuits.len() >= self.max_keys {
      circuits.remove_oldest();
      self.evictions.fetch_add(1, Ordering::Relaxed);
    }
    circuits.insert_new(key, snapshot);
    snapshot
  }

  /// Runs the [`CircuitOperation`] of code `op` on `key` (a transition to
  /// the [`CircuitState`] of the code `to` reads) and answers the snapshot:
  /// what both roads into the store call.
  pub fn operate(
    &self,
    op: u32,
    key: &str,
    to: impl FnOnce() -> std::result::Result<u32, CallError>,
  ) -> std::result::Result<Snapshot, CallError> {
    // Read lazily: reading or counting on a known circuit needs no clock.
    let now = &Now::read();
    let op = CircuitOperation::from_code(op)
      .ok_or_else(|| CallError::Type(format!("unknown circuit operation {op}")))?;
    Ok(match op {
      CircuitOperation::GetState => self.get(key, now),
      CircuitOperation::RecordSuccess => self.update(key, now, |s| s.success_count += 1),
      CircuitOperation::RecordFailure => self.update(key, now, |s| {
        s.failure_count += 1;
        s.last_failure_time = now.ms();
      }),
      CircuitOperation::Transition => {
        let to = to()?;
        let to = CircuitState::from_code(to)
          .ok_or_else(|| CallError::Type(format!("unknown circuit state code {to}")))?;
        self.update(key, now, |s| s.transition(to, now.ms()))
      }
    })
  }

  pub fn remove(&self, key: &str) {
    self.circuits.lock().remove(key);
  }

  pub fn clear(&self) {
    self.circuits.lock().clear();
  }

  pub fn len(&self) -> usize {
    self.circuits.lock().len()
  }

  /// Circuits forgotten to make room since the table was made.
  pub fn evictions(&self) -> u64 {
    self.evictions.load(Ordering::Relaxed)
  }
}

pub(super) static NAMED: Registry<CircuitTable> = Registry::new();
const STORE: &str = "MemoryCircuitBreakerStore";

/// `stoma_circuit_operate(lane, op, keyLength, to)`: the C-ABI form of the
/// bound operations (see [`ffi`]) for a key JS wrote into the lane; writes
/// the snapshot into slots 0–4 and answers 0.
///
/// # Safety
/// `lane` must be a lane from `NativeMemoryCircuitBreakerStore#lane` that JS
/// still holds, called on the thread that holds it (see [`ffi::enter`]).
#[no_mangle]
pub unsafe extern "C" fn stoma_circuit_operate(
  lane: *const Lane<Arc<CircuitTable>>,
  op: u32,
  key_len: u32,
  to: u32,
) -> f64 {
  // SAFETY: the caller's promise.
  unsafe {
    ffi::enter(lane, |lane| {
      let snapshot = lane.state.operate(op, lane.key(key_len)?, || Ok(to))?;
      for (index, value) in snapshot.fields().into_iter().enumerate() {
        lane.set(index, value);
      }
      Ok(0.0)
    })
  }
}

/// The native half of `MemoryCircuitBreakerStore` (see `lib/memory.js`).
#[napi]
pub struct NativeMemoryCircuitBreakerStore {
  table: Held<CircuitTable>,
}

#[napi]
impl NativeMemoryCircuitBreakerStore {
  #[napi(constructor)]
  pub fn new(max_keys: f64, name: Option<String>) -> Result<Self> {
    guard(STORE, || {
      let table = NAMED.get_or_create(name.as_deref(), || CircuitTable::new(bound(max_keys)));
      Ok(NativeMemoryCircuitBreakerStore {
        table: Held::new(STORE, table),
      })
    })
  }

  /// Returns `{ call, out }`: `call(op, key, to)` runs the
  /// [`CircuitOperation`] of code `op` (a transition to the [`CircuitState`]
  /// of code `to`) and writes the resulting snapshot into `out` as
  /// `[stateCode, failureCount, successCount, lastFailureTime, lastStateChange]`
  /// (see [`bound_call`]).
  #[napi(
    ts_return_type = "{ call: (op: number, key: string, to?: number) => void; out: Float64Array }"
  )]
  pub fn bind_operations(&self, env: &Env) -> Result<Object<'static>> {
    guard(STORE, || {
      bound_call(
        env,
        c"circuit",
        self.table.get()?.clone(),
        5,
        |bound, args| {
          let op = args.number(0, "op")? as u32;
          let snapshot = args.with_str(1, "key", |key| {
            bound
              .state
              .operate(op, key, || Ok(args.number(2, "to")? as u32))
          })??;
          for (index, value) in snapshot.fields().into_iter().enumerate() {
            bound.out.set(index, value);
          }
          Ok(Answer::Undefined)
        },
      )
    })
  }

  /// Returns `{ handle, memory }`, a lane for `stoma_circuit_operate` with
  /// room for a key of `keyBytes` bytes (see [`ffi::lane`]).
  #[napi(ts_return_type = "{ handle: number; memory: ArrayBuffer }")]
  pub fn lane(&self, env: &Env, key_bytes: u32) -> Result<Object<'static>> {
    guard(STORE, || {
      ffi::lane(env, self.table.get()?.clone(), key_bytes as usize)
    })
  }

  #[napi]
  pub fn reset(&self, key: String) -> Result<()> {
    guard(STORE, || {
      self.table.get()?.remove(&key);
      Ok(())
    })
  }

  #[napi]
  pub fn clear(&self) -> Result<()> {
    guard(STORE, || {
      self.table.get()?.clear();
      Ok(())
    })
  }

  #[napi(getter)]
  pub fn size(&self) -> Result<f64> {
    guard(STORE, || Ok(self.table.get()?.len() as f64))
  }

  /// Circuits forgotten to make room (of the state, shared under a name).
  #[napi(getter)]
  pub fn evictions(&self) -> Result<f64> {
    guard(STORE, || Ok(self.table.get()?.evictions() as f64))
  }

  #[napi]
  pub fn destroy(&mut self) -> Result<()> {
    guard(STORE, || {
      self.table.release();
      Ok(())
    })
  }
}

#[cfg(test)]
mod tests {
  use super::super::short_lock::contending_threads;
  use super::*;

  #[test]
  fn transitions_reset_counters_like_stoma() {
    let t = CircuitTable::new(10);
    t.update("k", &Now::at(1), |s| s.failure_count += 1);
    t.update("k", &Now::at(2), |s| s.success_count += 1);
    let s = t.update("k", &Now::at(3), |s| {
      s.transition(CircuitState::HalfOpen, 3)
    });
    assert_eq!(
      (s.failure_count, s.success_count, s.last_state_change),
      (1, 0, 3)
    );
    let s = t.update("k", &Now::at(4), |s| s.transition(CircuitState::Closed, 4));
    assert_eq!((s.failure_count, s.success_count), (0, 0));
  }

  #[test]
  fn concurrent_updates_from_many_threads_are_never_lost() {
    let t = CircuitTable::new(10);
    std::thread::scope(|scope| {
      for _ in 0..contending_threads() {
        scope.spawn(|| {
          for i in 0..20_000 {
            t.update(if i % 2 == 0 { "a" } else { "b" }, &Now::at(0), |s| {
              s.failure_count += 1
            });
          }
        });
      }
    });
    let each = contending_threads() as u64 * 10_000;
    assert_eq!(t.get("a", &Now::at(0)).failure_count, each);
    assert_eq!(t.get("b", &Now::at(0)).failure_count, each);
  }

  #[test]
  fn holds_at_most_max_keys_and_reads_store_nothing() {
    let t = CircuitTable::new(2);
    t.get("unknown", &Now::at(0));
    assert_eq!(t.len(), 0);
    for key in ["a", "b", "c"] {
      t.update(key, &Now::at(0), |s| s.failure_count += 1);
    }
    assert_eq!(t.len(), 2);
    assert_eq!(
      t.get("a", &Now::at(9)).failure_count,
      0,
      "least recently used is forgotten"
    );
    assert_eq!(t.get("c", &Now::at(9)).failure_count, 1);
  }
}
