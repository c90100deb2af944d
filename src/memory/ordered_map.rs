//! A concurrent map from string keys to small values that keeps each
//! shard's entries in insertion order, as the JS engines' `Map`s do.
//!
//! A hash table holding its entries in its own buckets (dashmap's) reads a
//! random bucket on every lookup: with 100k keys that is a cache miss each
//! time, whatever order keys come in. Here each shard's table holds only
//! the 4-byte positions of entries (small enough to stay in cache) and the
//! entries live in a slab in the order they were inserted, so keys that come
//! back in the order they first came (a client that returns, a benchmark's
//! loop) read the slab sequentially and the CPU prefetches it; in any other
//! order a lookup costs one miss, as before (docs/runtimes-speed.md).

use std::hash::BuildHasher;

use compact_str::CompactString;
use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::short_lock::{ShortLock, ShortLockGuard};

/// How many shards, each with its own lock: two per core (at least 4, at
/// most 256), so worker threads rarely wait on each other, and no more, as
/// each shard's slab is one more stream of reads for the CPU to prefetch
/// (on 2 cores, 100k keys in insertion order measured 0.96–1.49× Stoma's in
/// Bun and Deno with 16 shards, 1.36–2.16× with 4).
fn shard_count() -> usize {
  let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
  (cores * 2).next_power_of_two().clamp(4, 256)
}

struct Entry<V> {
  key: CompactString,
  value: V,
}

/// One shard: the table of positions, the slab, and the slab's free places
/// (left by removed entries, reused before the slab grows).
struct Shard<V> {
  index: HashTable<u32>,
  slab: Vec<Entry<V>>,
  free: Vec<u32>,
}

/// A shard alone on its cache lines, so that two threads locking
/// neighbouring shards do not contend for one line.
#[repr(align(128))]
struct Padded<V>(ShortLock<Shard<V>>);

pub struct OrderedMap<V> {
  shards: Box<[Padded<V>]>,
  /// The shard count less one (a power of two less one).
  mask: u64,
  hasher: RandomState,
}

impl<V> OrderedMap<V> {
  pub fn new() -> Self {
    let count = shard_count();
    OrderedMap {
      mask: count as u64 - 1,
      shards: (0..count)
        .map(|_| {
          Padded(ShortLock::new(Shard {
            index: HashTable::new(),
            slab: Vec::new(),
            free: Vec::new(),
          }))
        })
        .collect(),
      hasher: RandomState::default(),
    }
  }

  /// The key's hash and its shard, locked.
  fn shard(&self, key: &str) -> (u64, ShortLockGuard<'_, Shard<V>>) {
    let hash = self.hasher.hash_one(key);
    // The table uses the hash's low bits and its top seven; the shard (a
    // power of two of them) bits from 32 up.
    let shard = ((hash >> 32) & self.mask) as usize;
    (hash, self.shards[shard].0.lock())
  }

  /// Runs `f` on the key's value, if the key is present, under its shard's lock.
  pub fn with_mut<R>(&self, key: &str, f: impl FnOnce(&mut V) -> R) -> Option<R> {
    let (hash, mut shard) = self.shard(key);
    let Shard { index, slab, .. } = &mut *shard;
    let &at = index.find(hash, |&at| slab[at as usize].key == key)?;
    Some(f(&mut slab[at as usize].value))
  }

  /// Inserts `value` under `key` unless the key is present; answers whether it did.
  pub fn insert_new(&self, key: &str, value: V) -> bool {
    let (hash, mut shard) = self.shard(key);
    let Shard { index, slab, free } = &mut *shard;
    if index
      .find(hash, |&at| slab[at as usize].key == key)
      .is_some()
    {
      return false;
    }
    let entry = Entry {
      key: CompactString::from(key),
      value,
    };
    let at = match free.pop() {
      Some(at) => {
        slab[at as usize] = entry;
        at
      }
      None => {
        slab.push(entry);
        // A store holds at most maxKeys keys, far fewer than 2^32 a shard.
        (slab.len() - 1) as u32
      }
    };
    let hasher = &self.hasher;
    index.insert_unique(hash, at, |&at| {
      hasher.hash_one(slab[at as usize].key.as_str())
    });
    true
  }

  /// Removes the key's entry if `condition` holds for its value; answers whether it did.
  pub fn remove_if(&self, key: &str, condition: impl FnOnce(&V) -> bool) -> bool {
    let (hash, mut shard) = self.shard(key);
    let Shard { index, slab, free } = &mut *shard;
    let Ok(found) = index.find_entry(hash, |&at| slab[at as usize].key == key) else {
      return false;
    };
    let at = *found.get();
    if !condition(&slab[at as usize].value) {
      return false;
    }
    found.remove();
    // Frees a key kept on the heap (over 24 bytes) now, not when the place is reused.
    slab[at as usize].key = CompactString::default();
    free.push(at);
    true
  }

  /// Removes every entry.
  pub fn clear(&self) {
    for shard in self.shards.iter() {
      let mut shard = shard.0.lock();
      shard.index.clear();
      shard.slab.clear();
      shard.free.clear();
    }
  }

  /// Number of entries (locks every shard in turn).
  pub fn len(&self) -> usize {
    self
      .shards
      .iter()
      .map(|shard| shard.0.lock().index.len())
      .sum()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn inserts_finds_updates_and_removes() {
    let map = OrderedMap::new();
    assert!(map.insert_new("a", 1));
    assert!(!map.insert_new("a", 2), "present already");
    assert!(map.insert_new("a long key that is kept on the heap", 3));
    assert_eq!(map.with_mut("a", |v| std::mem::replace(v, 10)), Some(1));
    assert_eq!(map.with_mut("a", |v| *v), Some(10));
    assert_eq!(map.with_mut("b", |v| *v), None);
    assert!(!map.remove_if("a", |&v| v == 1));
    assert!(map.remove_if("a", |&v| v == 10));
    assert!(!map.remove_if("a", |_| true));
    assert_eq!(map.len(), 1);
    map.clear();
    assert_eq!(map.len(), 0);
    assert_eq!(
      map.with_mut("a long key that is kept on the heap", |v| *v),
      None
    );
  }

  #[test]
  fn reuses_the_places_of_removed_entries() {
    let map = OrderedMap::new();
    for round in 0..3 {
      for i in 0..10_000 {
        assert!(map.insert_new(&format!("key:{i}"), i + round));
      }
      for i in 0..10_000 {
        assert_eq!(map.with_mut(&format!("key:{i}"), |v| *v), Some(i + round));
        assert!(map.remove_if(&format!("key:{i}"), |_| true));
      }
    }
    let slabs: usize = map.shards.iter().map(|s| s.0.lock().slab.len()).sum();
    assert_eq!(
      slabs, 10_000,
      "the slabs did not grow past the most keys held"
    );
    assert_eq!(map.len(), 0);
  }
}
