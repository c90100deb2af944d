//! Wall-clock time in epoch milliseconds.
//!
//! Every store reports `resetAt`, `lastFailureTime` and expiry instants as
//! epoch milliseconds, the same unit as JavaScript's `Date.now()`, so values
//! written by Stoma's JS stores and by ours compare directly.
//!
//! Reading the precise clock costs ~22 ns here, a tenth of a whole
//! rate-limit call; the kernel's coarse clock costs ~6 ns but lags by up to
//! one tick (4 ms). [`Now`] reads the coarse clock first and the precise one
//! only when the answer depends on it, so results are exactly those of
//! `Date.now()` while most calls skip the precise read; and neither until
//! asked (reading a known circuit needs no clock at all).

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// No frozen time: the clocks read the system's.
const UNFROZEN: i64 = i64::MIN;

/// A time every clock read answers while set, so tests can place calls at
/// exact instants (a window's boundary) on every store that reads this
/// clock: memory, and Redis and PostgreSQL, which are sent our time. Set
/// only by the `__setTestClock` hook (see `crate::testing`).
static FROZEN: AtomicI64 = AtomicI64::new(UNFROZEN);

/// Freezes the clock at `ms`, or lets it run again with `None`.
pub fn freeze(ms: Option<i64>) {
  FROZEN.store(ms.unwrap_or(UNFROZEN), Ordering::Relaxed);
}

fn frozen() -> Option<i64> {
  let ms = FROZEN.load(Ordering::Relaxed);
  (ms != UNFROZEN).then_some(ms)
}

/// Milliseconds since the Unix epoch, like `Date.now()`.
///
/// A clock set before 1970 reads as 0 rather than panicking.
pub fn now_ms() -> i64 {
  if let Some(ms) = frozen() {
    return ms;
  }
  precise_ms()
}

/// How far the coarse clock may trail the precise one: two 4 ms ticks, with
/// room to spare for a late tick.
const COARSE_SLACK_MS: i64 = 10;

fn coarse_ms() -> i64 {
  if let Some(ms) = frozen() {
    return ms;
  }
  coarse_system_ms()
}

/// Reads `clock` in epoch milliseconds, or None if it cannot be read.
/// Straight from `clock_gettime` with integer arithmetic: `SystemTime`'s
/// `Duration` and its u128 milliseconds cost a recordFailure ~10 ns more.
#[cfg(target_os = "linux")]
fn clock_ms(clock: libc::clockid_t) -> Option<i64> {
  let mut ts = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
  };
  // SAFETY: `ts` is a valid, writable timespec.
  if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
    return None;
  }
  // time_t and c_long are i64 on every 64-bit target this builds for.
  Some((ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000).max(0))
}

#[cfg(target_os = "linux")]
fn precise_ms() -> i64 {
  clock_ms(libc::CLOCK_REALTIME).unwrap_or_else(system_time_ms)
}

#[cfg(target_os = "linux")]
fn coarse_system_ms() -> i64 {
  clock_ms(libc::CLOCK_REALTIME_COARSE).unwrap_or_else(precise_ms)
}

#[cfg(not(target_os = "linux"))]
fn precise_ms() -> i64 {
  system_time_ms()
}

#[cfg(not(target_os = "linux"))]
fn coarse_system_ms() -> i64 {
  system_time_ms()
}

fn system_time_ms() -> i64 {
  SystemTime::now()
    .duration_since(UNIX_EPOCH)
    .map(|d| d.as_millis() as i64)
    .unwrap_or(0)
}

/// "Now" for one call, read lazily: each clock at most once and only if
/// needed, the coarse one first.
pub struct Now {
  coarse: Cell<Option<i64>>,
  precise: Cell<Option<i64>>,
}

impl Now {
  pub fn read() -> Self {
    Now {
      coarse: Cell::new(None),
      precise: Cell::new(None),
    }
  }

  /// A fixed instant, for tests.
  pub fn at(ms: i64) -> Self {
    Now {
      coarse: Cell::new(Some(ms)),
      precise: Cell::new(Some(ms)),
    }
  }

  fn coarse(&self) -> i64 {
    if let Some(ms) = self.coarse.get() {
      return ms;
    }
    let ms = coarse_ms();
    self.coarse.set(Some(ms));
    ms
  }

  /// The precise time, as `Date.now()` would answer (never before a coarse
  /// time this call already went by).
  pub fn ms(&self) -> i64 {
    match self.precise.get() {
      Some(ms) => ms,
      None => {
        let ms = now_ms().max(self.coarse.get().unwrap_or(i64::MIN));
        self.precise.set(Some(ms));
        ms
      }
    }
  }

  /// Whether now is strictly before `instant`, without a precise read when
  /// `instant` is comfortably in the future.
  pub fn is_before(&self, instant: i64) -> bool {
    if self.precise.get().is_none() && instant > self.coarse() + COARSE_SLACK_MS {
      return true;
    }
    self.ms() < instant
  }

  /// Whether `start <= now < end`, without a precise read when the coarse
  /// time is comfortably inside (the precise time is never before it).
  pub fn is_within(&self, start: i64, end: i64) -> bool {
    if self.precise.get().is_none() {
      let coarse = self.coarse();
      if start <= coarse && coarse + COARSE_SLACK_MS < end {
        return true;
      }
    }
    let ms = self.ms();
    start <= ms && ms < end
  }
}

/// The longest duration kept: 2^52 ms, about 142,700 years. Any instant
/// `now + MAX_DURATION_MS` is still a safe integer in JS and a valid `Date`
/// (whose limit is 8.64e15 ms), so a huge window or ttl never yields a
/// `resetAt` that `new Date()` rejects or that loses precision.
pub const MAX_DURATION_MS: i64 = 1 << 52;

/// Converts a JS duration in milliseconds (validated as finite and
/// non-negative by the JS layer) into whole milliseconds, rounding up so a
/// fractional window never ends early, and saturating at
/// [`MAX_DURATION_MS`] so that arithmetic on instants cannot overflow.
pub fn duration_ms(ms: f64) -> i64 {
  const MAX: f64 = MAX_DURATION_MS as f64;
  if ms.is_nan() || ms <= 0.0 {
    0
  } else {
    ms.ceil().min(MAX) as i64
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn durations_round_up_and_saturate() {
    assert_eq!(duration_ms(1500.2), 1501);
    assert_eq!(duration_ms(0.0), 0);
    assert_eq!(duration_ms(-5.0), 0);
    assert_eq!(duration_ms(f64::NAN), 0);
    assert_eq!(duration_ms(f64::INFINITY), MAX_DURATION_MS);
    assert_eq!(duration_ms(f64::MAX), MAX_DURATION_MS);
    assert!(((now_ms() + MAX_DURATION_MS) as f64) < 8.64e15);
  }

  #[test]
  fn coarse_clock_trails_the_precise_one_within_the_slack() {
    for _ in 0..1000 {
      let coarse = coarse_ms();
      let precise = now_ms();
      assert!(
        coarse <= precise + 1 && precise - coarse <= COARSE_SLACK_MS,
        "{coarse} vs {precise}"
      );
    }
  }

  #[test]
  fn now_answers_like_the_precise_clock() {
    let now = Now::read();
    let precise = now_ms();
    assert!(now.is_before(precise + 60_000));
    assert!(!now.is_before(now.ms()));
    assert!(now.is_within(precise - 1, precise + 60_000));
    assert!(!now.is_within(now.ms() + 1, now.ms() + 60_000));
    assert!(!now.is_within(0, now.ms()));
    assert!(now.ms() <= precise + 1);
  }
}
