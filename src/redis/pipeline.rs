//! The calls written on one connection and the bytes on their way: commands
//! encoded and not yet written, replies read and not yet complete, and the
//! calls awaiting them in order (Redis answers in the order it was asked).
//!
//! Commands are encoded by the `redis` crate; [`resp`] finds where each
//! reply ends and decodes it (the common shapes itself, the rest with the
//! crate's parser).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use ::redis::{ServerErrorKind, Value};

use super::job::Job;
use super::near_cache::NearCache;
use super::resp::{self, Scan};
use super::socket::Socket;

/// Bytes asked of the socket per read, at least.
const READ_CHUNK: usize = 64 * 1024;

/// A call written, and how many answers to commands sent right before it
/// (`ASKING`, `CLIENT CACHING yes`) come first.
struct Sent {
  job: Job,
  prefixes: u8,
}

#[derive(Default)]
pub struct Pipeline {
  /// Where invalidation pushes go (RESP3 connections of a near cache).
  near: Option<Arc<NearCache>>,
  /// Calls written, in the order their answers will come.
  in_flight: VecDeque<Sent>,
  /// Encoded commands; `unsent[written..]` is still to go.
  unsent: Vec<u8>,
  written: usize,
  /// Bytes read; `inbox[..filled]` holds data (the rest is spare room,
  /// kept initialized so reads need no unsafe code).
  inbox: Vec<u8>,
  filled: usize,
}

impl Pipeline {
  pub fn new(near: Option<Arc<NearCache>>) -> Self {
    Pipeline {
      near,
      ..Pipeline::default()
    }
  }

  /// Encodes `job` for sending and counts it in flight.
  pub fn enqueue(&mut self, mut job: Job) {
    // The answers (+OK) of these are skipped in `take_replies`.
    let mut prefixes = 0;
    if job.asking {
      ::redis::cmd("ASKING").write_packed_command(&mut self.unsent);
      prefixes += 1;
      // `CLIENT CACHING yes` cannot precede it too (each clears the
      // other's effect), so the server will not track this read.
      if let Some(untracked) = job.untracked.take() {
        untracked();
      }
    } else if job.untracked.is_some() {
      ::redis::cmd("CLIENT")
        .arg("CACHING")
        .arg("yes")
        .write_packed_command(&mut self.unsent);
      prefixes += 1;
    }
    job.command.write_packed_command(&mut self.unsent);
    self.in_flight.push_back(Sent { job, prefixes });
  }

  pub fn is_idle(&self) -> bool {
    self.in_flight.is_empty()
  }

  pub fn in_flight(&self) -> usize {
    self.in_flight.len()
  }

  /// The oldest call written and not answered.
  pub fn oldest(&self) -> Option<&Job> {
    self.in_flight.front().map(|sent| &sent.job)
  }

  /// Bytes encoded and not yet written.
  pub fn unsent_bytes(&self) -> usize {
    self.unsent.len() - self.written
  }

  /// Bytes are still to go out: commands not written, or records a TLS
  /// session holds.
  pub fn has_unsent(&self, socket: &Socket) -> bool {
    self.written < self.unsent.len() || socket.wants_write()
  }

  /// Writes what is unsent and reads what has arrived until the socket would
  /// block (so a watcher may then wait for it again), adding every call
  /// whose reply is complete to `answered` — where they stay if the
  /// connection then fails, so they are answered all the same. A call the
  /// server refused with NOSCRIPT is sent again with its script's source.
  pub fn pump(&mut self, socket: &Socket, answered: &mut Vec<(Job, Value)>) -> Result<(), String> {
    loop {
      let mut progress = false;
      while self.written < self.unsent.len() {
        match socket.write(&self.unsent[self.written..]) {
          Ok(0) => return Err("the connection was closed".into()),
          Ok(n) => {
            self.written += n;
            progress = true;
          }
          Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
          Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
          Err(error) => return Err(error.to_string()),
        }
      }
      if self.written == self.unsent.len() {
        self.unsent.clear();
        self.written = 0;
        // A TLS session may still hold records of what was written.
        match socket.flush() {
          Err(error)
            if !matches!(
              error.kind(),
              io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
          {
            return Err(error.to_string())
          }
          _ => {}
        }
      }
      // With nothing in flight only pushes can come, and only a near
      // cache's connections get them.
      if !self.in_flight.is_empty() || self.near.is_some() {
        loop {
          if self.inbox.len() - self.filled < READ_CHUNK / 4 {
            self.inbox.resize(self.filled + READ_CHUNK, 0);
          }
          match socket.read(&mut self.inbox[self.filled..]) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => {
              self.filled += n;
              progress = true;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.to_string()),
          }
        }
        self.take_replies(answered)?;
      }
      if !progress {
        return Ok(());
      }
    }
  }

  /// Decodes the complete replies in the inbox, pairing each with the call
  /// it answers.
  fn take_replies(&mut self, answered: &mut Vec<(Job, Value)>) -> Result<(), String> {
    let mut at = 0;
    while at < self.filled {
      let need = match resp::scan(&self.inbox[at..self.filled])
        .map_err(|error| format!("protocol error: {}", error.0))?
      {
        Scan::Complete(length) => {
          if self.inbox[at] == b'>' {
            // A RESP3 push (an invalidation), not an answer.
            let push = resp::decode(&self.inbox[at..at + length])
              .map_err(|error| format!("protocol error: {error}"))?;
            at += length;
            if let Some(near) = &self.near {
              near.pushed(&push);
            }
            continue;
          }
          let Some(sent) = self.in_flight.front_mut() else {
            return Err("protocol error: an answer to no command".into());
          };
          if sent.prefixes > 0 {
            // The answer to a command sent right before it; its own comes
            // later.
            sent.prefixes -= 1;
            at += length;
            continue;
          }
          let mut job = self
            .in_flight
            .pop_front()
            .expect("the front was just seen")
            .job;
          let value = resp::decode(&self.inbox[at..at + length])
            .map_err(|error| format!("protocol error: {error}"))?;
          at += length;
          match job.reload.take() {
            Some(reload) if is_noscript(&value) => {
              job.command = reload.with_source(&job.command);
              self.enqueue(job);
            }
            _ => answered.push((job, value)),
          }
          continue;
        }
        Scan::Partial(need) => need,
      };
      // Make room for the whole of a large reply at once (it will start at
      // 0 once the answered replies before it are dropped below).
      if self.inbox.len() < need {
        self.inbox.resize(need + READ_CHUNK, 0);
      }
      break;
    }
    self.inbox.copy_within(at..self.filled, 0);
    self.filled -= at;
    if self.inbox.len() > 4 * READ_CHUNK && self.filled < READ_CHUNK {
      // Give back the room a large reply took.
      self.inbox.truncate(READ_CHUNK);
      self.inbox.shrink_to_fit();
    }
    Ok(())
  }

  /// Forgets everything sent and read; answers the calls in flight. A near
  /// cache empties first: the invalidations the connection would have
  /// brought are lost with it.
  pub fn clear(&mut self) -> impl Iterator<Item = Job> + '_ {
    if let Some(near) = &self.near {
      near.clear();
    }
    self.unsent.clear();
    self.written = 0;
    self.filled = 0;
    self.in_flight.drain(..).map(|sent| sent.job)
  }
}

fn is_noscript(value: &Value) -> bool {
  matches!(value, Value::ServerError(error) if error.kind() == Some(ServerErrorKind::NoScript))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn noscript_replies_are_recognised() {
    assert!(is_noscript(
      &resp::decode(b"-NOSCRIPT No matching script.\r\n").unwrap()
    ));
    assert!(!is_noscript(&resp::decode(b"-ERR other\r\n").unwrap()));
  }
}
