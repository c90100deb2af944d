//! The sliding window (issue #18), with the arithmetic of
//! [`crate::sliding_window`]: a key holds its current aligned window's start
//! and hits and the previous window's hits, so each call is O(1).

use super::{Algorithm, Hit};
use crate::clock::Now;
use crate::sliding_window::Window;

/// A key's last window (`start`, `length`, its `current` hits) and the
/// hits of the one before it. (Calls on one key with several window lengths
/// count as the reference model does, by `start` alone; `length` is the
/// longest seen in the window, so the entry lives as long as any needs it.)
#[derive(Clone, Copy, Debug)]
pub struct Windows {
  start: i64,
  length: i64,
  current: u64,
  previous: u64,
}

pub struct SlidingWindow;

impl SlidingWindow {
  fn entry(window: Window, previous: u64) -> Windows {
    Windows {
      start: window.start,
      length: window.length,
      current: 1,
      previous,
    }
  }

  fn answer(window: Window, now: i64, entry: &Windows) -> Hit {
    let count = window.count(now, entry.previous as i64, entry.current as i64);
    Hit::new(count as u64, window.end())
  }
}

impl Algorithm for SlidingWindow {
  type Entry = Windows;

  fn first(window_ms: i64, now: &Now) -> (Windows, Hit) {
    let now = now.ms();
    let window = Window::at(now, window_ms);
    let entry = Self::entry(window, 0);
    (entry, Self::answer(window, now, &entry))
  }

  fn hit(entry: &mut Windows, window_ms: i64, now: &Now) -> (Hit, bool) {
    // Most hits land in the key's window, found by comparisons rather than
    // the division that aligns a window; with nothing carried into it, the
    // count needs not even the precise clock.
    let end = entry.start.saturating_add(entry.length);
    if entry.length == window_ms.max(1) {
      if entry.previous == 0 && now.is_within(entry.start, end) {
        entry.current += 1;
        return (Hit::new(entry.current, end), false);
      }
      let ms = now.ms();
      if entry.start <= ms && ms < end {
        entry.current += 1;
        let window = Window {
          start: entry.start,
          length: entry.length,
        };
        return (Self::answer(window, ms, entry), false);
      }
    }
    let now = now.ms();
    let window = Window::at(now, window_ms);
    if window.start == entry.start {
      entry.current += 1;
      // A call with a longer window (another policy on the same key) keeps
      // the entry for longer: the expiry moves, so it is queued again.
      let longer = window.length > entry.length;
      entry.length = entry.length.max(window.length);
      return (Self::answer(window, now, entry), longer);
    }
    let previous = window.previous_hits(entry.start, entry.current as i64) as u64;
    *entry = Self::entry(window, previous);
    (Self::answer(window, now, entry), true)
  }

  /// The end of the window after the entry's: from then it carries nothing.
  fn expires_at(entry: &Windows) -> i64 {
    entry.start.saturating_add(entry.length.saturating_mul(2))
  }
}

#[cfg(test)]
mod tests {
  use super::super::{Counters, FAIL_CLOSED_COUNT};
  use super::*;

  fn at(counters: &Counters<SlidingWindow>, key: &str, window_ms: i64, now: i64) -> (f64, i64) {
    let hit = counters.increment(key, window_ms, &Now::at(now));
    (hit.count, hit.reset_at)
  }

  #[test]
  fn a_burst_before_the_boundary_counts_after_it() {
    let c = Counters::<SlidingWindow>::new(10);
    assert_eq!(at(&c, "a", 1000, 5000), (1.0, 6000));
    for i in 2..=10 {
      assert_eq!(at(&c, "a", 1000, 5990).0, i as f64);
    }
    // 1 ms past the boundary: 10 × 999/1000 → 9 carried.
    assert_eq!(at(&c, "a", 1000, 6001), (10.0, 7000));
    // Half-way through: current 2, plus 10 × 500/1000.
    assert_eq!(at(&c, "a", 1000, 6500), (2.0 + 5.0, 7000));
    // Quiet through [7000, 8000): nothing carried into [8000, 9000).
    assert_eq!(at(&c, "a", 1000, 8000), (1.0, 9000));
  }

  #[test]
  fn an_entry_expires_once_it_can_carry_nothing() {
    let c = Counters::<SlidingWindow>::new(1);
    at(&c, "a", 1000, 5500);
    // "a" still carries into [6000, 7000), so "b" fails closed until 7000.
    assert_eq!(at(&c, "b", 1000, 6999), (FAIL_CLOSED_COUNT, 7000));
    assert_eq!(at(&c, "b", 1000, 7000), (1.0, 8000));
    assert_eq!(c.len(), 1);
  }

  #[test]
  fn a_longer_window_on_the_same_start_keeps_the_entry_longer() {
    let c = Counters::<SlidingWindow>::new(1);
    at(&c, "a", 1, 3700);
    // Same start (3700 is a multiple of 37 and of 1): one window, now 37 ms long.
    assert_eq!(at(&c, "a", 37, 3700), (2.0, 3737));
    assert_eq!(at(&c, "b", 1, 3773).0, FAIL_CLOSED_COUNT);
    assert_eq!(at(&c, "b", 1, 3774), (1.0, 3775));
  }
}

/// Model-based fuzzing: random keys, window lengths and clock steps against a
/// plain map computing the sliding count from scratch, with the fail-closed
/// bound.
#[cfg(test)]
mod fuzz {
  use super::super::{Counters, FAIL_CLOSED_COUNT};
  use super::*;
  use proptest::prelude::*;
  use std::collections::HashMap;

  /// A key's window start, its hits and the previous window's hits.
  type Model = HashMap<String, (i64, i64, u64, u64)>;

  fn expected(model: &mut Model, max_keys: usize, key: &str, length: i64, now: i64) -> Hit {
    let start = now - now.rem_euclid(length);
    let end = start + length;
    let carries = |(s, l, _, _): &(i64, i64, u64, u64)| now < s + 2 * l;
    let (previous, current) = match model.get(key) {
      Some(&(s, _, current, previous)) if s == start => (previous, current + 1),
      Some(&(s, _, current, _)) if s == start - length => (current, 1),
      _ => (0, 1),
    };
    if !model.contains_key(key) || !carries(&model[key]) {
      let live_others = model
        .iter()
        .filter(|(k, e)| k.as_str() != key && carries(e))
        .count();
      if live_others >= max_keys {
        model.remove(key);
        return Hit {
          count: FAIL_CLOSED_COUNT,
          reset_at: end,
        };
      }
    }
    model.insert(key.to_string(), (start, length, current, previous));
    let carried = previous as i128 * (end - now) as i128 / length as i128;
    Hit::new(current + carried as u64, end)
  }

  proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_sliding_window_model(
      max_keys in 1usize..5,
      lengths in prop::collection::vec(prop_oneof![Just(1i64), 2i64..40, Just(1000)], 4),
      steps in prop::collection::vec((0usize..4, 0i64..60), 1..150),
    ) {
      // Each key keeps one window length, as each rateLimit policy does.
      let counters = Counters::<SlidingWindow>::new(max_keys);
      let mut model = Model::new();
      let mut now = 1_700_000_000_000i64;
      for (index, advance) in steps {
        let (key, length) = (["a", "b", "c", "d"][index], lengths[index]);
        now += advance;
        let hit = counters.increment(key, length, &Now::at(now));
        prop_assert_eq!(hit, expected(&mut model, max_keys, key, length, now), "key {} at {}", key, now);
        prop_assert!(counters.len() <= max_keys);
      }
    }
  }
}
