//! Cached responses, bounded by entry count and by bytes, evicted LRU.
//!
//! Stoma's `InMemoryCacheStore` is unbounded unless `maxEntries` is given and
//! has no byte bound at all; this one always has both (10,000 entries and
//! 64 MiB by default, set by the JS layer). Each entry keeps the status, the
//! headers (as one NUL-separated string, in order, duplicates kept) and the
//! body; the JS layer turns that back into a `Response`.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use napi::bindgen_prelude::{BufferSlice, Float64ArraySlice, Object};
use napi::{Env, Result};
use napi_derive::napi;

use super::{bound, write_out, Held, Registry};
use crate::clock::{duration_ms, now_ms};
use crate::errors::{guard, lock, store_error};
use crate::ffi::{self, CallError, Lane};

/// Bytes charged per entry on top of its key and data, for the map node,
/// the LRU links, the shared data's header and the allocator's rounding, so
/// that many tiny entries are still bounded by `maxBytes`. Measured by
/// `__test__/reliability/flood.spec.mjs`: a store full of tiny entries holds
/// ~275 resident bytes per 64 bytes of key and data (96, the old figure,
/// let the process hold ~1.7 × maxBytes). The Redis near cache charges the
/// same, so `maxBytes` means the same there.
pub const ENTRY_OVERHEAD: usize = 224;

/// The largest buffer kept aside for reuse (see [`ResponseLru::spare`]).
const SPARE_MAX: usize = 1 << 20;

/// One cached response. `data` holds the header string's UTF-8 bytes
/// followed by the body, so a hit crosses into JS as a single buffer.
struct CachedResponse {
  status: u16,
  headers_len: usize,
  /// Shared so a hit is copied into JS after the store's lock is released.
  data: Arc<Vec<u8>>,
  expires_at: i64,
}

impl CachedResponse {
  /// By capacity, not length: a reused buffer may be a little larger.
  fn charge(&self, key: &str) -> usize {
    key.len() + self.data.capacity() + ENTRY_OVERHEAD
  }
}

struct LruState {
  entries: LruCache<Box<str>, CachedResponse>,
  bytes: usize,
  /// Live entries removed to make room, for `stats()`.
  evictions: u64,
}

impl LruState {
  /// Removes the key's entry, if any; answers its data.
  fn remove(&mut self, key: &str) -> Option<Arc<Vec<u8>>> {
    let (key, entry) = self.entries.pop_entry(key)?;
    self.bytes -= entry.charge(&key);
    Some(entry.data)
  }
}

/// A cache hit as the JS layer receives it.
pub struct Hit {
  pub status: u16,
  pub headers_len: usize,
  pub data: Arc<Vec<u8>>,
}

/// The responses of one store (or of every store sharing a `name`).
pub struct ResponseLru {
  state: Mutex<LruState>,
  /// The buffer of the last entry a put replaced or evicted, when nothing
  /// else held it, for the next put to copy into. A put that takes a
  /// freshly allocated buffer instead, freeing another, pays page faults
  /// on a busy heap: a 64 KiB put went from ~10 µs to ~3 µs in Deno, whose
  /// ArrayBuffers churn the same heap. Its own lock, never held with no
  /// other: `state` is locked first where both are.
  spare: Mutex<Option<Vec<u8>>>,
  max_entries: usize,
  max_bytes: usize,
}

impl ResponseLru {
  pub fn new(max_entries: usize, max_bytes: usize) -> Self {
    ResponseLru {
      state: Mutex::new(LruState {
        entries: LruCache::unbounded(),
        bytes: 0,
        evictions: 0,
      }),
      spare: Mutex::new(None),
      max_entries: max_entries.max(1),
      max_bytes,
    }
  }

  /// Stores a response until `now + ttl_ms`. A response that expires at once
  /// (ttl 0) or is larger than `maxBytes` on its own is not stored, and
  /// replaces (removes) any older entry under the key.
  pub fn put(&self, key: &str, status: u16, headers: &str, body: &[u8], ttl_ms: i64, now: i64) {
    let mut data = self.buffer(headers.len() + body.len());
    data.extend_from_slice(headers.as_bytes());
    data.extend_from_slice(body);
    let entry = CachedResponse {
      status,
      headers_len: headers.len(),
      data: Arc::new(data),
      expires_at: now.saturating_add(ttl_ms),
    };
    let charge = entry.charge(key);

    let mut state = lock(&self.state);
    let replaced = state.remove(key);
    self.set_aside(replaced);
    if ttl_ms <= 0 || charge > self.max_bytes {
      return;
    }
    while state.entries.len() >= self.max_entries || state.bytes + charge > self.max_bytes {
      match state.entries.pop_lru() {
        Some((old_key, old)) => {
          state.bytes -= old.charge(&old_key);
          state.evictions += 1;
          self.set_aside(Some(old.data));
        }
        None => break,
      }
    }
    state.bytes += charge;
    state.entries.put(key.into(), entry);
  }

  /// An empty buffer for `size` bytes: the spare if it fits without
  /// wasting more than a quarter of itself, else a new one.
  fn buffer(&self, size: usize) -> Vec<u8> {
    let mut spare = lock(&self.spare);
    match spare.take() {
      Some(mut buffer) if buffer.capacity() >= size && buffer.capacity() - size <= size / 4 => {
        buffer.clear();
        buffer
      }
      other => {
        *spare = other;
        Vec::with_capacity(size)
      }
    }
  }

  /// Keeps a removed entry's buffer as the spare, unless a hit still holds
  /// it (lent to JS, or being copied out) or it is larger than [`SPARE_MAX`].
  fn set_aside(&self, data: Option<Arc<Vec<u8>>>) {
    if let Some(buffer) = data.and_then(|data| Arc::try_unwrap(data).ok()) {
      if buffer.capacity() <= SPARE_MAX {
        *lock(&self.spare) = Some(buffer);
      }
    }
  }

  /// Returns the live entry under `key`, marking it most recently used; an
  /// expired entry is removed and reads as a miss.
  pub fn get(&self, key: &str, now: i64) -> Option<Hit> {
    let mut state = lock(&self.state);
    let entry = state.entries.get(key)?;
    if entry.expires_at <= now {
      state.remove(key);
      return None;
    }
    Some(Hit {
      status: entry.status,
      headers_len: entry.headers_len,
      data: entry.data.clone(),
    })
  }

  pub fn delete(&self, key: &str) -> bool {
    lock(&self.state).remove(key).is_some()
  }

  pub fn clear(&self) {
    let mut state = lock(&self.state);
    state.entries.clear();
    state.bytes = 0;
  }

  /// (entries, bytes charged)
  pub fn usage(&self) -> (usize, usize) {
    let state = lock(&self.state);
    (state.entries.len(), state.bytes)
  }

  /// Entries removed to make room since the state was made.
  pub fn evictions(&self) -> u64 {
    lock(&self.state).evictions
  }
}

pub(super) static NAMED: Registry<ResponseLru> = Registry::new();
const STORE: &str = "MemoryCacheStore";

/// What a cache lane holds: the store's responses, and the bytes of the
/// last hit, lent to JS until the lane's next `stoma_cache_get`.
pub struct CacheLane {
  lru: Arc<ResponseLru>,
  hit: Cell<Option<Arc<Vec<u8>>>>,
}

/// Answered by `stoma_cache_get` for a miss.
pub const MISS: f64 = -2.0;

/// `stoma_cache_put(lane, keyLength, headersLength, status, body, bodyLength,
/// ttlMs)`: `put` (see [`ffi`]) for a key and header string JS wrote one
/// after the other into the lane, and a body passed by pointer. Answers 0.
///
/// # Safety
/// `lane` must be a lane from `NativeMemoryCacheStore#lane` that JS still
/// holds, called on the thread that holds it (see [`ffi::enter`]); `body`
/// must point to `body_len` readable bytes (see [`ffi::passed`]).
#[no_mangle]
pub unsafe extern "C" fn stoma_cache_put(
  lane: *const Lane<CacheLane>,
  key_len: u32,
  headers_len: u32,
  status: u32,
  body: *const u8,
  body_len: f64,
  ttl_ms: f64,
) -> f64 {
  // SAFETY: the caller's promise.
  unsafe {
    ffi::enter(lane, |lane| {
      let key = lane.key(key_len)?;
      let headers = lane.text(key.len(), headers_len as usize, "headers")?;
      let status = u16::try_from(status)
        .map_err(|_| CallError::Type(format!("status {status} out of range")))?;
      let body = ffi::passed(body, body_len)?;
      lane
        .state
        .lru
        .put(key, status, headers, body, duration_ms(ttl_ms), now_ms());
      Ok(0.0)
    })
  }
}

/// `stoma_cache_get(lane, keyLength)`: looks the key up. On a hit, writes
/// `[status, headerByteLength, address]` into slots 0–2 and answers the byte
/// length of the header string and body stored together at `address`; on a
/// miss answers [`MISS`].
///
/// The bytes are lent, not copied: the lane holds them until its next get,
/// and JS only reads them before that: it decodes the headers and builds the
/// `Response`, which copies its body as it is constructed (the Fetch
/// standard's "extract a body"). So a hit costs one copy, as in Stoma's
/// store, instead of one into a JS buffer and another into the `Response`.
///
/// # Safety
/// As for `stoma_cache_put`.
#[no_mangle]
pub unsafe extern "C" fn stoma_cache_get(lane: *const Lane<CacheLane>, key_len: u32) -> f64 {
  // SAFETY: the caller's promise.
  unsafe {
    ffi::enter(lane, |lane| {
      let hit = lane.state.lru.get(lane.key(key_len)?, now_ms());
      // The previous hit is let go here, once JS is done with it.
      lane.state.hit.set(None);
      let Some(hit) = hit else {
        return Ok(MISS);
      };
      let address = hit.data.as_ptr() as usize;
      if address as f64 as usize != address {
        return Err(CallError::Store(format!(
          "{STORE}: address {address:#x} does not fit a number"
        )));
      }
      lane.set(0, hit.status as f64);
      lane.set(1, hit.headers_len as f64);
      lane.set(2, address as f64);
      let len = hit.data.len() as f64;
      lane.state.hit.set(Some(hit.data));
      Ok(len)
    })
  }
}

/// The native half of `MemoryCacheStore` (see `lib/memory.js`).
#[napi]
pub struct NativeMemoryCacheStore {
  lru: Held<ResponseLru>,
}

#[napi]
impl NativeMemoryCacheStore {
  #[napi(constructor)]
  pub fn new(max_entries: f64, max_bytes: f64, name: Option<String>) -> Result<Self> {
    guard(STORE, || {
      let lru = NAMED.get_or_create(name.as_deref(), || {
        ResponseLru::new(bound(max_entries), bound(max_bytes))
      });
      Ok(NativeMemoryCacheStore {
        lru: Held::new(STORE, lru),
      })
    })
  }

  /// `headers` is `name\0value\0name\0value…`; `body` is the response bytes.
  #[napi]
  pub fn put(
    &self,
    key: String,
    status: u32,
    headers: String,
    body: &[u8],
    ttl_ms: f64,
  ) -> Result<()> {
    guard(STORE, || {
      let status = u16::try_from(status).map_err(|_| store_error(STORE, "status out of range"))?;
      self
        .lru
        .get()?
        .put(&key, status, &headers, body, duration_ms(ttl_ms), now_ms());
      Ok(())
    })
  }

  /// On a hit, returns a copy of the header string's bytes followed by the
  /// body and writes `[status, headerByteLength]` into `out`; on a miss,
  /// `null`.
  ///
  /// A copy, not a view of the stored bytes: lent to JS as an external
  /// buffer, a replaced entry lived on until V8 finalized that buffer, and in
  /// a put+get loop the 64 KiB blocks freed in bursts at each GC came back
  /// from malloc as fresh pages the kernel had to zero — 3–4× slower than
  /// copying them (~40 µs against ~150 µs a round trip).
  #[napi]
  pub fn get<'env>(
    &self,
    env: &'env Env,
    key: String,
    mut out: Float64ArraySlice,
  ) -> Result<Option<BufferSlice<'env>>> {
    guard(STORE, || {
      let Some(hit) = self.lru.get()?.get(&key, now_ms()) else {
        return Ok(None);
      };
      write_out(&mut out, &[hit.status as f64, hit.headers_len as f64]);
      BufferSlice::copy_from(env, &hit.data[..]).map(Some)
    })
  }

  /// Returns `{ handle, memory }`, a lane for the `stoma_cache_*` symbols
  /// with room for a key and header string of `bytes` bytes together (see
  /// [`ffi::lane`]).
  #[napi(ts_return_type = "{ handle: number; memory: ArrayBuffer }")]
  pub fn lane(&self, env: &Env, bytes: u32) -> Result<Object<'static>> {
    guard(STORE, || {
      let state = CacheLane {
        lru: self.lru.get()?.clone(),
        hit: Cell::new(None),
      };
      ffi::lane(env, state, bytes as usize)
    })
  }

  #[napi]
  pub fn delete(&self, key: String) -> Result<bool> {
    guard(STORE, || Ok(self.lru.get()?.delete(&key)))
  }

  #[napi]
  pub fn clear(&self) -> Result<()> {
    guard(STORE, || {
      self.lru.get()?.clear();
      Ok(())
    })
  }

  #[napi(getter)]
  pub fn size(&self) -> Result<f64> {
    guard(STORE, || Ok(self.lru.get()?.usage().0 as f64))
  }

  /// Bytes charged against `maxBytes` (keys, headers, bodies and a fixed
  /// per-entry overhead).
  #[napi(getter)]
  pub fn bytes(&self) -> Result<f64> {
    guard(STORE, || Ok(self.lru.get()?.usage().1 as f64))
  }

  /// Entries removed to make room (of the state, shared under a name).
  #[napi(getter)]
  pub fn evictions(&self) -> Result<f64> {
    guard(STORE, || Ok(self.lru.get()?.evictions() as f64))
  }

  #[napi]
  pub fn destroy(&mut self) -> Result<()> {
    guard(STORE, || {
      self.lru.release();
      Ok(())
    })
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn evicts_least_recently_used_by_entries() {
    let c = ResponseLru::new(2, usize::MAX);
    c.put("a", 200, "", b"a", 1000, 0);
    c.put("b", 200, "", b"b", 1000, 0);
    assert!(c.get("a", 1).is_some()); // "b" is now least recently used
    c.put("c", 200, "", b"c", 1000, 1);
    assert!(c.get("b", 2).is_none());
    assert!(c.get("a", 2).is_some() && c.get("c", 2).is_some());
  }

  #[test]
  fn evicts_by_bytes_and_refuses_oversized_entries() {
    let c = ResponseLru::new(100, 3 * (ENTRY_OVERHEAD + 1 + 1000));
    for key in ["a", "b", "c", "d"] {
      c.put(key, 200, "", &[0; 1000], 1000, 0);
    }
    assert_eq!(c.usage().0, 3);
    assert!(c.get("a", 1).is_none());
    c.put("d", 200, "", &[0; 10_000], 1000, 0);
    assert!(
      c.get("d", 1).is_none(),
      "oversized put replaces and is not stored"
    );
    assert_eq!(c.usage().0, 2);
  }

  #[test]
  fn reuses_a_replaced_buffer_nothing_else_holds() {
    let c = ResponseLru::new(10, usize::MAX);
    c.put("a", 200, "", &[1; 1000], 1000, 0);
    assert!(lock(&c.spare).is_none());
    c.put("a", 200, "", &[2; 1000], 1000, 0);
    let spare = lock(&c.spare).as_ref().map(|b| b.as_ptr());
    assert!(spare.is_some(), "the replaced buffer is set aside");
    c.put("a", 200, "h", &[3; 999], 1000, 0);
    let hit = c.get("a", 1).unwrap();
    assert_eq!(Some(hit.data.as_ptr()), spare, "and reused");
    assert_eq!(&hit.data[..2], b"h\x03");
    c.put("a", 200, "", &[4; 1000], 1000, 0);
    assert_ne!(
      lock(&c.spare).as_ref().map(|b| b.as_ptr()),
      Some(hit.data.as_ptr()),
      "a buffer a hit holds is never reused"
    );
    assert_eq!(hit.data[1], 3);
    c.put("b", 200, "", &[5; 10], 1000, 0);
    assert_eq!(
      c.get("b", 1).unwrap().data.capacity(),
      10,
      "not a buffer 100× too big"
    );
  }

  #[test]
  fn expires_entries_and_keeps_headers_apart_from_body() {
    let c = ResponseLru::new(10, usize::MAX);
    c.put("k", 201, "a\0b", b"body", 100, 0);
    let hit = c.get("k", 99).unwrap();
    assert_eq!(
      (hit.status, hit.headers_len, &hit.data[..]),
      (201, 3, &b"a\0bbody"[..])
    );
    assert!(c.get("k", 100).is_none());
    assert_eq!(c.usage(), (0, 0));
  }

  /// Random puts, gets and deletes: the bounds always hold, the byte count
  /// always equals the sum of what is held, and a hit is the last put.
  mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
      Put {
        key: String,
        headers: String,
        body_len: usize,
        ttl_ms: i64,
      },
      Get(String),
      Delete(String),
      Advance(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
      let key = prop_oneof![4 => "[a-f]", 1 => ".{0,30}"];
      prop_oneof![
        4 => (key.clone(), "[a-z\\x00]{0,12}", 0usize..600, prop_oneof![Just(0i64), 1i64..100, Just(crate::clock::MAX_DURATION_MS)])
          .prop_map(|(key, headers, body_len, ttl_ms)| Op::Put { key, headers, body_len, ttl_ms }),
        3 => key.clone().prop_map(Op::Get),
        1 => key.prop_map(Op::Delete),
        1 => (0i64..60).prop_map(Op::Advance),
      ]
    }

    proptest! {
      #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

      #[test]
      fn keeps_its_bounds_and_its_books(max_entries in 1usize..8, max_bytes in 0usize..3_000, ops in prop::collection::vec(op(), 1..150)) {
        let lru = ResponseLru::new(max_entries, max_bytes);
        let mut last: HashMap<String, (String, usize, i64)> = HashMap::new();
        let mut now = 0i64;
        for op in ops {
          match op {
            Op::Put { key, headers, body_len, ttl_ms } => {
              lru.put(&key, 200, &headers, &vec![7u8; body_len], ttl_ms, now);
              last.insert(key, (headers, body_len, now.saturating_add(ttl_ms)));
            }
            Op::Get(key) => {
              if let Some(hit) = lru.get(&key, now) {
                let (headers, body_len, expires_at) = last.get(&key).expect("a hit was put");
                prop_assert!(now < *expires_at);
                prop_assert_eq!(&hit.data[..hit.headers_len], headers.as_bytes());
                prop_assert_eq!(hit.data.len() - hit.headers_len, *body_len);
              }
            }
            Op::Delete(key) => {
              lru.delete(&key);
              last.remove(&key);
            }
            Op::Advance(ms) => now += ms,
          }
          let state = lock(&lru.state);
          let charged: usize = state.entries.iter().map(|(k, e)| e.charge(k)).sum();
          prop_assert_eq!(state.bytes, charged);
          prop_assert!(state.bytes <= max_bytes);
          prop_assert!(state.entries.len() <= max_entries);
        }
      }
    }
  }
}
