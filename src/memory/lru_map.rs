//! A map from string keys to small values that forgets the least recently
//! used entry first: the circuit table's, behind its one lock.
//!
//! The `lru` crate keeps each entry in its own heap node behind a hash table
//! of pointers, and relinks it on every read: a circuit read went through
//! the table, the node, the key it points to and three neighbours' links
//! (~60 ns of native time a call in a profile, more than Stoma's whole
//! read). Here entries sit in a slab, linked by 4-byte positions, keys up to
//! 24 bytes inline; a table of positions finds them; and reading the most
//! recently used entry (the one circuit read on every request) moves nothing.

use std::hash::BuildHasher;

use compact_str::CompactString;
use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// "No entry", as a link.
const NONE: u32 = u32::MAX;

struct Node<V> {
  key: CompactString,
  value: V,
  /// Towards the most recently used end.
  newer: u32,
  /// Towards the least recently used end.
  older: u32,
}

pub struct LruMap<V> {
  index: HashTable<u32>,
  slab: Vec<Node<V>>,
  /// Places in the slab left by removed entries, reused before it grows.
  free: Vec<u32>,
  newest: u32,
  oldest: u32,
  hasher: RandomState,
}

impl<V> LruMap<V> {
  pub fn new() -> Self {
    LruMap {
      index: HashTable::new(),
      slab: Vec::new(),
      free: Vec::new(),
      newest: NONE,
      oldest: NONE,
      hasher: RandomState::default(),
    }
  }

  pub fn len(&self) -> usize {
    self.index.len()
  }

  fn find(&self, key: &str) -> Option<u32> {
    let slab = &self.slab;
    let hash = self.hasher.hash_one(key);
    self
      .index
      .find(hash, |&at| slab[at as usize].key == key)
      .copied()
  }

  /// Takes the entry at `at` out of the recency list.
  fn unlink(&mut self, at: u32) {
    let Node { newer, older, .. } = self.slab[at as usize];
    match newer {
      NONE => self.newest = older,
      newer => self.slab[newer as usize].older = older,
    }
    match older {
      NONE => self.oldest = newer,
      older => self.slab[older as usize].newer = newer,
    }
  }

  /// Puts the (unlinked) entry at `at` at the most recently used end.
  fn link_newest(&mut self, at: u32) {
    let node = &mut self.slab[at as usize];
    node.newer = NONE;
    node.older = self.newest;
    match self.newest {
      NONE => self.oldest = at,
      newest => self.slab[newest as usize].newer = at,
    }
    self.newest = at;
  }

  /// The key's value, marked most recently used.
  pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
    let at = self.find(key)?;
    if at != self.newest {
      self.unlink(at);
      self.link_newest(at);
    }
    Some(&mut self.slab[at as usize].value)
  }

  /// Inserts `value` under `key`, which must be absent, as the most
  /// recently used entry.
  pub fn insert_new(&mut self, key: &str, value: V) {
    let node = Node {
      key: CompactString::from(key),
      value,
      newer: NONE,
      older: NONE,
    };
    let at = match self.free.pop() {
      Some(at) => {
        self.slab[at as usize] = node;
        at
      }
      None => {
        self.slab.push(node);
        // The table holds at most maxKeys circuits, far fewer than 2^32.
        (self.slab.len() - 1) as u32
      }
    };
    let (slab, hasher) = (&self.slab, &self.hasher);
    let hash = hasher.hash_one(key);
    self.index.insert_unique(hash, at, |&at| {
      hasher.hash_one(slab[at as usize].key.as_str())
    });
    self.link_newest(at);
  }

  /// Removes the key's entry; answers whether there was one.
  pub fn remove(&mut self, key: &str) -> bool {
    let slab = &self.slab;
    let hash = self.hasher.hash_one(key);
    let Ok(found) = self
      .index
      .find_entry(hash, |&at| slab[at as usize].key == key)
    else {
      return false;
    };
    let (at, _) = found.remove();
    self.forget(at);
    true
  }

  /// Removes the least recently used entry, if any.
  pub fn remove_oldest(&mut self) {
    let at = self.oldest;
    if at == NONE {
      return;
    }
    let (slab, hasher) = (&self.slab, &self.hasher);
    let hash = hasher.hash_one(slab[at as usize].key.as_str());
    if let Ok(found) = self.index.find_entry(hash, |&other| other == at) {
      found.remove();
    }
    self.forget(at);
  }

  /// Unlinks the entry at `at`, already out of the index, and frees its place.
  fn forget(&mut self, at: u32) {
    self.unlink(at);
    // Frees a key kept on the heap (over 24 bytes) now, not when the place is reused.
    self.slab[at as usize].key = CompactString::default();
    self.free.push(at);
  }

  pub fn clear(&mut self) {
    self.index.clear();
    self.slab.clear();
    self.free.clear();
    self.newest = NONE;
    self.oldest = NONE;
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Keys from the most to the least recently used, by the links.
  fn order(map: &LruMap<u32>) -> Vec<String> {
    let mut keys = Vec::new();
    let mut at = map.newest;
    while at != NONE {
      keys.push(map.slab[at as usize].key.to_string());
      at = map.slab[at as usize].older;
    }
    keys
  }

  #[test]
  fn reads_move_entries_to_the_newest_end() {
    let mut map = LruMap::new();
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
      map.insert_new(key, i as u32);
    }
    assert_eq!(order(&map), ["c", "b", "a"]);
    *map.get_mut("a").unwrap() += 10;
    assert_eq!(order(&map), ["a", "c", "b"]);
    assert_eq!(map.get_mut("a").copied(), Some(10));
    assert_eq!(map.get_mut("zz"), None);
    map.remove_oldest();
    assert_eq!(order(&map), ["a", "c"]);
    assert!(map.remove("a"));
    assert!(!map.remove("a"));
    assert_eq!(order(&map), ["c"]);
    map.insert_new("a key long enough to be kept on the heap", 7);
    assert_eq!(
      order(&map),
      ["a key long enough to be kept on the heap", "c"]
    );
    assert_eq!(map.slab.len(), 3, "a freed place was reused");
    map.clear();
    assert_eq!((map.len(), order(&map).len()), (0, 0));
  }

  /// Random operations against a plain list kept in recency order.
  mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
      #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

      #[test]
      fn matches_a_recency_list(ops in prop::collection::vec((0u8..4, "[a-f]"), 1..200)) {
        let mut map = LruMap::new();
        let mut model: Vec<String> = Vec::new(); // most recent first
        for (op, key) in ops {
          match op {
            0 => {
              let found = map.get_mut(&key).is_some();
              prop_assert_eq!(found, model.contains(&key));
              if found {
                model.retain(|k| *k != key);
                model.insert(0, key);
              }
            }
            1 => {
              if !model.contains(&key) {
                map.insert_new(&key, 0);
                model.insert(0, key);
              }
            }
            2 => {
              prop_assert_eq!(map.remove(&key), model.contains(&key));
              model.retain(|k| *k != key);
            }
            _ => {
              map.remove_oldest();
              model.pop();
            }
          }
          prop_assert_eq!(&order(&map), &model);
          prop_assert_eq!(map.len(), model.len());
        }
      }
    }
  }
}
