//! One connection to Redis, written and read on the JS thread when it can be.
//!
//! On a small machine a round trip to a local Redis costs less in Redis than
//! in waking threads up: a client that sleeps until the answer arrives waits
//! ~54 µs for an `EVALSHA` here, one that keeps polling its socket gets the
//! answer in ~23 µs. ioredis sleeps in Node's event loop; our first design
//! (the `redis` crate's multiplexed connection on a tokio thread) slept on
//! two threads, the I/O thread's and then the JS thread's.
//!
//! So a [`Wire`] writes the calls one turn of the JS event loop made from
//! the JS thread itself, then polls the socket for their answers for a short,
//! bounded time (the *spin*, see [`Spin`]). Answers that arrive in time are
//! handed back to JS by the flush itself: nobody slept, nobody was woken.
//! A turn that makes many calls writes them 16 at a time as it goes
//! ([`Wire::write_early`]), and a spin stops once 16 answers are in
//! ([`ENOUGH_ANSWERS`]), so Redis works while JS makes or settles the rest.
//! Whatever is still awaited after the spin is left to a watcher task on the
//! Redis I/O thread ([`IO`]), which waits for the socket in epoll (through
//! tokio), decodes the answers and hands them to JS through [`Replies`], and
//! enforces the command timeout. Connecting and the handshake run there too.
//!
//! Commands are encoded by the `redis` crate; [`resp`] finds where each
//! reply ends and decodes it (the common shapes itself, the rest with the
//! crate's parser).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::pin::pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use ::redis::{Client, ConnectionAddr, ConnectionInfo, RedisResult, ServerErrorKind, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};

use super::event_loop::EventLoop;
use super::replies::{finish_elsewhere, Replies, Reply};
use super::resp::{self, Scan};
use super::scripts::{Lua, CIRCUIT, RATE_LIMIT};
use crate::errors::{guard, lock};
use crate::tls::{self, TlsSocket};
use rustls::ClientConfig;

/// The thread all Redis I/O of the process waits on: one current-thread
/// tokio runtime for connection attempts, watchers and their timers. The
/// thread never ends; it holds nothing that keeps Node running.
static IO: LazyLock<tokio::runtime::Handle> = LazyLock::new(|| {
  let runtime = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .expect("cannot build the Redis I/O runtime");
  let handle = runtime.handle().clone();
  std::thread::Builder::new()
    .name("stoma-redis-io".into())
    .spawn(move || runtime.block_on(std::future::pending::<()>()))
    .expect("cannot start the Redis I/O thread");
  handle
});

/// After a failed connection attempt, calls within this pause fail at once
/// with its cause instead of each trying again: a burst of calls against a
/// dead server costs one attempt, yet the first call after the pause
/// reconnects, well within a second of the server coming back.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Bytes asked of the socket per read, at least.
const READ_CHUNK: usize = 64 * 1024;

/// Turns a call's answer from Redis into its reply (a server error for that
/// one command arrives as an `Err`).
pub type Decode = Box<dyn FnOnce(RedisResult<Value>) -> RedisResult<Reply> + Send>;

/// One call: its command, what to do with the answer, and by when.
pub struct Job {
  pub id: f64,
  pub store: &'static str,
  pub command: ::redis::Cmd,
  /// The script an `EVALSHA` command runs, to resend it with its source if
  /// the server lost it (taken once resent, so it is resent at most once).
  pub script: Option<&'static Lua>,
  pub decode: Decode,
  pub deadline: Instant,
}

/// A connected socket, read and written without blocking.
enum Socket {
  Tcp(std::net::TcpStream),
  // Boxed: a TLS session is ~1 KiB, the plain sockets a few bytes.
  Tls(Box<TlsSocket>),
  #[cfg(unix)]
  Unix(std::os::unix::net::UnixStream),
}

impl Socket {
  fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
    match self {
      Socket::Tcp(stream) => (&*stream).read(buf),
      Socket::Tls(stream) => stream.read(buf),
      #[cfg(unix)]
      Socket::Unix(stream) => (&*stream).read(buf),
    }
  }

  fn write(&self, buf: &[u8]) -> io::Result<usize> {
    match self {
      Socket::Tcp(stream) => (&*stream).write(buf),
      Socket::Tls(stream) => stream.write(buf),
      #[cfg(unix)]
      Socket::Unix(stream) => (&*stream).write(buf),
    }
  }

  /// Sends what a TLS session still holds (`WouldBlock` if some must wait).
  fn flush(&self) -> io::Result<()> {
    match self {
      Socket::Tls(stream) => stream.flush(),
      _ => Ok(()),
    }
  }

  /// Bytes wait in a TLS session for room in the socket.
  fn wants_write(&self) -> bool {
    matches!(self, Socket::Tls(stream) if stream.wants_write())
  }

  /// Tells the server we are gone now, even while a watcher still holds a
  /// duplicate of the socket.
  fn shut_down(&self) {
    let _ = match self {
      Socket::Tcp(stream) => stream.shutdown(std::net::Shutdown::Both),
      Socket::Tls(stream) => stream.tcp.shutdown(std::net::Shutdown::Both),
      #[cfg(unix)]
      Socket::Unix(stream) => stream.shutdown(std::net::Shutdown::Both),
    };
  }

  /// A duplicate registered with the I/O thread's reactor, to wait on. It
  /// is registered only while answers are awaited: registered for good, the
  /// reactor would wake for every answer the JS thread already took.
  fn watcher(&self) -> io::Result<Watcher> {
    Ok(match self {
      Socket::Tcp(stream) => Watcher::Tcp(tokio::net::TcpStream::from_std(stream.try_clone()?)?),
      Socket::Tls(stream) => {
        Watcher::Tcp(tokio::net::TcpStream::from_std(stream.tcp.try_clone()?)?)
      }
      #[cfg(unix)]
      Socket::Unix(stream) => Watcher::Unix(tokio::net::UnixStream::from_std(stream.try_clone()?)?),
    })
  }
}

enum Watcher {
  Tcp(tokio::net::TcpStream),
  #[cfg(unix)]
  Unix(tokio::net::UnixStream),
}

impl Watcher {
  /// Waits until the socket is ready for some of `interest`; answers the
  /// one direction to act on (tokio's `try_io` takes a single one).
  async fn ready(&self, interest: Interest) -> io::Result<Interest> {
    let ready = match self {
      Watcher::Tcp(stream) => stream.ready(interest).await?,
      #[cfg(unix)]
      Watcher::Unix(stream) => stream.ready(interest).await?,
    };
    Ok(
      if ready.is_readable() || ready.is_read_closed() || !interest.is_writable() {
        Interest::READABLE
      } else {
        Interest::WRITABLE
      },
    )
  }

  /// Runs `io`, clearing the readiness it saw if it ends with `WouldBlock`
  /// (done inside tokio's `try_io`, so readiness that arrives meanwhile is
  /// not lost).
  fn try_io<R>(&self, interest: Interest, io: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
    match self {
      Watcher::Tcp(stream) => stream.try_io(interest, io),
      #[cfg(unix)]
      Watcher::Unix(stream) => stream.try_io(interest, io),
    }
  }
}

/// The `tls` option: whether it asks for TLS (a `rediss://` url does too),
/// and the PEM certificates to trust instead of Mozilla's roots.
pub struct Tls<'a> {
  pub wanted: bool,
  pub ca: Option<&'a [u8]>,
}

/// What follows the scheme of a url that asks for TLS (`rediss://` or
/// `valkeys://`, in any case), or `None` for any other url.
fn after_tls_scheme(url: &str) -> Option<&str> {
  let (scheme, rest) = url.split_once("://")?;
  (scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")).then_some(rest)
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

/// Answers after which a spin stops even though more are due: the JS
/// thread then acts on them (its callers typically make new calls, which go
/// out while Redis works on the rest) and collects the rest with its next
/// flush, instead of Redis and JS taking turns to wait for each other
/// (64 calls in flight: ~275 → ~440 k/s, Redis ~94% busy).
const ENOUGH_ANSWERS: usize = 16;

/// The longest spin, in multiples of the base budget.
const MAX_SPIN_FACTOR: u32 = 10;

/// How long the JS thread polls for answers after a flush, backing off when
/// polling keeps failing (a remote server, a big batch, a slow script) so a
/// connection whose answers always take long costs almost no polling.
struct Spin {
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
  fn new(budget: Duration) -> Self {
    Spin {
      budget,
      recent: Duration::ZERO,
      skip: 0,
      backoff: 0,
    }
  }

  fn wanted(&mut self) -> bool {
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
  fn budget_for(&self, calls: usize, bytes: usize) -> Duration {
    let extra = Duration::from_nanos(3_000 * calls as u64 + bytes as u64);
    (self.budget + extra)
      .max(self.recent * 2)
      .min(self.budget * MAX_SPIN_FACTOR)
  }

  /// Records a spin that took `took` and got every answer, or did not.
  fn record(&mut self, took: Duration, answered_all: bool) {
    if answered_all {
      self.backoff = 0;
      self.recent = took.max(self.recent - self.recent / 8);
    } else {
      self.backoff = (self.backoff * 2).clamp(1, 64);
      self.skip = self.backoff;
    }
  }
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
  /// Calls written, in the order their answers will come.
  in_flight: VecDeque<Job>,
  /// Encoded commands; `unsent[written..]` is still to go.
  unsent: Vec<u8>,
  written: usize,
  /// Bytes read; `inbox[..filled]` holds data (the rest is spare room,
  /// kept initialized so reads need no unsafe code).
  inbox: Vec<u8>,
  filled: usize,
  /// A watcher task waits on the socket of this generation.
  watched: bool,
  /// The JS thread will flush again for the answers in flight (see
  /// [`Wire::awaiting`]); a watcher, if any, should leave.
  js_collects: bool,
  spin: Spin,
}

impl State {
  /// Encodes `job` for sending and counts it in flight.
  fn enqueue(&mut self, job: Job) {
    job.command.write_packed_command(&mut self.unsent);
    self.in_flight.push_back(job);
  }

  /// Bytes are still to go out: commands not written, or records a TLS
  /// session holds.
  fn has_unsent(&self, socket: &Socket) -> bool {
    self.written < self.unsent.len() || socket.wants_write()
  }

  /// Writes what is unsent and reads what has arrived until the socket would
  /// block (so a watcher may then wait for it again), adding every call
  /// whose reply is complete to `answered` — where they stay if the
  /// connection then fails, so they are answered all the same. Commands the
  /// server refused with NOSCRIPT are sent again with their script's source.
  fn pump(&mut self, socket: &Socket, answered: &mut Vec<(Job, Value)>) -> Result<(), String> {
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
      if !self.in_flight.is_empty() {
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
          let Some(mut job) = self.in_flight.pop_front() else {
            return Err("protocol error: an answer to no command".into());
          };
          let value = resp::decode(&self.inbox[at..at + length])
            .map_err(|error| format!("protocol error: {error}"))?;
          at += length;
          match job.script.take() {
            Some(lua) if is_noscript(&value) => {
              job.command = lua.call_with_source(&job.command);
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

  /// Forgets the connection and everything sent on it; answers every call
  /// in flight with `cause`.
  fn drop_link(&mut self, cause: &str) -> Vec<(f64, Reply)> {
    if let Link::Up(socket) = &self.link {
      socket.shut_down();
    }
    self.link = Link::Down { failed: None };
    self.watched = false;
    self.js_collects = false;
    self.unsent.clear();
    self.written = 0;
    self.filled = 0;
    fail_all(self.in_flight.drain(..), cause)
  }
}

fn is_noscript(value: &Value) -> bool {
  matches!(value, Value::ServerError(error) if error.kind() == Some(ServerErrorKind::NoScript))
}

/// What the watcher found when it looked at the socket.
enum Look {
  Answered(Vec<(Job, Value)>),
  /// The connection failed, for this cause, after answering these calls.
  Lost(Vec<(Job, Value)>, String),
  /// A newer connection replaced this one.
  Replaced,
}

/// The connection one adapter's stores share, opened in the background and
/// reopened on demand.
pub struct Wire {
  info: ConnectionInfo,
  /// Set when the connection is made over TLS.
  tls: Option<Arc<ClientConfig>>,
  /// Where the server is, for error messages (no credentials).
  address: String,
  connect_timeout: Duration,
  command_timeout: Duration,
  state: Mutex<State>,
  replies: Arc<Replies>,
  /// The JS thread's event loop, when it can tell us it has other work.
  event_loop: Option<EventLoop>,
  /// Tells the task of the moment to look at the state again: the watcher
  /// (there are bytes it must write, or the connection was closed) or the
  /// connection attempt (a call joined the wait).
  wake: tokio::sync::Notify,
}

impl Wire {
  /// Parses `url`; fails at once if it is malformed (or `tls.ca` is). The
  /// connection uses TLS when `tls` asks or the url's scheme does.
  pub fn new(
    url: &str,
    tls: Tls,
    connect_timeout: Duration,
    command_timeout: Duration,
    spin: Duration,
    replies: Arc<Replies>,
    event_loop: Option<EventLoop>,
  ) -> Result<Arc<Self>, String> {
    // The redis crate parses TLS schemes only when built with its own TLS.
    let (plain_url, wants_tls) = match after_tls_scheme(url) {
      Some(rest) => (format!("redis://{rest}"), true),
      None => (url.to_owned(), false),
    };
    if wants_tls && plain_url.ends_with("#insecure") {
      return Err("#insecure (no certificate check) is not supported; pass tls: { ca } with the server's CA certificate".into());
    }
    let info = Client::open(plain_url.as_str())
      .map_err(|error| error.to_string())?
      .get_connection_info()
      .clone();
    let tls = match (wants_tls || tls.wanted, info.addr()) {
      (false, _) => None,
      (true, ConnectionAddr::Tcp(..)) => Some(tls::client_config(tls.ca)?),
      (true, _) => return Err("TLS works over TCP only, not a unix socket".into()),
    };
    Ok(Arc::new(Wire {
      tls,
      address: info.addr().to_string(),
      info,
      connect_timeout,
      command_timeout,
      state: Mutex::new(State {
        link: Link::Down { failed: None },
        generation: 0,
        closed: false,
        queued: Vec::new(),
        waiting: Vec::new(),
        in_flight: VecDeque::new(),
        unsent: Vec::new(),
        written: 0,
        inbox: Vec::new(),
        filled: 0,
        watched: false,
        js_collects: false,
        spin: Spin::new(spin),
      }),
      replies,
      event_loop,
      wake: tokio::sync::Notify::new(),
    }))
  }

  /// When a call made now must be answered.
  pub fn deadline(&self) -> Instant {
    Instant::now() + self.command_timeout
  }

  pub fn replies(&self) -> &Arc<Replies> {
    &self.replies
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

  /// Queues `job` until the next [`flush`](Self::flush).
  pub fn submit(&self, job: Job) {
    lock(&self.state).queued.push(job);
  }

  /// Sends the calls queued since the last flush and, if `spin`, polls for
  /// answers (see [`Spin`]) until all or [`ENOUGH_ANSWERS`] came; returns
  /// them. The rest arrive through [`Replies`] or, when the spin stopped at
  /// enough answers or the JS thread's event loop is busy, are taken by a
  /// later flush (see [`awaiting`](Self::awaiting)); with `defer` the
  /// writing, too, waits for that later flush.
  pub fn flush(self: &Arc<Self>, spin: bool, defer: bool) -> Vec<(f64, Reply)> {
    let mut state = lock(&self.state);
    let jobs = std::mem::take(&mut state.queued);
    if jobs.is_empty() && state.in_flight.is_empty() {
      return Vec::new();
    }
    if state.closed && !jobs.is_empty() {
      return fail_all(jobs, "the Redis connection was closed");
    }
    let socket = match &state.link {
      Link::Up(socket) => Arc::clone(socket),
      Link::Down {
        failed: Some((at, cause)),
      } if at.elapsed() < RECONNECT_PAUSE => {
        let cause = cause.clone();
        return fail_all(jobs, &cause);
      }
      Link::Down { .. } => {
        state.waiting.extend(jobs);
        self.start_connecting(&mut state);
        return Vec::new();
      }
      Link::Connecting => {
        state.waiting.extend(jobs);
        self.wake.notify_one();
        return Vec::new();
      }
    };
    let mut answered = Vec::new();
    let overdue = |state: &State| {
      state
        .in_flight
        .front()
        .is_some_and(|oldest| oldest.deadline <= Instant::now())
    };
    if overdue(&state) {
      // The answers may be waiting unread (the JS thread was busy, and a
      // spin that stopped at enough answers left them to this flush): read
      // before calling them late.
      let cause = match state.pump(&socket, &mut answered) {
        Err(cause) => Some(self.lost(&cause)),
        Ok(()) => overdue(&state).then(|| self.no_answer()),
      };
      if let Some(cause) = cause {
        let mut failed = state.drop_link(&cause);
        failed.extend(fail_all(jobs, &cause));
        drop(state);
        return self.answer(answered).into_iter().chain(failed).collect();
      }
    }
    for job in jobs {
      state.enqueue(job);
    }
    // On a busy Node loop the JS layer comes back for the answers (see
    // `awaiting`), so neither a spin nor a watcher is needed now; and with
    // `defer` the writing waits for that too, so the calls of every request
    // the loop serves this turn go out in one write (one wake-up of Redis).
    let busy = self.loop_has_work();
    let leave_to_js = spin && busy;
    if leave_to_js && defer {
      state.js_collects = true;
      drop(state);
      return self.answer(answered);
    }
    let spin = spin && !busy && state.spin.wanted();
    let budget = state
      .spin
      .budget_for(state.in_flight.len(), state.unsent.len() - state.written);
    let started = Instant::now();
    let mut polls = 0u32;
    let partial = loop {
      polls += 1;
      match state.pump(&socket, &mut answered) {
        Ok(()) => {}
        Err(cause) => {
          let failed = state.drop_link(&self.lost(&cause));
          drop(state);
          return self.answer(answered).into_iter().chain(failed).collect();
        }
      }
      let partial = spin && answered.len() >= ENOUGH_ANSWERS && !state.in_flight.is_empty();
      // Asking the event loop costs a syscall: every 8th poll is soon enough.
      if state.in_flight.is_empty()
        || partial
        || !spin
        || started.elapsed() >= budget
        || (polls.is_multiple_of(8) && self.loop_has_work())
      {
        break partial;
      }
      // Let a watcher of older calls take the lock between polls.
      drop(state);
      std::hint::spin_loop();
      state = lock(&self.state);
      if !matches!(&state.link, Link::Up(current) if Arc::ptr_eq(current, &socket)) {
        // Lost meanwhile (the watcher failed the calls still in flight).
        drop(state);
        return self.answer(answered);
      }
    };
    // Stopping at enough answers is no failure to get them in time.
    if spin && !partial {
      let answered_all = state.in_flight.is_empty();
      state.spin.record(started.elapsed(), answered_all);
    }
    state.js_collects = leave_to_js || partial;
    if !state.js_collects {
      self.watch_if_needed(&mut state, &socket);
    }
    self.close_if_drained(&mut state);
    drop(state);
    self.answer(answered)
  }

  /// Writes the calls queued so far without waiting for their answers,
  /// because more calls are coming this turn and its closing
  /// [`flush`](Self::flush) waits for all of them: Redis works on the first
  /// calls of a large turn while the JS thread makes the rest. Returns the
  /// answers that had already arrived.
  pub fn write_early(self: &Arc<Self>) -> Vec<(f64, Reply)> {
    let mut state = lock(&self.state);
    let socket = match &state.link {
      Link::Up(socket) if !state.closed => Arc::clone(socket),
      _ => return Vec::new(),
    };
    for job in std::mem::take(&mut state.queued) {
      state.enqueue(job);
    }
    let mut answered = Vec::new();
    let failed = match state.pump(&socket, &mut answered) {
      Ok(()) => Vec::new(),
      Err(cause) => state.drop_link(&self.lost(&cause)),
    };
    drop(state);
    self.answer(answered).into_iter().chain(failed).collect()
  }

  /// Calls are in flight that no watcher waits for: the JS layer must
  /// flush again (it does so once per turn of its event loop).
  pub fn awaiting(&self) -> bool {
    let state = lock(&self.state);
    !state.in_flight.is_empty() && state.js_collects && matches!(state.link, Link::Up(_))
  }

  fn no_answer(&self) -> String {
    format!(
      "Redis at {} did not answer within {} ms",
      self.address,
      self.command_timeout.as_millis()
    )
  }

  fn loop_has_work(&self) -> bool {
    self.event_loop.as_ref().is_some_and(EventLoop::has_work)
  }

  /// [`flush`](Self::flush) from a thread other than the JS thread: no
  /// spin, and whatever answers the writing already brought go through
  /// [`Replies`].
  pub fn flush_elsewhere(self: &Arc<Self>) {
    let answers = self.flush(false, false);
    self.replies.send_all(answers);
  }

  /// Makes sure a watcher waits for what is still in flight.
  fn watch_if_needed(self: &Arc<Self>, state: &mut State, socket: &Arc<Socket>) {
    if state.in_flight.is_empty() {
      return;
    }
    if state.watched {
      if state.has_unsent(socket) {
        self.wake.notify_one();
      }
      return;
    }
    state.watched = true;
    IO.spawn(Arc::clone(self).watch(Arc::clone(socket), state.generation));
  }

  /// Decodes answered calls (outside the state's lock).
  fn answer(&self, answered: Vec<(Job, Value)>) -> Vec<(f64, Reply)> {
    let mut answers = Vec::with_capacity(answered.len());
    for (job, value) in answered {
      let (id, store) = (job.id, job.store);
      let decoded = guard(store, || Ok((job.decode)(value.extract_error())));
      let reply = match decoded {
        Ok(Ok(Reply::Later(finish))) => {
          finish_elsewhere(id, finish, Arc::clone(&self.replies));
          continue;
        }
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => Reply::Failed(format!("{store}: {}", self.lost(&error.to_string()))),
        Err(panicked) => Reply::Failed(panicked.reason.clone()),
      };
      answers.push((id, reply));
    }
    answers
  }

  fn lost(&self, cause: &str) -> String {
    format!("Redis at {}: {cause}", self.address)
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
        // Nothing left to wait for, or the JS thread collects the answers
        // itself (a busy Node loop): stop listening, so that the I/O thread
        // is not woken for answers the JS thread takes.
        let Some(oldest) = state.in_flight.front().filter(|_| !state.js_collects) else {
          state.watched = false;
          return self.close_if_drained(&mut state);
        };
        let deadline = oldest.deadline;
        let interest = if state.has_unsent(&socket) {
          Interest::READABLE | Interest::WRITABLE
        } else {
          Interest::READABLE
        };
        (interest, deadline)
      };
      let ready = tokio::select! {
        ready = watcher.ready(interest) => ready,
        () = self.wake.notified() => continue,
        () = tokio::time::sleep_until(deadline.into()) => {
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
        match state.pump(&socket, &mut answered) {
          Ok(()) => {
            look = Some(Look::Answered(answered));
            // The pump ended on WouldBlock: tokio may clear the readiness.
            Err(io::ErrorKind::WouldBlock.into())
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
  fn give_up(&self, generation: u64, cause: &str) {
    let failed = {
      let mut state = lock(&self.state);
      if state.generation != generation || !matches!(state.link, Link::Up(_)) {
        return;
      }
      state.drop_link(cause)
    };
    if !failed.is_empty() {
      self.replies.send_all(failed);
    }
  }

  /// Opens connection `generation` (within the connect timeout), failing
  /// calls that wait for it past their deadline, then sends them.
  async fn connect(self: Arc<Self>, generation: u64) {
    let mut opening = pin!(tokio::time::timeout(
      self.connect_timeout,
      open(&self.info, self.tls.as_ref())
    ));
    let opened = loop {
      let next_deadline = lock(&self.state)
        .waiting
        .iter()
        .map(|job| job.deadline)
        .min();
      let expiry = async {
        match next_deadline {
          Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
          None => std::future::pending().await,
        }
      };
      tokio::select! {
        opened = &mut opening => break opened,
        () = expiry => self.expire_waiting(),
        // A call joined the wait: its deadline may be the next one.
        () = self.wake.notified() => {}
      }
    };
    let ms = self.connect_timeout.as_millis();
    let opened = match opened {
      Ok(Ok(socket)) => Ok(socket),
      Ok(Err(cause)) => Err(cause),
      Err(_) => Err(format!("no answer within {ms} ms")),
    };
    let mut state = lock(&self.state);
    if state.generation != generation {
      return;
    }
    // Calls made before close() still go out; the connection closes once
    // they are answered.
    let waiting = std::mem::take(&mut state.waiting);
    match opened {
      Ok(socket) => {
        let socket = Arc::new(socket);
        state.link = Link::Up(Arc::clone(&socket));
        for job in waiting {
          state.enqueue(job);
        }
        // The watcher writes them as soon as it starts.
        self.watch_if_needed(&mut state, &socket);
        self.close_if_drained(&mut state);
      }
      Err(cause) => {
        let cause: Arc<str> =
          format!("cannot connect to Redis at {}: {cause}", self.address).into();
        state.link = Link::Down {
          failed: Some((Instant::now(), cause.clone())),
        };
        drop(state);
        self.replies.send_all(fail_all(waiting, &cause));
      }
    }
  }

  /// Fails the calls that waited for a connection past their deadline.
  fn expire_waiting(&self) {
    let now = Instant::now();
    let expired: Vec<Job> = {
      let mut state = lock(&self.state);
      let (expired, kept) = std::mem::take(&mut state.waiting)
        .into_iter()
        .partition(|job| job.deadline <= now);
      state.waiting = kept;
      expired
    };
    let ms = self.command_timeout.as_millis();
    self.replies.send_all(fail_all(
      expired,
      &format!("cannot connect to Redis at {} within {ms} ms", self.address),
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
    if state.closed && state.in_flight.is_empty() && matches!(state.link, Link::Up(_)) {
      state.drop_link("the Redis connection was closed");
    }
  }

  pub fn is_closed(&self) -> bool {
    lock(&self.state).closed
  }
}

fn fail_all(jobs: impl IntoIterator<Item = Job>, cause: &str) -> Vec<(f64, Reply)> {
  jobs
    .into_iter()
    .map(|job| (job.id, Reply::Failed(format!("{}: {cause}", job.store))))
    .collect()
}

/// Connects to the server and runs the handshake: AUTH and SELECT as the
/// url asks, and both scripts loaded so the first calls need no retry.
async fn open(info: &ConnectionInfo, tls: Option<&Arc<ClientConfig>>) -> Result<Socket, String> {
  let io_cause = |error: io::Error| error.to_string();
  match info.addr() {
    ConnectionAddr::Tcp(host, port) => {
      let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port))
        .await
        .map_err(io_cause)?;
      stream.set_nodelay(true).map_err(io_cause)?;
      let Some(config) = tls else {
        handshake(&mut stream, info).await?;
        return Ok(Socket::Tcp(stream.into_std().map_err(io_cause)?));
      };
      let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
      let mut stream = connector
        .connect(tls::server_name(host)?, stream)
        .await
        .map_err(|error| format!("TLS handshake failed: {error}"))?;
      handshake(&mut stream, info).await?;
      let (tcp, session) = stream.into_inner();
      Ok(Socket::Tls(Box::new(TlsSocket::new(
        tcp.into_std().map_err(io_cause)?,
        session,
      ))))
    }
    #[cfg(unix)]
    ConnectionAddr::Unix(path) => {
      let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(io_cause)?;
      handshake(&mut stream, info).await?;
      Ok(Socket::Unix(stream.into_std().map_err(io_cause)?))
    }
    other => Err(format!("unsupported address {other}")),
  }
}

async fn handshake(
  stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
  info: &ConnectionInfo,
) -> Result<(), String> {
  let settings = info.redis_settings();
  let mut commands = Vec::new();
  let mut checked = 0;
  if let Some(password) = settings.password() {
    let mut auth = ::redis::cmd("AUTH");
    if let Some(username) = settings.username() {
      auth.arg(username);
    }
    auth.arg(password);
    commands.push(auth);
    checked += 1;
  }
  if settings.db() != 0 {
    let mut select = ::redis::cmd("SELECT");
    select.arg(settings.db());
    commands.push(select);
    checked += 1;
  }
  // A failure to load a script is not fatal: calls then fall back to EVAL.
  commands.push(RATE_LIMIT.load());
  commands.push(CIRCUIT.load());
  let mut bytes = Vec::new();
  for command in &commands {
    command.write_packed_command(&mut bytes);
  }
  stream
    .write_all(&bytes)
    .await
    .map_err(|error| error.to_string())?;
  let mut inbox = Vec::new();
  let mut at = 0;
  for index in 0..commands.len() {
    let length = loop {
      match resp::scan(&inbox[at..]).map_err(|error| format!("protocol error: {}", error.0))? {
        Scan::Complete(length) => break length,
        Scan::Partial(_) => {
          let mut chunk = [0; 4096];
          let n = stream
            .read(&mut chunk)
            .await
            .map_err(|error| error.to_string())?;
          if n == 0 {
            return Err("the server closed the connection during the handshake".into());
          }
          inbox.extend_from_slice(&chunk[..n]);
        }
      }
    };
    let value = resp::decode(&inbox[at..at + length]).map_err(|error| error.to_string())?;
    at += length;
    if index < checked {
      value.extract_error().map_err(|error| error.to_string())?;
    }
  }
  Ok(())
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

  #[test]
  fn tls_schemes_are_recognised_in_any_case() {
    assert_eq!(after_tls_scheme("rediss://h:6380/0"), Some("h:6380/0"));
    assert_eq!(after_tls_scheme("REDISS://h"), Some("h"));
    assert_eq!(after_tls_scheme("valkeys://h"), Some("h"));
    assert_eq!(after_tls_scheme("redis://h"), None);
    assert_eq!(after_tls_scheme("unix:///tmp/redis.sock"), None);
  }

  #[test]
  fn noscript_replies_are_recognised() {
    assert!(is_noscript(
      &resp::decode(b"-NOSCRIPT No matching script.\r\n").unwrap()
    ));
    assert!(!is_noscript(&resp::decode(b"-ERR other\r\n").unwrap()));
  }
}
