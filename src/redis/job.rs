//! A call on its way through a connection: its command, what to do with the
//! answer, and by when.

use std::time::Instant;

use ::redis::{Cmd, RedisResult, Value};

use super::replies::Reply;

/// Turns a call's answer from Redis into its reply (a server error for that
/// one command arrives as an `Err`).
pub type Decode = Box<dyn FnOnce(RedisResult<Value>) -> RedisResult<Reply> + Send>;

/// How to send a command again with what a server lacked: an `EVALSHA` as
/// `EVAL` with the script's source, when the server answers `NOSCRIPT`. The
/// connection knows no scripts; whoever made the command does.
pub trait Reload: Sync {
  fn with_source(&self, evalsha: &Cmd) -> Cmd;
}

/// One call.
pub struct Job {
  pub id: f64,
  pub store: &'static str,
  pub command: Cmd,
  /// Set for an `EVALSHA`; taken once used, so a call is resent with its
  /// script's source at most once.
  pub reload: Option<&'static dyn Reload>,
  pub decode: Decode,
  pub deadline: Instant,
  /// The cluster hash slot of its key (0 outside a cluster).
  pub slot: u16,
  /// Redirections (MOVED, ASK) followed so far.
  pub redirects: u8,
  /// Times a server refused it for now (TRYAGAIN, LOADING, …) so far.
  pub retries: u8,
  /// Send `ASKING` right before it (and again if it is resent there): the
  /// slot is migrating to the node it goes to.
  pub asking: bool,
}

impl Job {
  pub fn new(
    id: f64,
    store: &'static str,
    command: Cmd,
    decode: Decode,
    deadline: Instant,
  ) -> Self {
    Job {
      id,
      store,
      command,
      reload: None,
      decode,
      deadline,
      slot: 0,
      redirects: 0,
      retries: 0,
      asking: false,
    }
  }

  /// This call's failure: `<store>: <cause>`.
  pub fn failed(self, cause: &str) -> (f64, Reply) {
    (self.id, Reply::Failed(format!("{}: {cause}", self.store)))
  }
}

/// Every call of `jobs` failed with `cause`.
pub fn fail_all(jobs: impl IntoIterator<Item = Job>, cause: &str) -> Vec<(f64, Reply)> {
  jobs.into_iter().map(|job| job.failed(cause)).collect()
}
