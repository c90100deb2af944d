//! How long the JS thread polls a socket for answers after writing calls.
//!
//! On a small machine a round trip to a local Redis costs less in Redis than
//! in waking threads up: a client that sleeps until the answer arrives waits
//! ~54 µs for an `EVALSHA` here, one that keeps polling its socket gets the
//! answer in ~23 µs. So a flush polls for a short, bounded time; answers that
//! take longer are left to the I/O thread.

use std::time::Duration;

/// Answers after which a spin stops even though more are due: the JS
/// thread then acts on them (its callers typically make new calls, which go
/// out while Redis works on the rest) and collects the rest with its next
/// flush, instead of Redis and JS taking turns to wait for each other
/// (64 calls in flight: ~275 → ~440 k/s, Redis ~94% busy).
pub const ENOUGH_ANSWERS: usize = 16;

/// The longest spin, in multiples of the base budget.
const MAX_SPIN_FACTOR: u32 = 10;

/// How long the JS thread polls for answers after a flush, backing off when
/// polling keeps failing (a remote server, a big batch, a slow script) so a
/// connection whose answers always take long costs almost no polling.
pub struct Spin {
  budget: Duration,
  /// How long recent spins took to get all their answers (the longest,
  /// fading by 1/8 a spin): a 64 KiB reply takes longer than its request's
  /// size predicts, and a spin that ends just before it arrives costs a
  /// thread wake-up and a pause in spinning.
  recent: Duration,
  /// Flushes left before the next attempt to spin.
  skip: u32,
  /// The pause after the last failure, in flushes (doubling up to 64).
  backoff: u32,
}

impl Spin {
  pub fn new(budget: Duration) -> Self {
    Spin {
      budget,
      recent: Duration::ZERO,
      skip: 0,
      backoff: 0,
    }
  }

  /// Whether this flush should spin (counting down a backoff).
  pub fn wanted(&mut self) -> bool {
    if self.budget.is_zero() {
      return false;
    }
    if self.skip > 0 {
      self.skip -= 1;
      return false;
    }
    true
  }

  /// The spin for `calls` in flight and `bytes` to send: the base budget
  /// plus what the server needs for that much work (~3 µs a script call,
  /// ~1 ns a byte), so a pipeline of 64 calls or a 64 KiB envelope is still
  /// answered while the JS thread waits, which it would otherwise do asleep;
  /// at least twice what recent spins took.
  pub fn budget_for(&self, calls: usize, bytes: usize) -> Duration {
    let extra = Duration::from_nanos(3_000 * calls as u64 + bytes as u64);
    (self.budget + extra)
      .max(self.recent * 2)
      .min(self.budget * MAX_SPIN_FACTOR)
  }

  /// Records a spin that took `took` and got every answer, or did not.
  pub fn record(&mut self, took: Duration, answered_all: bool) {
    if answered_all {
      self.backoff = 0;
      self.recent = took.max(self.recent - self.recent / 8);
    } else {
      self.backoff = (self.backoff * 2).clamp(1, 64);
      self.skip = self.backoff;
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn spinning_backs_off_while_it_keeps_failing() {
    let mut spin = Spin::new(Duration::from_micros(50));
    let took = Duration::from_micros(10);
    assert!(spin.wanted());
    spin.record(took, false);
    assert!(!spin.wanted());
    assert!(spin.wanted());
    spin.record(took, false);
    assert_eq!(
      (spin.wanted(), spin.wanted(), spin.wanted()),
      (false, false, true)
    );
    spin.record(took, true);
    assert!(spin.wanted());
    let mut off = Spin::new(Duration::ZERO);
    assert!(!off.wanted());
  }

  #[test]
  fn the_spin_budget_covers_what_recent_answers_took() {
    let micros = Duration::from_micros;
    let mut spin = Spin::new(micros(50));
    assert_eq!(spin.budget_for(1, 0), micros(53));
    spin.record(micros(48), true);
    assert_eq!(spin.budget_for(1, 0), micros(96));
    // The memory fades once answers come faster again...
    for _ in 0..20 {
      spin.record(micros(5), true);
    }
    assert_eq!(spin.budget_for(1, 0), micros(53));
    // ...and never stretches a spin past its cap.
    spin.record(micros(5_000), true);
    assert_eq!(spin.budget_for(1, 0), micros(500));
  }
}
