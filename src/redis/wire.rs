//! One connection to one Redis server, written and read on the JS thread
//! when it can be.
//!
//! ioredis sleeps in Node's event loop until an answer comes; our first
//! design (the `redis` crate's multiplexed connection on a tokio thread)
//! slept on two threads, the I/O thread's and then the JS thread's. A local
//! round trip is cheaper than those wake-ups (see [`super::spin`]).
//!
//! So [`flush`] writes the calls one turn of the JS event loop made from the
//! JS thread itself, to every server they go to, then polls the sockets for
//! their answers for a short, bounded time (the *spin*). Answers that arrive
//! in time are handed back to JS by the flush itself: nobody slept, nobody
//! was woken. A turn that makes many calls writes them 16 at a time as it
//! goes ([`write_early`]), and a spin stops once 16 answers are in, so Redis
//! works while JS makes or settles the rest. Whatever is still awaited after
//! the spin is left to a watcher task on the Redis I/O thread ([`IO`]),
//! which waits for the socket in epoll (through tokio), hands the answers to
//! JS through [`Replies`] and enforces the command timeout. Connecting runs
//! there too.
//!
//! A [`Wire`] keeps one connection: opened in the background, reopened on
//! demand after it is lost. What becomes of a call the server refused
//! without running it (MOVED, TRYAGAIN, …) is its [`Owner`]'s decision —
//! a cluster's router — or, for a lone server, the wire's own.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::redis::Value;
use tokio::io::Interest;

use super::event_loop::EventLoop;
use super::io::IO;
use super::job::{awaiting_with_deadlines, coalesce, fail_all, take_expired, Job};
use super::near_cache::NearCache;
use super::pipeline::Pipeline;
use super::refusal::{self, Refusal};
use super::replies::{finish_elsewhere, Replies, Reply};
use super::sentinel::Follower;
use super::sentinel::Sentinels;
use super::setup::{self, Endpoint, Greeting};
use super::socket::Socket;
use super::spin::{Spin, ENOUGH_ANSWERS};
use crate::errors::{guard, lock};

/// After a failed connection attempt, calls within this pause fail at once
/// with its cause instead of each trying again: a burst of calls against a
/// dead server costs one attempt, yet the first call after the pause
/// reconnects, well within a second of the server coming back.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

pub const CLOSED: &str = "the Redis connection was closed";

/// How every wire of an adapter behaves.
pub struct Settings {
  pub connect_timeout: Duration,
  pub command_timeout: Duration,
  /// The base spin (zero: never poll).
  pub spin: Duration,
  pub greeting: Greeting,
  /// The near cache the connections' invalidations go to, if any (their
  /// greeting then turns tracking on).
  pub near: Option<Arc<NearCache>>,
}

/// Where a wire connects.
pub enum Target {
  /// One server.
  Fixed(Endpoint),
  /// Wherever the sentinels say the primary is, asked anew each time.
  Sentinel(Arc<Sentinels>),
}

impl Target {
  /// Opens a connection; answers it and the server's address.
  async fn open(&self, greeting: &Greeting) -> Result<(Socket, String), String> {
    match self {
      Target::Fixed(endpoint) => Ok((setup::open(endpoint, greeting).await?, endpoint.address())),
      Target::Sentinel(sentinels) => sentinels.open(greeting).await,
    }
  }

  fn address(&self) -> String {
    match self {
      Target::Fixed(endpoint) => endpoint.address(),
      Target::Sentinel(sentinels) => format!("the primary {:?} of the sentinels", sentinels.name),
    }
  }
}

/// Routes a wire's calls when its server refuses one without running it
/// (see [`Refusal`]), and hears when its connection is lost.
pub trait Owner: Send + Sync {
  /// Takes `job`, which `wire`'s server refused with `refusal` (`error`
  /// is the server's message), or answers it as failed.
  fn refused(
    &self,
    wire: &Arc<Wire>,
    job: Job,
    refusal: Refusal,
    error: String,
  ) -> Vec<(f64, Reply)>;
  /// `wire` lost its connection or could not open one.
  fn lost(&self, wire: &Arc<Wire>);
}

/// Where the connection stands.
enum Link {
  /// None open: none opened yet, the last one was lost, or the last attempt
  /// failed at the given instant for the given cause.
  Down {
    failed: Option<(Instant, Arc<str>)>,
  },
  Connecting,
  Up(Arc<Socket>),
}

struct State {
  link: Link,
  /// Counts connection attempts, so that tasks of an old connection cannot
  /// touch its successor.
  generation: u64,
  closed: bool,
  /// Calls submitted since the last flush.
  queued: Vec<Job>,
  /// Calls flushed while a connection was being opened.
  waiting: Vec<Job>,
  pipe: Pipeline,
  /// A watcher task waits on the socket of this generation.
  watched: bool,
  /// The JS thread will flush again for the answers in flight (see
  /// [`Wire::awaiting`]); a watcher, if any, should leave.
  js_collects: bool,
  spin: Spin,
}

impl State {
  /// Forgets the connection and everything sent on it; answers every call
  /// in flight with `cause`.
  fn drop_link(&mut self, cause: &str) -> Vec<(f64, Reply)> {
    if let Link::Up(socket) = &self.link {
      socket.shut_down();
    }
    self.link = Link::Down { failed: None };
    self.watched = false;
    self.js_collects = false;
    let in_flight: Vec<Job> = self.pipe.clear().collect();
    fail_all(in_flight, cause)
  }

  /// The oldest call in flight is past its deadline.
  fn overdue(&self) -> bool {
    self
      .pipe
      .oldest()
      .is_some_and(|oldest| oldest.deadline <= Instant::now())
  }

  fn is_up_on(&self, socket: &Arc<Socket>) -> bool {
    matches!(&self.link, Link::Up(current) if Arc::ptr_eq(current, socket))
  }
}

/// What the watcher found when it looked at the socket.
enum Look {
  Answered(Vec<(Job, Value)>),
  /// The connection failed, for this cause, after answering these calls.
  Lost(Vec<(Job, Value)>, String),
  /// A newer connection replaced this one.
  Replaced,
}

/// One server's connection, opened in the background and reopened on
/// demand.
pub struct Wire {
  target: Target,
  settings: Arc<Settings>,
  /// Where the server is, for error messages (no credentials).
  address: Mutex<Arc<str>>,
  state: Mutex<State>,
  replies: Arc<Replies>,
  owner: Option<Weak<dyn Owner>>,
  /// Tells the task of the moment to look at the state again: the watcher
  /// (there are bytes it must write, or the connection was closed) or the
  /// connection attempt (a call joined the wait).
  wake: tokio::sync::Notify,
}

impl Wire {
  pub fn new(
    target: Target,
    settings: Arc<Settings>,
    replies: Arc<Replies>,
    owner: Option<Weak<dyn Owner>>,
  ) -> Arc<Self> {
    Arc::new(Wire {
      address: Mutex::new(target.address().into()),
      target,
      state: Mutex::new(State {
        link: Link::Down { failed: None },
        generation: 0,
        closed: false,
        queued: Vec::new(),
        waiting: Vec::new(),
        pipe: Pipeline::new(settings.near.clone()),
        watched: false,
        js_collects: false,
        spin: Spin::new(settings.spin),
      }),
      settings,
      replies,
      owner,
      wake: tokio::sync::Notify::new(),
    })
  }

  /// Where the server is (no credentials).
  pub fn address(&self) -> Arc<str> {
    lock(&self.address).clone()
  }

  /// Starts connecting now, so the first calls do not pay for the handshake.
  pub fn connect_in_background(self: &Arc<Self>) {
    let mut state = lock(&self.state);
    if matches!(state.link, Link::Down { .. }) && !state.closed {
      self.start_connecting(&mut state);
    }
  }

  fn start_connecting(self: &Arc<Self>, state: &mut State) {
    state.generation += 1;
    state.link = Link::Connecting;
    IO.spawn(Arc::clone(self).connect(state.generation));
  }

  /// Queues `job` until the next flush.
  pub fn submit(&self, job: Job) {
    lock(&self.state).queued.push(job);
  }

  /// Takes back the calls not yet written (queued, or waiting for a
  /// connection), to send them elsewhere.
  pub fn take_unsent(&self) -> Vec<Job> {
    let mut state = lock(&self.state);
    let mut jobs = std::mem::take(&mut state.queued);
    jobs.append(&mut state.waiting);
    jobs
  }

  /// Calls are queued, waiting for a connection, or in flight.
  pub fn is_busy(&self) -> bool {
    let state = lock(&self.state);
    !state.queued.is_empty() || !state.waiting.is_empty() || !state.pipe.is_idle()
  }

  /// Calls are in flight that no watcher waits for: the JS layer must
  /// flush again (it does so once per turn of its event loop).
  pub fn awaiting(&self) -> bool {
    let state = lock(&self.state);
    !state.pipe.is_idle() && state.js_collects && matches!(state.link, Link::Up(_))
  }

  /// [`flush`] from a thread other than the JS thread: no spin, and
  /// whatever answers the writing already brought go through [`Replies`].
  pub fn flush_elsewhere(self: &Arc<Self>) {
    let answers = flush(std::slice::from_ref(self), false, false, None);
    self.replies.send_all(answers);
  }

  /// Starts this wire's part of a [`flush`]: takes the queued calls, fails
  /// them or parks them while there is no connection, fails calls past
  /// their deadline, writes, and takes the answers already there.
  fn start_flush<'a>(
    self: &'a Arc<Self>,
    spin: bool,
    defer: bool,
    busy: &mut impl FnMut() -> bool,
  ) -> Start<'a> {
    let mut state = lock(&self.state);
    let jobs = std::mem::take(&mut state.queued);
    if jobs.is_empty() && state.pipe.is_idle() {
      return Start::Done(Vec::new());
    }
    if state.closed && !jobs.is_empty() {
      return Start::Done(fail_all(jobs, CLOSED));
    }
    let socket = match &state.link {
      Link::Up(socket) => Arc::clone(socket),
      Link::Down {
        failed: Some((at, cause)),
      } if at.elapsed() < RECONNECT_PAUSE => {
        let cause = cause.clone();
        return Start::Done(fail_all(jobs, &cause));
      }
      Link::Down { .. } => {
        state.waiting.extend(jobs);
        self.start_connecting(&mut state);
        return Start::Done(Vec::new());
      }
      Link::Connecting => {
        state.waiting.extend(jobs);
        self.wake.notify_one();
        return Start::Done(Vec::new());
      }
    };
    let mut answered = Vec::new();
    if state.overdue() {
      // The answers may be waiting unread (the JS thread was busy, and a
      // spin that stopped at enough answers left them to this flush): read
      // before calling them late.
      let cause = match state.pipe.pump(&socket, &mut answered) {
        Err(cause) => Some(self.lost(&cause)),
        Ok(()) => state.overdue().then(|| self.no_answer()),
      };
      if let Some(cause) = cause {
        let mut failed = state.drop_link(&cause);
        failed.extend(fail_all(jobs, &cause));
        drop(state);
        self.connection_lost();
        return Start::Done(self.answer(answered).into_iter().chain(failed).collect());
      }
    }
    for job in coalesce(jobs) {
      state.pipe.enqueue(job);
    }
    // On a busy Node loop the JS layer comes back for the answers (see
    // `awaiting`), so neither a spin nor a watcher is needed now; and with
    // `defer` the writing waits for that too, so the calls of every request
    // the loop serves this turn go out in one write (one wake-up of Redis).
    let busy = busy();
    let leave_to_js = spin && busy;
    if leave_to_js && defer {
      state.js_collects = true;
      drop(state);
      return Start::Done(self.answer(answered));
    }
    let spin = spin && !busy && state.spin.wanted();
    let budget = state
      .spin
      .budget_for(state.pipe.in_flight(), state.pipe.unsent_bytes());
    if let Err(cause) = state.pipe.pump(&socket, &mut answered) {
      let failed = state.drop_link(&self.lost(&cause));
      drop(state);
      self.connection_lost();
      return Start::Done(self.answer(answered).into_iter().chain(failed).collect());
    }
    let polling = spin && !state.pipe.is_idle();
    Start::Polling(Flushing {
      wire: self,
      socket,
      spin,
      leave_to_js,
      budget,
      answered,
      failed: Vec::new(),
      polling,
      gone: false,
    })
  }

  /// Makes sure a watcher waits for what is still in flight — and, with a
  /// near cache, for invalidations while nothing is.
  fn watch_if_needed(self: &Arc<Self>, state: &mut State, socket: &Arc<Socket>) {
    // Answers in flight are the JS thread's to collect when it said so; an
    // idle connection is listened to only for a near cache's invalidations.
    let wanted = match state.pipe.is_idle() {
      true => self.settings.near.is_some(),
      false => !state.js_collects,
    };
    if !wanted {
      return;
    }
    if state.watched {
      if state.pipe.has_unsent(socket) {
        self.wake.notify_one();
      }
      return;
    }
    state.watched = true;
    IO.spawn(Arc::clone(self).watch(Arc::clone(socket), state.generation));
  }

  /// Decodes answered calls (outside the state's lock); a call the server
  /// refused without running it goes to [`refused`](Self::refused).
  fn answer(self: &Arc<Self>, answered: Vec<(Job, Value)>) -> Vec<(f64, Reply)> {
    let mut answers = Vec::with_capacity(answered.len());
    for (job, value) in answered {
      if let Some(refusal) = Refusal::of(&value) {
        let error = value
          .extract_error()
          .err()
          .map(|e| e.to_string())
          .unwrap_or_default();
        answers.extend(self.refused(job, refusal, error));
        continue;
      }
      let (id, store, also) = (job.id, job.store, job.also);
      if job.silent {
        // Only its side effects matter (see `Job::silent`).
        let _ = guard(store, || Ok((job.decode)(value.extract_error())));
        continue;
      }
      let decoded = guard(store, || Ok((job.decode)(value.extract_error())));
      let reply = match decoded {
        Ok(Ok(Reply::Later(finish))) => {
          finish_elsewhere(id, finish, Arc::clone(&self.replies));
          continue;
        }
        Ok(Ok(Reply::Many(replies))) => {
          answers.extend(replies);
          continue;
        }
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => Reply::Failed(format!("{store}: {}", self.lost(&error.to_string()))),
        Err(panicked) => Reply::Failed(panicked.reason.clone()),
      };
      // Calls merged into this one share its failure.
      if let Reply::Failed(message) = &reply {
        answers.extend(
          also
            .iter()
            .map(|&other| (other, Reply::Failed(message.clone()))),
        );
      }
      answers.push((id, reply));
    }
    answers
  }

  /// A call the server refused without running it: its owner's to route;
  /// a lone server's calls are sent again shortly when the server is busy
  /// (LOADING after a restart, …), and fail otherwise.
  fn refused(self: &Arc<Self>, job: Job, refusal: Refusal, error: String) -> Vec<(f64, Reply)> {
    if let Some(owner) = self.owner.as_ref().and_then(Weak::upgrade) {
      return owner.refused(self, job, refusal, error);
    }
    let cause = self.lost(&error);
    match refusal {
      Refusal::Busy => {
        let wire = Arc::clone(self);
        retry_later(job, cause, move |job| {
          wire.submit(job);
          wire.flush_elsewhere();
        })
      }
      Refusal::Moved { slot, to } => job.failed(&format!(
        "{cause}: this is a Redis Cluster node (slot {slot} is on {to}); \
         pass cluster: {{ nodes: ['redis://{}'] }} instead of url",
        self.address()
      )),
      Refusal::Ask { to } => job.failed(&format!(
        "{cause}: this is a Redis Cluster node (the key's slot is moving to {to}); \
         pass cluster: {{ nodes: ['redis://{}'] }} instead of url",
        self.address()
      )),
      Refusal::ReadOnly if matches!(self.target, Target::Sentinel(_)) => {
        // Demoted by a failover: find the new primary, then send it there.
        self.relocate(None);
        let wire = Arc::clone(self);
        retry_later(job, cause, move |job| {
          wire.submit(job);
          wire.flush_elsewhere();
        })
      }
      Refusal::ReadOnly => job.failed(&format!(
        "{cause}: this is a read-only replica; point url at the primary, or pass sentinel: {{ name, nodes }}"
      )),
    }
  }

  /// Drops the connection to a primary that moved (to `to`, when known: a
  /// connection already there is kept), or the attempt to open one, so the
  /// next call asks the sentinels where it is. Calls in flight fail: they
  /// may have run.
  pub fn relocate(self: &Arc<Self>, to: Option<&str>) {
    let failed = {
      let mut state = lock(&self.state);
      // An attempt under way may have asked where the primary was before
      // it moved, and reach the old one (which still says it is a primary
      // in a switchover): start again, asking now.
      if matches!(state.link, Link::Connecting) && !state.closed {
        self.start_connecting(&mut state);
        return;
      }
      let address = self.address();
      if !matches!(state.link, Link::Up(_)) || to.is_some_and(|to| *address == *to) {
        return;
      }
      let moved = to.map_or_else(
        || "it is not the primary any more".to_owned(),
        |to| format!("the primary moved to {to}"),
      );
      let mut failed = state.drop_link(&format!("Redis at {address}: {moved} (failover)"));
      failed.push((0.0, Reply::Event(format!("Redis at {address}: {moved}"))));
      failed
    };
    self.replies.send_all(failed);
  }

  /// Tells the owner the connection is gone (or could not be opened).
  fn connection_lost(self: &Arc<Self>) {
    if let Some(owner) = self.owner.as_ref().and_then(Weak::upgrade) {
      owner.lost(self);
    }
  }

  fn lost(&self, cause: &str) -> String {
    format!("Redis at {}: {cause}", self.address())
  }

  fn no_answer(&self) -> String {
    format!(
      "Redis at {} did not answer within {} ms",
      self.address(),
      self.settings.command_timeout.as_millis()
    )
  }

  /// Waits on the socket of connection `generation` until nothing is in
  /// flight on it (or the JS thread takes over collecting), delivering
  /// answers and failing calls past their deadline.
  async fn watch(self: Arc<Self>, socket: Arc<Socket>, generation: u64) {
    let watcher = match socket.watcher() {
      Ok(watcher) => watcher,
      Err(error) => return self.give_up(generation, &self.lost(&error.to_string())),
    };
    loop {
      let (interest, deadline) = {
        let mut state = lock(&self.state);
        if state.generation != generation || !matches!(state.link, Link::Up(_)) {
          return;
        }
        // The JS thread collects the answers itself (a busy Node loop), or
        // nothing is left to wait for: stop listening, so that the I/O
        // thread is not woken for answers the JS thread takes. With a near
        // cache, an idle connection is listened to all the same: its
        // invalidations must be read as they come.
        let listening = self.settings.near.is_some() && !state.closed;
        let deadline = match state.pipe.oldest() {
          Some(oldest) if !state.js_collects => Some(oldest.deadline),
          None if listening => None,
          _ => {
            state.watched = false;
            return self.close_if_drained(&mut state);
          }
        };
        let interest = if state.pipe.has_unsent(&socket) {
          Interest::READABLE | Interest::WRITABLE
        } else {
          Interest::READABLE
        };
        (interest, deadline)
      };
      let expiry = async {
        match deadline {
          Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
          None => std::future::pending().await,
        }
      };
      let ready = tokio::select! {
        ready = watcher.ready(interest) => ready,
        () = self.wake.notified() => continue,
        () = expiry => {
          return self.give_up(generation, &self.no_answer());
        }
      };
      let direction = match ready {
        Ok(direction) => direction,
        Err(error) => return self.give_up(generation, &self.lost(&error.to_string())),
      };
      // Stays `None` if tokio finds the readiness gone (the wake-up was
      // spurious) and does not run the closure: then we simply wait again.
      let mut look = None;
      let _ = watcher.try_io(direction, || {
        let mut state = lock(&self.state);
        if state.generation != generation {
          look = Some(Look::Replaced);
          return Ok(());
        }
        let mut answered = Vec::new();
        match state.pipe.pump(&socket, &mut answered) {
          Ok(()) => {
            look = Some(Look::Answered(answered));
            // The pump ended on WouldBlock: tokio may clear the readiness.
            Err(std::io::ErrorKind::WouldBlock.into())
          }
          Err(cause) => {
            look = Some(Look::Lost(answered, cause));
            Ok(())
          }
        }
      });
      match look {
        Some(Look::Answered(answered)) => self.replies.send_all(self.answer(answered)),
        Some(Look::Lost(answered, cause)) => {
          self.replies.send_all(self.answer(answered));
          return self.give_up(generation, &self.lost(&cause));
        }
        Some(Look::Replaced) => return,
        None => {}
      }
    }
  }

  /// Drops connection `generation`, failing its calls with `cause`.
  fn give_up(self: &Arc<Self>, generation: u64, cause: &str) {
    let failed = {
      let mut state = lock(&self.state);
      if state.generation != generation || !matches!(state.link, Link::Up(_)) {
        return;
      }
      state.drop_link(cause)
    };
    self.replies.send_all(failed);
    self.connection_lost();
  }

  /// Opens connection `generation` (within the connect timeout), failing
  /// calls that wait for it past their deadline, then sends them.
  async fn connect(self: Arc<Self>, generation: u64) {
    let connect_timeout = self.settings.connect_timeout;
    let opening = tokio::time::timeout(connect_timeout, self.target.open(&self.settings.greeting));
    let opened = awaiting_with_deadlines(
      opening,
      || {
        lock(&self.state)
          .waiting
          .iter()
          .map(|job| job.deadline)
          .min()
      },
      || self.expire_waiting(),
      &self.wake,
    )
    .await;
    let opened = match opened {
      Ok(opened) => opened,
      Err(_) => Err(format!(
        "no answer within {} ms",
        connect_timeout.as_millis()
      )),
    };
    let mut state = lock(&self.state);
    if state.generation != generation {
      return;
    }
    // Calls made before close() still go out; the connection closes once
    // they are answered.
    let waiting = std::mem::take(&mut state.waiting);
    match opened {
      Ok((socket, address)) => {
        *lock(&self.address) = address.into();
        let socket = Arc::new(socket);
        state.link = Link::Up(Arc::clone(&socket));
        // Calls made while it opened merge like those of one flush.
        for job in coalesce(waiting) {
          state.pipe.enqueue(job);
        }
        // The watcher writes them as soon as it starts.
        self.watch_if_needed(&mut state, &socket);
        self.close_if_drained(&mut state);
      }
      Err(cause) => {
        let cause: Arc<str> =
          format!("cannot connect to Redis at {}: {cause}", self.address()).into();
        state.link = Link::Down {
          failed: Some((Instant::now(), cause.clone())),
        };
        drop(state);
        self.replies.send_all(fail_all(waiting, &cause));
        self.connection_lost();
      }
    }
  }

  /// Fails the calls that waited for a connection past their deadline.
  fn expire_waiting(&self) {
    let expired = take_expired(&mut lock(&self.state).waiting);
    let ms = self.settings.command_timeout.as_millis();
    self.replies.send_all(fail_all(
      expired,
      &format!(
        "cannot connect to Redis at {} within {ms} ms",
        self.address()
      ),
    ));
  }

  /// Refuses later calls; calls in flight still get their answers, then the
  /// connection closes.
  pub fn close(&self) {
    let mut state = lock(&self.state);
    state.closed = true;
    self.close_if_drained(&mut state);
    self.wake.notify_one();
  }

  fn close_if_drained(&self, state: &mut State) {
    if state.closed && state.pipe.is_idle() && matches!(state.link, Link::Up(_)) {
      state.drop_link(CLOSED);
    }
  }

  pub fn is_closed(&self) -> bool {
    lock(&self.state).closed
  }
}

/// How a wire's part of a [`flush`] began.
enum Start<'a> {
  /// Nothing to poll for: the answers (or failures) it has.
  Done(Vec<(f64, Reply)>),
  Polling(Flushing<'a>),
}

/// A wire in the middle of a [`flush`].
struct Flushing<'a> {
  wire: &'a Arc<Wire>,
  socket: Arc<Socket>,
  /// This wire polls for its answers.
  spin: bool,
  /// The JS thread's loop is busy: it collects the answers on its next turn.
  leave_to_js: bool,
  budget: Duration,
  answered: Vec<(Job, Value)>,
  failed: Vec<(f64, Reply)>,
  /// Answers are still due and this wire polls for them.
  polling: bool,
  /// The connection was lost or replaced during the flush.
  gone: bool,
}

impl Flushing<'_> {
  /// Reads (and writes) what the socket allows, once.
  fn poll(&mut self) {
    let mut state = lock(&self.wire.state);
    if !state.is_up_on(&self.socket) {
      // Lost meanwhile (the watcher failed the calls still in flight).
      self.gone = true;
      self.polling = false;
      return;
    }
    if let Err(cause) = state.pipe.pump(&self.socket, &mut self.answered) {
      self.failed = state.drop_link(&self.wire.lost(&cause));
      drop(state);
      self.wire.connection_lost();
      self.gone = true;
      self.polling = false;
      return;
    }
    self.polling = !state.pipe.is_idle();
  }

  /// Ends the flush for this wire: records how the spin went, leaves what
  /// is still due to a watcher or to the JS thread's next flush; answers.
  fn finish(self, partial: bool, took: Duration) -> Vec<(f64, Reply)> {
    if !self.gone {
      let mut state = lock(&self.wire.state);
      if state.is_up_on(&self.socket) {
        // Stopping at enough answers is no failure to get them in time.
        if self.spin && !partial {
          let answered_all = state.pipe.is_idle();
          state.spin.record(took, answered_all);
        }
        state.js_collects = self.leave_to_js || partial;
        self.wire.watch_if_needed(&mut state, &self.socket);
        self.wire.close_if_drained(&mut state);
      }
    }
    let mut answers = self.wire.answer(self.answered);
    answers.extend(self.failed);
    answers
  }
}

impl Follower for Wire {
  fn relocate(self: &Arc<Self>, to: Option<&str>) {
    Wire::relocate(self, to);
  }

  fn is_closed(&self) -> bool {
    Wire::is_closed(self)
  }
}

/// Sends the calls queued on `wires` since the last flush and, if `spin`,
/// polls for answers (see [`Spin`]) until all or [`ENOUGH_ANSWERS`] came;
/// returns them. The rest arrive through [`Replies`] or, when the spin
/// stopped at enough answers or the JS thread's event loop (`events`) is
/// busy, are taken by a later flush (see [`Wire::awaiting`]); with `defer`
/// the writing, too, waits for that later flush.
pub fn flush(
  wires: &[Arc<Wire>],
  spin: bool,
  defer: bool,
  events: Option<&EventLoop>,
) -> Vec<(f64, Reply)> {
  let started = Instant::now();
  let loop_has_work = || events.is_some_and(EventLoop::has_work);
  // Asked once a flush, and only if some wire has calls: it costs a syscall.
  let mut busy = None;
  let mut busy_once = || *busy.get_or_insert_with(loop_has_work);
  let mut answers = Vec::new();
  let mut flushing = Vec::new();
  for wire in wires {
    match wire.start_flush(spin, defer, &mut busy_once) {
      Start::Done(done) => answers.extend(done),
      Start::Polling(started) => flushing.push(started),
    }
  }
  let spinning = flushing.iter().any(|f| f.spin);
  let budget = flushing
    .iter()
    .filter(|f| f.spin)
    .map(|f| f.budget)
    .max()
    .unwrap_or_default();
  let mut polls = 1u32;
  let partial = loop {
    let due = flushing.iter().any(|f| f.polling);
    let answered: usize = flushing.iter().map(|f| f.answered.len()).sum();
    let partial = spinning && due && answered >= ENOUGH_ANSWERS;
    // Asking the event loop costs a syscall: every 8th poll is soon enough.
    if !due
      || partial
      || started.elapsed() >= budget
      || (polls.is_multiple_of(8) && loop_has_work())
    {
      break partial;
    }
    // Between polls the lock is free for a watcher of older calls.
    std::hint::spin_loop();
    polls += 1;
    for wire in flushing.iter_mut().filter(|f| f.polling) {
      wire.poll();
    }
  };
  let took = started.elapsed();
  for wire in flushing {
    answers.extend(wire.finish(partial, took));
  }
  answers
}

/// Writes the calls queued on `wires` so far without waiting for their
/// answers, because more calls are coming this turn and its closing
/// [`flush`] waits for all of them: Redis works on the first calls of a
/// large turn while the JS thread makes the rest. Returns the answers that
/// had already arrived.
pub fn write_early(wires: &[Arc<Wire>]) -> Vec<(f64, Reply)> {
  let mut answers = Vec::new();
  for wire in wires {
    let mut state = lock(&wire.state);
    let socket = match &state.link {
      Link::Up(socket) if !state.closed && !state.queued.is_empty() => Arc::clone(socket),
      _ => continue,
    };
    for job in coalesce(std::mem::take(&mut state.queued)) {
      state.pipe.enqueue(job);
    }
    let mut answered = Vec::new();
    let failed = match state.pipe.pump(&socket, &mut answered) {
      Ok(()) => Vec::new(),
      Err(cause) => state.drop_link(&wire.lost(&cause)),
    };
    let lost = !failed.is_empty() || !matches!(state.link, Link::Up(_));
    drop(state);
    if lost {
      wire.connection_lost();
    }
    answers.extend(wire.answer(answered));
    answers.extend(failed);
  }
  answers
}

/// Sends `job` again after a pause (see [`refusal::backoff`]) through
/// `resend`, or, when its deadline would pass first, answers it as failed
/// with `cause`.
pub fn retry_later(
  mut job: Job,
  cause: String,
  resend: impl FnOnce(Job) + Send + 'static,
) -> Vec<(f64, Reply)> {
  let pause = refusal::backoff(job.retries);
  if Instant::now() + pause >= job.deadline {
    let tries = u32::from(job.retries) + 1;
    return job.failed(&format!(
      "{cause} (refused {tries} times within commandTimeoutMs)"
    ));
  }
  job.retries = job.retries.saturating_add(1);
  IO.spawn(async move {
    tokio::time::sleep(pause).await;
    resend(job);
  });
  Vec::new()
}
