//! The sliding-window estimate every backend computes (issue #18), defined
//! once here for the Rust stores; the Redis script and the PostgreSQL
//! statement compute the same numbers (the tests hold them to
//! `__test__/support/sliding-window.mjs`, the JS reference).
//!
//! Windows are aligned to multiples of their length since the epoch. A
//! key's count is this window's hits plus the previous window's hits scaled
//! by the share of that window still inside the rolling window that ends
//! now, rounded down: a burst at the end of one window still counts, most
//! of it, just after the boundary, so `max` at the end of one window and
//! `max` more at the start of the next cannot both pass.

/// The aligned window holding `now`, for windows of `length_ms` (at least
/// 1 ms; a 0 s window is one of 1 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
  pub start: i64,
  pub length: i64,
}

impl Window {
  pub fn at(now: i64, length_ms: i64) -> Self {
    let length = length_ms.max(1);
    Window {
      start: now - now.rem_euclid(length),
      length,
    }
  }

  /// When this window ends: the `resetAt` reported.
  pub fn end(&self) -> i64 {
    self.start.saturating_add(self.length)
  }

  /// The hits counted in the window that began at `started` (a key's
  /// stored window), as this window's `previous` share: all of them if it is
  /// the window just before this one, none if older.
  pub fn previous_hits(&self, started: i64, hits: i64) -> i64 {
    if started == self.start - self.length {
      hits
    } else {
      0
    }
  }

  /// The count reported at `now`: `current` hits of this window (the call's
  /// own included) plus `previous` ones scaled by the share of the previous
  /// window still inside the rolling window, rounded down.
  pub fn count(&self, now: i64, previous: i64, current: i64) -> i64 {
    let remaining = (self.end() - now).clamp(0, self.length);
    // i128 only when the product overflows: its division costs several times i64's.
    let carried = match previous.checked_mul(remaining) {
      Some(product) => product / self.length,
      None => (i128::from(previous) * i128::from(remaining) / i128::from(self.length)) as i64,
    };
    current.saturating_add(carried)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn windows_align_to_multiples_of_their_length() {
    assert_eq!(
      Window::at(12_345, 1000),
      Window {
        start: 12_000,
        length: 1000
      }
    );
    assert_eq!(Window::at(12_000, 1000).start, 12_000);
    assert_eq!(
      Window::at(5, 0),
      Window {
        start: 5,
        length: 1
      }
    );
    assert_eq!(Window::at(12_345, 1000).end(), 13_000);
  }

  #[test]
  fn a_burst_before_the_boundary_mostly_counts_after_it() {
    let window = Window::at(10_050, 1000);
    // 10 hits in [9000, 10000), now 50 ms into the next: 95 % of them count.
    let previous = window.previous_hits(9000, 10);
    assert_eq!(window.count(10_050, previous, 1), 1 + 9);
    assert_eq!(window.previous_hits(8000, 10), 0);
    assert_eq!(window.previous_hits(10_000, 10), 0);
  }

  #[test]
  fn extreme_counts_do_not_overflow() {
    let window = Window::at(1 << 52, crate::clock::MAX_DURATION_MS);
    assert_eq!(window.count(1 << 52, i64::MAX, 1), i64::MAX);
  }
}
