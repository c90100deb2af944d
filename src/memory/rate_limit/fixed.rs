//! The fixed window (Stoma's semantics, the default): a key's first hit
//! opens a window of `windowMs`; later hits inside it add one; the first hit
//! at or after `resetAt` opens a new window at count 1.

use super::{Algorithm, Hit};
use crate::clock::Now;

/// A key's open window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
  count: u64,
  reset_at: i64,
}

pub struct FixedWindow;

impl Algorithm for FixedWindow {
  type Entry = Window;

  fn first(window_ms: i64, now: &Now) -> (Window, Hit) {
    let reset_at = now.ms() + window_ms;
    (Window { count: 1, reset_at }, Hit::new(1, reset_at))
  }

  fn hit(window: &mut Window, window_ms: i64, now: &Now) -> (Hit, bool) {
    // Checked against the coarse clock first: most hits need no precise read.
    if now.is_before(window.reset_at) {
      window.count += 1;
      return (Hit::new(window.count, window.reset_at), false);
    }
    let (reopened, hit) = Self::first(window_ms, now);
    *window = reopened;
    (hit, true)
  }

  fn expires_at(window: &Window) -> i64 {
    window.reset_at
  }
}
