//! The near cache: copies of cache entries and circuit snapshots kept in
//! this process, answered without asking Redis, and dropped as soon as Redis
//! says they changed (client-side caching, `CLIENT TRACKING`).
//!
//! Each connection runs in RESP3 with `CLIENT TRACKING ON OPTIN NOLOOP`: a
//! read sent right after `CLIENT CACHING yes` makes the server remember the
//! key for this connection, and any later change by another client — a
//! write, a delete, an expiry, `FLUSHALL` — arrives as an `invalidate` push
//! on the same connection. Our own writes do not come back (`NOLOOP`): their
//! answers update the copy instead (a circuit's snapshot, a cache entry we
//! put, a key we deleted).
//!
//! The race: a read's answer can carry a value that changed after the server
//! read it, when its invalidation is handled first. Every read therefore
//! takes a ticket when it is made ([`NearCache::lookup`]); an invalidation
//! of its key, or of everything, voids the tickets taken before it, and an
//! answer is kept only if its ticket is still good ([`NearCache::keep`]). A
//! lost connection empties the cache before anything else is answered: the
//! invalidations it would have brought are gone with it.
//!
//! The cache is bounded by entries and by bytes (least recently used out
//! first), and an entry never outlives the key's expiry in Redis.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use ::redis::Value;
use lru::LruCache;

use super::replies::Cached;
use crate::errors::lock;
// Bytes charged to an entry on top of its key and value, as the memory cache counts.
use crate::memory::ENTRY_OVERHEAD;

/// What is known about a key.
#[derive(Clone)]
pub enum Copy {
  /// A cache entry.
  Response(Arc<Cached>),
  /// A circuit's state code and its four numbers.
  Snapshot(u8, [f64; 4]),
  /// Nothing is stored under the key (a miss; an unknown circuit).
  Absent,
}

impl Copy {
  fn bytes(&self) -> usize {
    match self {
      Copy::Response(response) => response.1.len() + response.2.len(),
      Copy::Snapshot(..) | Copy::Absent => 0,
    }
  }
}

struct Entry {
  copy: Copy,
  /// When the key expires in Redis, in epoch ms (`None`: no expiry).
  expires_at: Option<i64>,
  bytes: usize,
}

pub struct NearCache {
  inner: Mutex<Inner>,
  max_entries: NonZeroUsize,
  max_bytes: usize,
}

struct Inner {
  entries: LruCache<Box<[u8]>, Entry>,
  bytes: usize,
  /// Reads answered from a copy, for `stats()`.
  hits: u64,
  /// The latest ticket taken for each key read or written now.
  tickets: HashMap<Box<[u8]>, u64>,
  next_ticket: u64,
  /// Tickets held at most: a call that ends without its answer being kept
  /// or forgotten (it failed before an answer came, or was merged with
  /// others) leaves its ticket behind, so past this many all are voided at
  /// once. That is always safe: a voided ticket only means an answer is
  /// not kept.
  max_tickets: usize,
}

/// A read's (or write's) ticket: its answer may be kept unless its key, or
/// everything, was invalidated after it was taken, or a later read or write
/// of the key took another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// What a read finds before asking Redis.
pub enum Lookup {
  /// A live copy: answer with it.
  Hit(Copy),
  /// Ask Redis, with this ticket.
  Miss(Ticket),
}

impl NearCache {
  pub fn new(max_entries: usize, max_bytes: usize) -> Self {
    NearCache {
      inner: Mutex::new(Inner {
        entries: LruCache::unbounded(),
        bytes: 0,
        hits: 0,
        tickets: HashMap::new(),
        next_ticket: 1,
        max_tickets: max_entries.saturating_mul(2).max(1024),
      }),
      max_entries: NonZeroUsize::new(max_entries.max(1)).expect("at least one"),
      max_bytes,
    }
  }

  /// The live copy of `key` (at `now`, epoch ms), or a ticket to read it.
  pub fn lookup(&self, key: &[u8], now: i64) -> Lookup {
    let mut inner = lock(&self.inner);
    if let Some(entry) = inner.entries.get(key) {
      if entry.expires_at.is_none_or(|at| at > now) {
        let copy = entry.copy.clone();
        inner.hits += 1;
        return Lookup::Hit(copy);
      }
      inner.remove(key);
    }
    Lookup::Miss(inner.ticket(key))
  }

  /// A ticket for a write of `key` whose answer will update the copy.
  pub fn writing(&self, key: &[u8]) -> Ticket {
    lock(&self.inner).ticket(key)
  }

  /// Keeps `copy` as `key`'s value (expiring at `expires_at`) if `ticket`
  /// is still good.
  pub fn keep(&self, key: &[u8], ticket: Ticket, copy: Copy, expires_at: Option<i64>) {
    let mut inner = lock(&self.inner);
    if inner.tickets.get(key) != Some(&ticket.0) {
      return;
    }
    inner.tickets.remove(key);
    inner.remove(key);
    let bytes = key.len() + copy.bytes() + ENTRY_OVERHEAD;
    if bytes > self.max_bytes {
      return;
    }
    inner.bytes += bytes;
    inner.entries.put(
      key.into(),
      Entry {
        copy,
        expires_at,
        bytes,
      },
    );
    while inner.entries.len() > self.max_entries.get() || inner.bytes > self.max_bytes {
      match inner.entries.pop_lru() {
        Some((_, evicted)) => inner.bytes -= evicted.bytes,
        None => break,
      }
    }
  }

  /// A read or write of `key` ended with nothing to keep (it failed, or its
  /// answer cannot be trusted): the copy, if any, goes too.
  pub fn forget(&self, key: &[u8], ticket: Ticket) {
    let mut inner = lock(&self.inner);
    if inner.tickets.get(key) == Some(&ticket.0) {
      inner.tickets.remove(key);
    }
    inner.remove(key);
  }

  /// Drops the copy of `key` and voids the tickets taken for it.
  pub fn invalidate(&self, key: &[u8]) {
    let mut inner = lock(&self.inner);
    inner.remove(key);
    inner.tickets.remove(key);
  }

  /// Drops every copy and voids every ticket.
  pub fn clear(&self) {
    let mut inner = lock(&self.inner);
    inner.entries.clear();
    inner.bytes = 0;
    inner.tickets.clear();
  }

  /// Acts on a push message from the server: `invalidate` of some keys, or
  /// of everything (a null list: `FLUSHALL`, `FLUSHDB`).
  pub fn pushed(&self, message: &Value) {
    let Value::Push { kind, data } = message else {
      return;
    };
    if !matches!(kind, ::redis::PushKind::Invalidate) {
      return;
    }
    match data.first() {
      Some(Value::Array(keys)) => {
        for key in keys {
          if let Value::BulkString(key) = key {
            self.invalidate(key);
          }
        }
      }
      _ => self.clear(),
    }
  }

  /// Copies held, the bytes charged for them, and the reads answered from
  /// one so far.
  pub fn size(&self) -> (usize, usize, u64) {
    let inner = lock(&self.inner);
    (inner.entries.len(), inner.bytes, inner.hits)
  }
}

impl Inner {
  fn ticket(&mut self, key: &[u8]) -> Ticket {
    if self.tickets.len() >= self.max_tickets {
      self.tickets.clear();
    }
    let ticket = self.next_ticket;
    self.next_ticket += 1;
    self.tickets.insert(key.into(), ticket);
    Ticket(ticket)
  }

  fn remove(&mut self, key: &[u8]) {
    if let Some(entry) = self.entries.pop(key) {
      self.bytes -= entry.bytes;
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn snapshot(failures: f64) -> Copy {
    Copy::Snapshot(0, [failures, 0.0, 0.0, 0.0])
  }

  fn hit(cache: &NearCache, key: &[u8]) -> Option<f64> {
    match cache.lookup(key, 0) {
      Lookup::Hit(Copy::Snapshot(_, numbers)) => Some(numbers[0]),
      _ => None,
    }
  }

  fn ticket(cache: &NearCache, key: &[u8]) -> Ticket {
    match cache.lookup(key, 0) {
      Lookup::Miss(ticket) => ticket,
      Lookup::Hit(_) => panic!("expected a miss"),
    }
  }

  #[test]
  fn tickets_left_behind_are_bounded() {
    let cache = NearCache::new(10, 1 << 20);
    // Reads that never end (their calls failed), over many keys.
    for n in 0..100_000u32 {
      ticket(&cache, &n.to_be_bytes());
    }
    assert!(lock(&cache.inner).tickets.len() <= 1024);
    // Voiding them costs at most a copy not kept.
    let read = ticket(&cache, b"k");
    cache.keep(b"k", read, snapshot(1.0), None);
    assert_eq!(hit(&cache, b"k"), Some(1.0));
  }

  #[test]
  fn an_answer_is_kept_only_if_nothing_invalidated_its_key_since_it_was_asked() {
    let cache = NearCache::new(10, 1 << 20);
    let read = ticket(&cache, b"k");
    cache.keep(b"k", read, snapshot(1.0), None);
    assert_eq!(hit(&cache, b"k"), Some(1.0));

    // The race: the answer comes after its key's invalidation was handled.
    cache.invalidate(b"k");
    let read = ticket(&cache, b"k");
    cache.invalidate(b"k");
    cache.keep(b"k", read, snapshot(2.0), None);
    assert_eq!(hit(&cache, b"k"), None);

    // A whole-cache invalidation voids every ticket.
    let read = ticket(&cache, b"k");
    cache.clear();
    cache.keep(b"k", read, snapshot(3.0), None);
    assert_eq!(hit(&cache, b"k"), None);

    // A later read or write takes over: only its answer is kept.
    let first = ticket(&cache, b"k");
    let write = cache.writing(b"k");
    cache.keep(b"k", first, snapshot(4.0), None);
    assert_eq!(cache.size().0, 0);
    cache.keep(b"k", write, snapshot(5.0), None);
    assert_eq!(hit(&cache, b"k"), Some(5.0));
  }

  #[test]
  fn copies_expire_with_their_keys_and_stay_within_the_bounds() {
    let cache = NearCache::new(3, 1 << 20);
    let read = ticket(&cache, b"short");
    cache.keep(b"short", read, snapshot(1.0), Some(100));
    assert!(matches!(cache.lookup(b"short", 99), Lookup::Hit(_)));
    assert!(matches!(cache.lookup(b"short", 100), Lookup::Miss(_)));
    for key in [&b"a"[..], b"b", b"c", b"d"] {
      let read = ticket(&cache, key);
      cache.keep(key, read, snapshot(1.0), None);
    }
    assert_eq!(cache.size().0, 3);
    assert_eq!(hit(&cache, b"a"), None, "the least recently used went");

    let body = Arc::new((200, String::new(), vec![0; 1000]));
    let small = NearCache::new(100, 3 * (1000 + 1 + ENTRY_OVERHEAD));
    for key in [&b"1"[..], b"2", b"3", b"4"] {
      let read = ticket(&small, key);
      small.keep(key, read, Copy::Response(Arc::clone(&body)), None);
    }
    let (entries, bytes, _) = small.size();
    assert_eq!((entries, bytes), (3, 3 * (1000 + 1 + ENTRY_OVERHEAD)));
  }

  #[test]
  fn invalidation_pushes_drop_keys_or_everything() {
    let cache = NearCache::new(10, 1 << 20);
    for key in [&b"a"[..], b"b"] {
      let read = ticket(&cache, key);
      cache.keep(key, read, snapshot(1.0), None);
    }
    let push = |data| Value::Push {
      kind: ::redis::PushKind::Invalidate,
      data,
    };
    cache.pushed(&push(vec![Value::Array(vec![Value::BulkString(
      b"a".to_vec(),
    )])]));
    assert_eq!((hit(&cache, b"a"), hit(&cache, b"b")), (None, Some(1.0)));
    cache.pushed(&push(vec![Value::Nil]));
    assert_eq!(hit(&cache, b"b"), None);
  }
}
