//! The sliding window (issue #18), with the arithmetic of
//! [`crate::sliding_window`]: a key holds its current aligned window's start
//! and hits and the previous window's hits, so each call is O(1).

use super::{Algorithm, Hit};
use crate::clock::Now;
use crate::sliding_window::Window;

/// A key's last window and the one before it.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
  start: i64,
  current: u64,
  previous: u64,
  /// When this entry stops mattering: the end of the window after `start`'s,
  /// from which a hit counts nothing from it.
  expires_at: i64,
}

pub struct SlidingWindow;

impl SlidingWindow {
  fn entry(window: Window, previous: u64) -> Windows {
    Windows {
      start: window.start,
      current: 1,
      previous,
      expires_at: window.end().saturating_add(window.length),
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
    let now = now.ms();
    let window = Window::at(now, window_ms);
    if window.start == entry.start {
      entry.current += 1;
      return (Self::answer(window, now, entry), false);
    }
    let previous = window.previous_hits(entry.start, entry.current as i64) as u64;
    *entry = Self::entry(window, previous);
    (Self::answer(window, now, entry), true)
  }

  fn expires_at(entry: &Windows) -> i64 {
    entry.expires_at
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
    assert_eq!(at(&c, "a", 1000, 6500), (11.0 - 5.0, 7000));
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
}
