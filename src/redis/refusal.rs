//! Answers by which a server refuses a call without running it. Only these
//! allow a call to be sent again: a call that timed out or whose connection
//! was lost may have run, and is failed rather than counted twice.

use std::time::Duration;

use ::redis::{ServerErrorKind, Value};

use super::slots::SLOTS;

pub enum Refusal {
  /// The slot is served by another node now (MOVED): update the slot map
  /// and send it there.
  Moved { slot: u16, to: String },
  /// The slot is migrating to another node: send it there once, after
  /// `ASKING` (ASK), the slot map unchanged.
  Ask { to: String },
  /// Not now (TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN): send it again
  /// shortly.
  Busy,
  /// A replica answered (READONLY): the primary is elsewhere now.
  ReadOnly,
}

impl Refusal {
  /// The refusal `value` is, if it is one.
  pub fn of(value: &Value) -> Option<Refusal> {
    let Value::ServerError(error) = value else {
      return None;
    };
    // A slot past the last one is not a redirection we can follow.
    let redirect = || {
      let (slot, to) = error.details()?.split_once(' ')?;
      let slot: u16 = slot.parse().ok()?;
      (usize::from(slot) < SLOTS).then(|| (slot, to.to_owned()))
    };
    Some(match error.kind()? {
      ServerErrorKind::Moved => {
        let (slot, to) = redirect()?;
        Refusal::Moved { slot, to }
      }
      ServerErrorKind::Ask => Refusal::Ask { to: redirect()?.1 },
      ServerErrorKind::TryAgain
      | ServerErrorKind::ClusterDown
      | ServerErrorKind::BusyLoading
      | ServerErrorKind::MasterDown => Refusal::Busy,
      ServerErrorKind::ReadOnly => Refusal::ReadOnly,
      _ => return None,
    })
  }
}

/// The most redirections one call follows: more means the nodes disagree
/// about who serves its slot.
pub const MAX_REDIRECTS: u8 = 16;

/// How long to wait before sending a refused call again, after `retries`
/// earlier refusals: 10 ms, doubling, at most 200 ms (the call's deadline
/// bounds the whole).
pub fn backoff(retries: u8) -> Duration {
  Duration::from_millis((10u64 << retries.min(5)).min(200))
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::redis::resp;

  fn refusal(reply: &[u8]) -> Option<Refusal> {
    Refusal::of(&resp::decode(reply).unwrap())
  }

  #[test]
  fn redirections_name_the_slot_and_the_node() {
    assert!(matches!(
      refusal(b"-MOVED 3999 127.0.0.1:6381\r\n"),
      Some(Refusal::Moved { slot: 3999, to }) if to == "127.0.0.1:6381"
    ));
    assert!(matches!(
      refusal(b"-ASK 12 redis-2.example:6379\r\n"),
      Some(Refusal::Ask { to }) if to == "redis-2.example:6379"
    ));
    assert!(refusal(b"-MOVED nonsense\r\n").is_none());
    assert!(refusal(b"-MOVED 16384 127.0.0.1:6381\r\n").is_none());
    assert!(refusal(b"-ASK 20000 127.0.0.1:6381\r\n").is_none());
  }

  #[test]
  fn only_answers_that_prove_nothing_ran_are_refusals() {
    for busy in [
      &b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"[..],
      b"-CLUSTERDOWN The cluster is down\r\n",
      b"-LOADING Redis is loading the dataset in memory\r\n",
      b"-MASTERDOWN Link with MASTER is down\r\n",
    ] {
      assert!(matches!(refusal(busy), Some(Refusal::Busy)));
    }
    assert!(matches!(
      refusal(b"-READONLY You can't write against a read only replica.\r\n"),
      Some(Refusal::ReadOnly)
    ));
    for other in [
      &b"-ERR wrong\r\n"[..],
      b"-NOSCRIPT No matching script\r\n",
      b":1\r\n",
      b"+OK\r\n",
    ] {
      assert!(refusal(other).is_none());
    }
  }

  #[test]
  fn backoff_doubles_up_to_a_cap() {
    let ms = |r| backoff(r).as_millis();
    assert_eq!(
      [ms(0), ms(1), ms(2), ms(4), ms(5), ms(50)],
      [10, 20, 40, 160, 200, 200]
    );
  }
}
