//! A call on its way through a connection: its command, what to do with the
//! answer, and by when.

use std::collections::hash_map::{Entry, HashMap};
use std::future::Future;
use std::pin::pin;
use std::time::Instant;

use ::redis::{Cmd, RedisResult, Value};
use tokio::sync::Notify;

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
  /// Calls that may run with others as one command (see [`coalesce`]).
  pub group: Option<Group>,
  /// Set for a near-cache read: the server is asked to track its key
  /// (`CLIENT CACHING yes` goes first), and if it cannot be (it is sent
  /// after `ASKING`) or the call fails, this runs, so nothing of it is kept.
  pub untracked: Option<Box<dyn FnOnce() + Send>>,
  /// The ids of the calls merged into this one, answered with it.
  pub also: Vec<f64>,
  /// Made by the store itself, not by a JS call: nothing is answered (a
  /// near cache's read that follows a write).
  pub silent: bool,
}

/// What makes calls mergeable: calls whose effects add up — n increments of
/// one counter in one window, n failures of one circuit — may run as one
/// command that does all of it at once and hands each call the answer it
/// would have had had they run one after another. Calls merge when their
/// `merge`, `extra` and key (the command's first key) are equal.
#[derive(Clone, Copy)]
pub struct Group {
  /// Makes one call of several of this group, in their order.
  pub merge: fn(Vec<Job>) -> Job,
  /// What else must be equal (a window's length, an operation, an instant).
  pub extra: u128,
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
      group: None,
      untracked: None,
      also: Vec::new(),
      silent: false,
    }
  }

  /// The ids of every call this one answers.
  pub fn ids(&self) -> impl Iterator<Item = f64> + '_ {
    std::iter::once(self.id).chain(self.also.iter().copied())
  }

  /// This call's failure (and that of every call merged into it):
  /// `<store>: <cause>`, the server not having answered it.
  pub fn failed(mut self, cause: &str) -> Vec<(f64, Reply)> {
    // A near-cache read that failed will not be answered: its ticket goes.
    if let Some(untracked) = self.untracked.take() {
      untracked();
    }
    if self.silent {
      return Vec::new();
    }
    let message = format!("{}: {cause}", self.store);
    self
      .ids()
      .map(|id| (id, Reply::Unavailable(message.clone())))
      .collect()
  }
}

/// Takes the calls of `jobs` whose deadline has passed, keeping the others.
pub fn take_expired(jobs: &mut Vec<Job>) -> Vec<Job> {
  let now = Instant::now();
  let (expired, kept) = std::mem::take(jobs)
    .into_iter()
    .partition(|job| job.deadline <= now);
  *jobs = kept;
  expired
}

/// Awaits `work` (a connection or a slot map being found) while calls wait
/// for it: `expire` runs each time the earliest of their deadlines
/// (`deadline()`) passes, and `wake` says a call joined, whose deadline may
/// be the next one.
pub async fn awaiting_with_deadlines<T>(
  work: impl Future<Output = T>,
  deadline: impl Fn() -> Option<Instant>,
  expire: impl Fn(),
  wake: &Notify,
) -> T {
  let mut work = pin!(work);
  loop {
    let next = deadline();
    let expiry = async {
      match next {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
      }
    };
    tokio::select! {
      done = &mut work => return done,
      () = expiry => expire(),
      () = wake.notified() => {}
    }
  }
}

/// Every call of `jobs` failed with `cause`.
pub fn fail_all(jobs: impl IntoIterator<Item = Job>, cause: &str) -> Vec<(f64, Reply)> {
  jobs.into_iter().flat_map(|job| job.failed(cause)).collect()
}

/// `jobs` with the calls that share a group merged into one (placed where
/// the first of them was); the others as they were.
pub fn coalesce(jobs: Vec<Job>) -> Vec<Job> {
  if jobs.iter().filter(|job| job.group.is_some()).count() < 2 {
    return jobs;
  }
  // Which earlier call each call merges into, if any.
  let mut into: Vec<Option<usize>> = vec![None; jobs.len()];
  {
    let mut first = HashMap::new();
    for (index, job) in jobs.iter().enumerate() {
      let Some(identity) = job.group_identity() else {
        continue;
      };
      match first.entry(identity) {
        Entry::Occupied(lead) => into[index] = Some(*lead.get()),
        Entry::Vacant(slot) => {
          slot.insert(index);
        }
      }
    }
  }
  if into.iter().all(Option::is_none) {
    return jobs;
  }
  let mut merged: Vec<Vec<Job>> = Vec::with_capacity(jobs.len());
  let mut place = vec![0; jobs.len()];
  for (index, job) in jobs.into_iter().enumerate() {
    match into[index] {
      Some(lead) => merged[place[lead]].push(job),
      None => {
        place[index] = merged.len();
        merged.push(vec![job]);
      }
    }
  }
  merged
    .into_iter()
    .map(|mut calls| match calls.len() {
      1 => calls.pop().expect("one call"),
      _ => (calls[0].group.expect("grouped").merge)(calls),
    })
    .collect()
}

impl Job {
  /// What makes this call mergeable with others: its group's merge function,
  /// its extra, and its command's first key (`EVALSHA <sha> <numkeys> <key>`).
  fn group_identity(&self) -> Option<(usize, u128, &[u8])> {
    let group = self.group?;
    match self.command.args_iter().nth(3)? {
      ::redis::Arg::Simple(key) => Some((group.merge as usize, group.extra, key)),
      _ => None,
    }
  }
}

/// Merges calls whose commands end with a count (1 each) into one call
/// counting them all; `spread` reads its answer into one reply per call (in
/// their order, the ids given). The merged call keeps the earliest deadline.
pub fn merge_counted(
  calls: Vec<Job>,
  spread: impl FnOnce(RedisResult<Value>, &[f64]) -> RedisResult<Reply> + Send + 'static,
) -> Job {
  let count = calls.len();
  let deadline = calls
    .iter()
    .map(|call| call.deadline)
    .min()
    .expect("calls to merge");
  let ids: Vec<f64> = calls.iter().map(|call| call.id).collect();
  let mut lead = calls.into_iter().next().expect("calls to merge");
  let args: Vec<Vec<u8>> = lead
    .command
    .args_iter()
    .filter_map(|arg| match arg {
      ::redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
      _ => None,
    })
    .collect();
  let mut command = Cmd::new();
  for arg in &args[..args.len() - 1] {
    command.arg(arg.as_slice());
  }
  command.arg(count);
  lead.command = command;
  lead.deadline = deadline;
  lead.group = None;
  lead.also = ids[1..].to_vec();
  lead.decode = Box::new(move |answer| spread(answer, &ids));
  lead
}
