//! Which server each call goes to: the one server of a url (or the primary
//! its sentinels name), or, in a cluster, the node serving its key's slot.

use std::sync::Arc;

use super::event_loop::EventLoop;
use super::job::Job;
use super::replies::Reply;
use super::wire::{self, Wire};

pub enum Route {
  One(Arc<Wire>),
}

impl Route {
  /// The cluster hash slot of `key` (0 when there is no cluster).
  pub fn slot(&self, _key: &str) -> u16 {
    match self {
      Route::One(_) => 0,
    }
  }

  /// Queues `job` on its server's wire until the next flush.
  pub fn submit(&self, job: Job) {
    match self {
      Route::One(wire) => wire.submit(job),
    }
  }

  /// See [`wire::flush`].
  pub fn flush(&self, spin: bool, defer: bool, events: Option<&EventLoop>) -> Vec<(f64, Reply)> {
    match self {
      Route::One(wire) => wire::flush(std::slice::from_ref(wire), spin, defer, events),
    }
  }

  /// A flush from a thread other than the JS thread.
  pub fn flush_elsewhere(&self) {
    match self {
      Route::One(wire) => wire.flush_elsewhere(),
    }
  }

  /// See [`wire::write_early`].
  pub fn write_early(&self) -> Vec<(f64, Reply)> {
    match self {
      Route::One(wire) => wire::write_early(std::slice::from_ref(wire)),
    }
  }

  /// Some answers are left for the JS thread's next flush.
  pub fn awaiting(&self) -> bool {
    match self {
      Route::One(wire) => wire.awaiting(),
    }
  }

  /// Refuses later calls; each connection closes once its calls are answered.
  pub fn close(&self) {
    match self {
      Route::One(wire) => wire.close(),
    }
  }

  pub fn is_closed(&self) -> bool {
    match self {
      Route::One(wire) => wire.is_closed(),
    }
  }
}
