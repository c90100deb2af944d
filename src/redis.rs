//! Stores in Redis, sharing their data with Stoma's JS `redisAdapter`.
//!
//! Keys and values are exactly those Stoma's adapter keeps (see the contract
//! doc), so a fleet can mix Stoma's stores and ours on one server:
//!
//! - `<prefix>rl:<key>`    — an integer counter that expires with its window;
//! - `<prefix>cb:<key>`    — the circuit's snapshot as JSON, with a 24-hour expiry;
//! - `<prefix>cache:<key>` — the response envelope ([`StoredResponse`]) with the ttl.
//!
//! What differs is how we get there:
//!
//! - Every circuit update runs as one Lua script on the server (read, change
//!   and write back atomically), so concurrent `recordFailure` calls are all
//!   counted; Stoma's adapter reads, changes and writes in three round trips
//!   and loses updates. Both scripts are loaded when a connection opens and
//!   run by `EVALSHA`; commands the server answers with `NOSCRIPT` (it lost
//!   its script cache) are sent again once the scripts are reloaded.
//! - One multiplexed connection carries every call of an adapter. The calls
//!   one turn of the JS event loop makes are queued and sent together as
//!   pipelines ([`Link::flush`]), and answers return to JS in batches
//!   ([`Replies`]), so under load a call costs a fraction of a wake-up.
//! - The cache envelope's JSON and base64 are handled in Rust
//!   ([`StoredResponse`]) and the body crosses into JS as one buffer.
//! - Garbage under our keys reads as a cache miss, a fresh closed circuit or
//!   a fresh rate-limit window, never as an error.
//!
//! The life of a call: the JS layer (`lib/redis.js`) picks a call id and
//! calls a method here, which builds the command and queues it; a microtask
//! flushes the queue to the Redis I/O thread ([`IO`]), which sends it and
//! decodes the answer; the answer is queued for JS and delivered, with the
//! others ready by then, to the JS function that settles each call's Promise.
//!
//! Failure behaviour: each call is bounded by `commandTimeoutMs` (waiting
//! for a connection included) and rejects with an error naming the store and
//! the cause. The connection is opened in the background when the adapter is
//! built and reopened on demand after it is lost (see [`Link`]), so calls
//! succeed again shortly after the server comes back, with no user action.

use std::future::Future;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::{Buffer, Function, ToNapiValue, Uint8Array, Unknown};
use napi::threadsafe_function::{ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{check_status, sys, Env, Error, Result, Status};
use napi_derive::napi;
use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, RedisResult, Script, ServerErrorKind, Value};
use tokio::sync::watch;

use crate::clock::{duration_ms, now_ms};
use crate::envelope::StoredResponse;
use crate::errors::{guard, guard_async, lock};

const RATE_LIMIT_STORE: &str = "RedisRateLimitStore";
const CIRCUIT_STORE: &str = "RedisCircuitBreakerStore";
const CACHE_STORE: &str = "RedisCacheStore";

/// Stoma keeps circuits for 24 hours after their last update, so that keys
/// of circuits nobody uses any more do not live forever.
const CIRCUIT_TTL_SECONDS: u32 = 86_400;

/// After a failed connection attempt, calls within this pause fail at once
/// with its cause instead of each trying again: a burst of calls against a
/// dead server costs one attempt, yet the first call after the pause
/// reconnects, well within a second of the server coming back.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Cache envelopes up to this size are encoded on the JS thread and decoded
/// on the I/O thread, where they are (with SIMD base64, about 15 µs for a
/// 64 KiB body: less than a hop to another thread costs on a busy machine);
/// larger ones on napi-rs's runtime, so neither thread stalls on a big
/// response.
const INLINE_ENVELOPE_BYTES: usize = 256 * 1024;

/// The thread all Redis I/O of the process runs on: one current-thread
/// tokio runtime. Connection drivers, batch tasks and timers all live there,
/// so a call costs one wake-up of this thread and one of the JS thread; on
/// napi-rs's shared multi-thread runtime, workers also woke each other to
/// steal work, which cost more CPU than the calls themselves. CPU-heavy work
/// (a large cache envelope) runs on napi-rs's runtime instead. The thread
/// never ends; it holds nothing that keeps Node running.
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

/// Runs `task` on the Redis I/O thread.
fn spawn_io(task: impl Future<Output = ()> + Send + 'static) {
  IO.spawn(task);
}

/// Most commands sent as one pipeline (see [`Link::flush`]).
const BATCH: usize = 16;

/// How many commands may queue for the socket before callers wait; the
/// crate's default of 50 is below the 64 in flight a busy gateway has.
const PIPELINE_BUFFER: usize = 1024;

/// A fixed-window counter: the same data as Stoma's script (INCR, and an
/// expiry set on the first hit) but in milliseconds, so fractional windows
/// work. Anything under the key that is not a counter with an expiry (a
/// string, another Redis type, a counter left without expiry) is replaced by
/// a fresh window rather than failing every call.
///
/// The window's end is read back as the key's absolute expiry
/// (PEXPIRETIME, Redis 7; computed from TIME and PTTL on older servers), so
/// every hit of a window, from any client, reports the same `resetAt`.
/// KEYS[1]: the counter. ARGV[1]: the window in ms (> 0).
/// Returns { count, resetAt in epoch ms }.
const RATE_LIMIT_LUA: &str = r#"
local key, window = KEYS[1], ARGV[1]

-- When the key expires, in epoch ms; -1 if it has no expiry.
local function expires_at()
  local at = redis.pcall('PEXPIRETIME', key)
  if type(at) == 'number' then
    return at
  end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    return -1
  end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl
end

local count = redis.pcall('INCR', key)
if type(count) == 'number' and count > 1 then
  local at = expires_at()
  if at > 0 then
    return { count, at }
  end
end
redis.call('SET', key, 1, 'PX', window)
return { 1, expires_at() }
"#;

/// One circuit-breaker operation, read-modify-write on the server.
/// KEYS[1]: the circuit. ARGV[1]: "get", "success", "failure" or
/// "transition"; ARGV[2]: now in epoch ms (the caller's clock, as Stoma uses
/// `Date.now()`); ARGV[3]: the target state of a transition.
/// The value is Stoma's JSON, written in Stoma's field order; anything that
/// does not decode to that shape reads as a fresh closed circuit (decoding
/// runs under `pcall`, so invalid JSON cannot make the script fail).
/// Returns { state, failureCount, successCount, lastFailureTime, lastStateChange }.
const CIRCUIT_LUA: &str = r#"
local key, op, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
local STATES = { closed = true, open = true, ['half-open'] = true }

local MAX_COUNT = 9007199254740991 -- Number.MAX_SAFE_INTEGER

local function is_count(v)
  return type(v) == 'number' and v >= 0 and v == math.floor(v) and v <= MAX_COUNT
end

local function load()
  local raw = redis.pcall('GET', key)
  if type(raw) == 'string' then
    local ok, c = pcall(cjson.decode, raw)
    if ok and type(c) == 'table' and STATES[c.state] and is_count(c.failureCount)
        and is_count(c.successCount) and is_count(c.lastFailureTime) and is_count(c.lastStateChange) then
      return c
    end
  end
  return { state = 'closed', failureCount = 0, successCount = 0, lastFailureTime = 0, lastStateChange = now }
end

local c = load()
if op == 'success' then
  -- Saturate: one more would leave the safe range, and the next read would
  -- then discard the value as garbage and forget the circuit.
  c.successCount = math.min(c.successCount + 1, MAX_COUNT)
elseif op == 'failure' then
  c.failureCount = math.min(c.failureCount + 1, MAX_COUNT)
  c.lastFailureTime = now
elseif op == 'transition' then
  local to = ARGV[3]
  if not STATES[to] then
    return redis.error_reply('unknown circuit state')
  end
  c.state = to
  c.lastStateChange = now
  if to == 'closed' then
    c.failureCount = 0
    c.successCount = 0
  elseif to == 'half-open' then
    c.successCount = 0
  end
end
if op ~= 'get' then
  redis.call('SET', key, string.format(
    '{"state":"%s","failureCount":%d,"successCount":%d,"lastFailureTime":%d,"lastStateChange":%d}',
    c.state, c.failureCount, c.successCount, c.lastFailureTime, c.lastStateChange), 'EX', ARGV[4])
end
return { c.state, c.failureCount, c.successCount, c.lastFailureTime, c.lastStateChange }
"#;

static RATE_LIMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RATE_LIMIT_LUA));
static CIRCUIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CIRCUIT_LUA));

/// An open connection, numbered so that a failure seen on an old one cannot
/// discard its replacement.
#[derive(Clone)]
struct Live {
  generation: u64,
  connection: MultiplexedConnection,
}

/// The outcome of one connection attempt, as its waiters receive it.
type Attempt = watch::Receiver<Option<std::result::Result<Live, Arc<str>>>>;

enum LinkState {
  /// No connection: none opened yet, the last one was lost, or the last
  /// attempt failed at the given instant for the given cause.
  Down { failed: Option<(Instant, Arc<str>)> },
  /// An attempt is under way; calls wait for its outcome.
  Connecting { generation: u64, attempt: Attempt },
  Up(Live),
  /// `close()` was called; every later call fails.
  Closed,
}

/// Turns a call's answer from Redis into its reply (a server error for that
/// one command arrives as an `Err`).
type Decode = Box<dyn FnOnce(RedisResult<Value>) -> RedisResult<Reply> + Send>;

/// A call waiting in the outbox: its command (built on the JS thread) and
/// what to do with the answer.
struct Job {
  id: f64,
  store: &'static str,
  command: Cmd,
  decode: Decode,
}

/// The one connection an adapter's stores share, opened in the background
/// and reopened on demand.
///
/// The `redis` crate's `ConnectionManager` also reconnects, but it retries a
/// failed attempt only when the next command fails, so the first call after
/// a long outage still fails on the stale attempt. Here a call that finds no
/// connection (and no recent failure) starts a fresh attempt and waits for
/// it, so recovery takes one round trip. Attempts run as their own tasks:
/// a call that gives up at its deadline does not cancel the attempt that
/// later calls will use.
struct Link {
  client: Client,
  config: AsyncConnectionConfig,
  /// Where the server is, for error messages (no credentials).
  address: String,
  prefix: String,
  connect_timeout: Duration,
  command_timeout: Duration,
  state: Mutex<LinkState>,
  generations: AtomicU64,
  /// Calls queued by the JS thread, sent together by the next batch task.
  outbox: Mutex<Vec<Job>>,
}

impl Link {
  fn new(url: &str, prefix: String, connect_timeout_ms: f64, command_timeout_ms: f64) -> RedisResult<Arc<Self>> {
    let client = Client::open(url)?;
    let connect_timeout = Duration::from_millis(duration_ms(connect_timeout_ms).max(1) as u64);
    // The connection's own response timeout is off: `run_batch` bounds each
    // whole call (waiting for a connection included) with the command timeout.
    let config = AsyncConnectionConfig::new()
      .set_connection_timeout(Some(connect_timeout))
      .set_response_timeout(None)
      .set_pipeline_buffer_size(PIPELINE_BUFFER);
    Ok(Arc::new(Link {
      address: client.get_connection_info().addr().to_string(),
      client,
      config,
      prefix,
      connect_timeout,
      command_timeout: Duration::from_millis(duration_ms(command_timeout_ms).max(1) as u64),
      state: Mutex::new(LinkState::Down { failed: None }),
      generations: AtomicU64::new(0),
      outbox: Mutex::new(Vec::new()),
    }))
  }

  /// `<prefix><kind>:<key>`, e.g. `stoma:rl:<key>`.
  fn key(&self, kind: &str, key: &str) -> String {
    let mut full = String::with_capacity(self.prefix.len() + kind.len() + 1 + key.len());
    full.push_str(&self.prefix);
    full.push_str(kind);
    full.push(':');
    full.push_str(key);
    full
  }

  /// Starts an attempt now if there is no connection yet, so the first
  /// calls do not pay for the handshake.
  fn connect_in_background(self: &Arc<Self>) {
    let mut state = lock(&self.state);
    if matches!(*state, LinkState::Down { .. }) {
      *state = self.start_attempt();
    }
  }

  /// Spawns one connection attempt (bounded by the connect timeout) that
  /// also loads both scripts, and returns the state that waits for it.
  fn start_attempt(self: &Arc<Self>) -> LinkState {
    let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
    let (sender, attempt) = watch::channel(None);
    let link = Arc::clone(self);
    spawn_io(async move {
      let opened = tokio::time::timeout(link.connect_timeout, async {
        let mut connection = link.client.get_multiplexed_async_connection_with_config(&link.config).await?;
        // Loading up front spares the first calls a NOSCRIPT round trip;
        // a failure here resurfaces (and is reported) on the first call.
        for script in [&*RATE_LIMIT_SCRIPT, &*CIRCUIT_SCRIPT] {
          let _ = script.prepare_invoke().load_async(&mut connection).await;
        }
        Ok::<_, RedisError>(connection)
      })
      .await;
      let no_answer = || format!("no answer within {} ms", link.connect_timeout.as_millis());
      let outcome = match opened {
        Ok(Ok(connection)) => Ok(Live { generation, connection }),
        Ok(Err(error)) if error.is_timeout() => Err(no_answer()),
        Ok(Err(error)) => Err(describe(&error)),
        Err(_) => Err(no_answer()),
      }
      .map_err(|cause| Arc::from(format!("cannot connect to Redis at {}: {cause}", link.address)));
      let outcome = link.settle_attempt(generation, outcome);
      let _ = sender.send(Some(outcome));
    });
    LinkState::Connecting { generation, attempt }
  }

  /// Records the outcome of attempt `generation`, unless the link was
  /// closed (or moved on) meanwhile; returns what its waiters should see.
  fn settle_attempt(&self, generation: u64, outcome: std::result::Result<Live, Arc<str>>) -> std::result::Result<Live, Arc<str>> {
    let mut state = lock(&self.state);
    match &*state {
      LinkState::Connecting { generation: current, .. } if *current == generation => {
        *state = match &outcome {
          Ok(live) => LinkState::Up(live.clone()),
          Err(cause) => LinkState::Down { failed: Some((Instant::now(), cause.clone())) },
        };
        outcome
      }
      LinkState::Closed => Err(closed_cause()),
      _ => outcome,
    }
  }

  /// The current connection, opening one if needed.
  async fn connection(self: &Arc<Self>) -> std::result::Result<Live, Arc<str>> {
    let (generation, mut attempt) = {
      let mut state = lock(&self.state);
      match &*state {
        LinkState::Up(live) => return Ok(live.clone()),
        LinkState::Closed => return Err(closed_cause()),
        LinkState::Down { failed: Some((at, cause)) } if at.elapsed() < RECONNECT_PAUSE => return Err(cause.clone()),
        LinkState::Down { .. } => *state = self.start_attempt(),
        LinkState::Connecting { .. } => {}
      }
      match &*state {
        LinkState::Connecting { generation, attempt } => (*generation, attempt.clone()),
        _ => unreachable!("an attempt was just started or was under way"),
      }
    };
    let outcome = attempt.wait_for(Option::is_some).await.map(|outcome| outcome.clone());
    match outcome {
      Ok(Some(outcome)) => outcome,
      // The attempt's task ended without an answer (it panicked, or the
      // runtime is shutting down): forget it so the next call starts anew.
      _ => {
        let cause: Arc<str> = "the connection attempt to Redis was abandoned".into();
        self.settle_attempt(generation, Err(cause.clone()))
      }
    }
  }

  /// Forgets connection `generation` after it failed or stopped answering,
  /// so the next call opens a new one. Calls still in flight on it finish
  /// (or time out) on their own copy.
  fn forget(&self, generation: u64) {
    let mut state = lock(&self.state);
    if matches!(&*state, LinkState::Up(live) if live.generation == generation) {
      *state = LinkState::Down { failed: None };
    }
  }

  fn close(&self) {
    *lock(&self.state) = LinkState::Closed;
  }

  fn is_closed(&self) -> bool {
    matches!(*lock(&self.state), LinkState::Closed)
  }

  /// Queues `job` until the next [`flush`](Self::flush).
  fn submit(&self, job: Job) {
    lock(&self.outbox).push(job);
  }

  /// Sends everything queued, in pipelines of up to [`BATCH`] commands,
  /// each from a task of its own. The JS layer flushes once per turn of its
  /// event loop (in a microtask), so the calls one turn makes share a few
  /// tasks, writes and wake-ups instead of costing one each. Several smaller
  /// pipelines rather than one big one let the first answers reach JS (and
  /// their callers issue new calls) while later ones are still on the wire.
  fn flush(self: &Arc<Self>, replies: &Arc<Replies>) {
    let mut jobs = std::mem::take(&mut *lock(&self.outbox));
    while !jobs.is_empty() {
      let rest = jobs.split_off(jobs.len().min(BATCH));
      let link = Arc::clone(self);
      let replies = Arc::clone(replies);
      spawn_io(async move { link.send_batch(jobs, &replies).await });
      jobs = rest;
    }
  }

  /// Sends the queued jobs and replies to each, every one within the
  /// command timeout; if anything panics, every job of the batch fails.
  async fn send_batch(self: &Arc<Self>, jobs: Vec<Job>, replies: &Arc<Replies>) {
    let calls: Vec<(f64, &'static str)> = jobs.iter().map(|job| (job.id, job.store)).collect();
    match guard_async("batch", async { Ok(self.run_batch(jobs).await) }).await {
      Ok(answers) => {
        let (later, now): (Vec<_>, Vec<_>) = answers.into_iter().partition(|(_, reply)| matches!(reply, Reply::Later(_)));
        replies.send_all(now);
        for (id, reply) in later {
          if let Reply::Later(finish) = reply {
            finish_elsewhere(id, finish, Arc::clone(replies));
          }
        }
      }
      Err(panicked) => replies.send_all(
        calls
          .into_iter()
          .map(|(id, store)| (id, Reply::Failed(format!("{store}: {}", panicked.reason))))
          .collect(),
      ),
    }
  }

  async fn run_batch(self: &Arc<Self>, jobs: Vec<Job>) -> Vec<(f64, Reply)> {
    let mut pipeline = ::redis::pipe();
    let mut decoders = Vec::with_capacity(jobs.len());
    for job in jobs {
      pipeline.add_command(job.command);
      decoders.push((job.id, job.store, job.decode));
    }
    let mut used = None;
    let sent = tokio::time::timeout(self.command_timeout, self.exchange(&pipeline, decoders.len(), &mut used)).await;
    let failure: Arc<str> = match sent {
      Ok(Ok(values)) => {
        return decoders
          .into_iter()
          .zip(values)
          .map(|((id, store, decode), value)| match decode(value.extract_error()) {
            Ok(reply) => (id, reply),
            Err(error) => (id, Reply::Failed(format!("{store}: Redis at {}: {}", self.address, describe(&error)))),
          })
          .collect();
      }
      Ok(Err(cause)) => cause,
      Err(_) => self.timed_out(used).into(),
    };
    decoders
      .into_iter()
      .map(|(id, store, _)| (id, Reply::Failed(format!("{store}: {failure}"))))
      .collect()
  }

  /// Sends `pipeline` (of `count` commands) and returns one answer per
  /// command. Commands refused with NOSCRIPT (the server lost its script
  /// cache, e.g. after a restart) are sent again once the scripts are loaded.
  async fn exchange(self: &Arc<Self>, pipeline: &Pipeline, count: usize, used: &mut Option<u64>) -> std::result::Result<Vec<Value>, Arc<str>> {
    let live = self.connection().await?;
    *used = Some(live.generation);
    let mut connection = live.connection;
    let lost = |error: RedisError| -> Arc<str> {
      if error.is_unrecoverable_error() {
        self.forget(live.generation);
      }
      format!("Redis at {}: {}", self.address, describe(&error)).into()
    };
    let mut values = connection.send_packed_commands(pipeline, 0, count).await.map_err(lost)?;
    let missing: Vec<usize> = (0..values.len()).filter(|&i| is_noscript(&values[i])).collect();
    if !missing.is_empty() {
      for script in [&*RATE_LIMIT_SCRIPT, &*CIRCUIT_SCRIPT] {
        script.prepare_invoke().load_async(&mut connection).await.map_err(lost)?;
      }
      let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
      let mut again = ::redis::pipe();
      for &index in &missing {
        again.add_command(commands[index].clone());
      }
      let answers = connection.send_packed_commands(&again, 0, missing.len()).await.map_err(lost)?;
      for (index, answer) in missing.into_iter().zip(answers) {
        values[index] = answer;
      }
    }
    Ok(values)
  }

  /// Why a call timed out: no connection in time, or no answer on one
  /// (which is then forgotten: it may be dead without knowing it, e.g. a
  /// frozen server or a lost route, so the next call opens anew).
  fn timed_out(&self, used: Option<u64>) -> String {
    let ms = self.command_timeout.as_millis();
    match used {
      Some(generation) => {
        self.forget(generation);
        format!("Redis at {} did not answer within {ms} ms", self.address)
      }
      None => format!("cannot connect to Redis at {} within {ms} ms", self.address),
    }
  }
}

/// Computes a costly answer on napi-rs's multi-thread runtime, off the I/O
/// thread, and sends it as the answer to call `id`.
fn finish_elsewhere(id: f64, finish: Box<dyn FnOnce() -> Reply + Send>, replies: Arc<Replies>) {
  napi::bindgen_prelude::spawn(async move {
    let reply = guard_async(CACHE_STORE, async { Ok(finish()) }).await;
    replies.send(id, reply.unwrap_or_else(|panicked| Reply::Failed(panicked.reason.clone())));
  });
}

fn is_noscript(value: &Value) -> bool {
  matches!(value, Value::ServerError(error) if error.kind() == Some(ServerErrorKind::NoScript))
}

/// `name key`, e.g. `GET <key>`.
fn command(name: &str, key: String) -> Cmd {
  let mut command = ::redis::cmd(name);
  command.arg(key);
  command
}

/// `EVALSHA <sha> 1 <key>`; the caller adds the script's arguments.
fn evalsha(script: &Script, key: String) -> Cmd {
  let mut command = ::redis::cmd("EVALSHA");
  command.arg(script.get_hash()).arg(1).arg(key);
  command
}

fn closed_cause() -> Arc<str> {
  "the Redis connection was closed".into()
}

/// A Redis error in words: an I/O error shows its OS message (e.g.
/// "Connection refused (os error 111)"), a server error its reply.
fn describe(error: &RedisError) -> String {
  let text = error.to_string();
  if error.is_connection_refusal() && !text.to_ascii_lowercase().contains("refused") {
    format!("connection refused ({text})")
  } else {
    text
  }
}

/// The answer to one call, on its way back to JS.
enum Reply {
  /// A rate-limit hit: `count, resetAt`.
  Hit { count: f64, reset_at: f64 },
  /// A circuit snapshot: the state's code (see [`state_code`]), then
  /// `failureCount, successCount, lastFailureTime, lastStateChange`.
  Snapshot { state: u8, numbers: [f64; 4] },
  /// A cache answer: a hit's status, joined headers and body, or a miss.
  Cached(Option<(u16, String, Vec<u8>)>),
  Removed(bool),
  Done,
  /// The error message, naming the store and the cause.
  Failed(String),
  /// An answer still to be computed, away from the I/O thread.
  Later(Box<dyn FnOnce() -> Reply + Send>),
}

/// The code of a circuit state, as `lib/redis.js` maps it back.
fn state_code(state: &str) -> u8 {
  match state {
    "open" => 1,
    "half-open" => 2,
    _ => 0,
  }
}

/// A batch of answers as the JS layer receives it: an array whose first
/// element is a `Float64Array` of every number of the batch, followed by
/// the answers' other values (strings, buffers) in order.
///
/// In the numbers, each answer is its call id followed by its values —
/// `count, resetAt` for a hit; `stateCode, failureCount, successCount,
/// lastFailureTime, lastStateChange` for a snapshot; `status` for a cache
/// hit (its headers and body are the next two other values) and `0` for a
/// miss; `1`/`0` for a removal; `0` for the rest. A failed call has `-id`,
/// and its error message is the next other value. The JS side knows each
/// call's kind and builds the objects itself: V8 makes an object literal
/// far faster than N-API can assemble one property by property, and one
/// typed array costs a copy where setting each number as an element cost
/// two N-API calls and a property lookup (a tenth of the JS thread's time
/// at 64 calls in flight, in perf).
pub struct Batch(Vec<(f64, Reply)>);

impl ToNapiValue for Batch {
  unsafe fn to_napi_value(env: sys::napi_env, batch: Self) -> Result<sys::napi_value> {
    let mut numbers: Vec<f64> = Vec::with_capacity(batch.0.len() * 3);
    let mut others: Vec<sys::napi_value> = Vec::new();
    for (id, reply) in batch.0 {
      if let Reply::Failed(message) = reply {
        numbers.push(-id);
        others.push(unsafe { String::to_napi_value(env, message)? });
        continue;
      }
      numbers.push(id);
      match reply {
        Reply::Hit { count, reset_at } => numbers.extend([count, reset_at]),
        Reply::Snapshot { state, numbers: values } => {
          numbers.push(f64::from(state));
          numbers.extend(values);
        }
        Reply::Cached(None) => numbers.push(0.0),
        Reply::Cached(Some((status, headers, body))) => {
          numbers.push(f64::from(status));
          others.push(unsafe { String::to_napi_value(env, headers)? });
          others.push(unsafe { Buffer::to_napi_value(env, body.into())? });
        }
        Reply::Removed(removed) => numbers.push(if removed { 1.0 } else { 0.0 }),
        Reply::Done => numbers.push(0.0),
        Reply::Failed(_) | Reply::Later(_) => unreachable!("handled above, or finished before delivery"),
      }
    }
    let mut data = ptr::null_mut();
    let mut buffer = ptr::null_mut();
    let bytes = numbers.len() * std::mem::size_of::<f64>();
    check_status!(unsafe { sys::napi_create_arraybuffer(env, bytes, &mut data, &mut buffer) })?;
    if bytes > 0 {
      // SAFETY: `data` is the new buffer's `bytes` writable bytes, and an
      // ArrayBuffer's memory is aligned for any typed array.
      unsafe { ptr::copy_nonoverlapping(numbers.as_ptr(), data.cast::<f64>(), numbers.len()) };
    }
    let mut typed = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_typedarray(env, sys::TypedarrayType::float64_array, numbers.len(), buffer, 0, &mut typed) })?;
    let mut array = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_array_with_length(env, 1 + others.len(), &mut array) })?;
    for (index, value) in std::iter::once(typed).chain(others).enumerate() {
      check_status!(unsafe { sys::napi_set_element(env, array, index as u32, value) })?;
    }
    Ok(array)
  }
}

/// The JS function answers are delivered to. Weak: it does not by itself
/// keep Node's event loop alive (see [`Replies::hold`]).
type Deliver = ThreadsafeFunction<(), Unknown<'static>, Batch, Status, false, true>;

/// Answers travel back to JS in batches through one threadsafe function,
/// rather than through a Promise and threadsafe function made per call (as
/// napi-rs `async fn` does): at 64 calls in flight that per-call machinery
/// kept the JS thread busier than everything else together.
///
/// A finished call queues its answer and wakes the JS side only if the queue
/// was empty; the wake-up drains everything queued by then. Between the
/// first call started and the last answer delivered, the function is
/// referenced so Node waits for the answers; otherwise it is not, so a
/// process holding an idle connection still exits by itself.
struct Replies {
  queue: Arc<ReplyQueue>,
  deliver: Deliver,
}

/// What both the calls' tasks and the delivering callback reach.
#[derive(Default)]
struct ReplyQueue {
  ready: Mutex<Vec<(f64, Reply)>>,
  /// Calls started and not yet delivered; changed only on the JS thread.
  pending: AtomicUsize,
  /// The threadsafe function, for un-referencing it from its own callback
  /// (which only runs while it exists).
  raw: AtomicPtr<sys::napi_threadsafe_function__>,
}

impl Replies {
  fn new(settle: Function<'_, Batch, Unknown<'static>>) -> Result<Self> {
    let queue = Arc::new(ReplyQueue::default());
    let delivering = Arc::clone(&queue);
    let deliver = settle
      .build_threadsafe_function::<()>()
      .callee_handled::<false>()
      .weak::<true>()
      .build_callback(move |ctx: ThreadsafeCallContext<()>| {
        let batch = std::mem::take(&mut *lock(&delivering.ready));
        let before = delivering.pending.fetch_sub(batch.len(), Ordering::Relaxed);
        if before == batch.len() && !batch.is_empty() {
          // SAFETY: called on the JS thread with its env, for the function
          // whose callback this is.
          unsafe { sys::napi_unref_threadsafe_function(ctx.env.raw(), delivering.raw.load(Ordering::Relaxed)) };
        }
        Ok(Batch(batch))
      })?;
    queue.raw.store(deliver.raw(), Ordering::Relaxed);
    Ok(Replies { queue, deliver })
  }

  /// Counts a call started (on the JS thread), making Node wait for its answer.
  fn hold(&self, env: &Env) {
    if self.queue.pending.fetch_add(1, Ordering::Relaxed) == 0 {
      // SAFETY: called on the JS thread with its env.
      unsafe { sys::napi_ref_threadsafe_function(env.raw(), self.deliver.raw()) };
    }
  }

  /// Queues the answer to call `id` (from any thread).
  fn send(&self, id: f64, reply: Reply) {
    self.send_all(vec![(id, reply)]);
  }

  /// Queues answers (from any thread), waking the JS side if it has
  /// nothing queued yet.
  fn send_all(&self, answers: Vec<(f64, Reply)>) {
    let was_empty = {
      let mut ready = lock(&self.queue.ready);
      let was_empty = ready.is_empty();
      ready.extend(answers);
      was_empty
    };
    if was_empty {
      self.deliver.call((), ThreadsafeFunctionCallMode::NonBlocking);
    }
  }
}

/// One Redis connection and the operations of the three stores over it
/// (see `lib/redis.js`, which shares one between an adapter's stores).
///
/// Each operation takes a call id chosen by the JS layer and returns at
/// once; its answer arrives later through the `settle` function given to the
/// constructor (see [`Replies`] and [`Batch`]).
#[napi]
pub struct NativeRedisConnection {
  link: Arc<Link>,
  replies: Arc<Replies>,
}

#[napi]
impl NativeRedisConnection {
  /// Parses `url` (throwing an `InvalidArg` error at once if it is
  /// malformed) and starts connecting in the background.
  #[napi(constructor)]
  pub fn new(
    url: String,
    prefix: String,
    connect_timeout_ms: f64,
    command_timeout_ms: f64,
    #[napi(ts_arg_type = "(batch: [Float64Array, ...unknown[]]) => void")] settle: Function<'_, Batch, Unknown<'static>>,
  ) -> Result<Self> {
    guard("redisAdapter", || {
      let link = Link::new(&url, prefix, connect_timeout_ms, command_timeout_ms)
        .map_err(|error| Error::new(Status::InvalidArg, error.to_string()))?;
      let replies = Arc::new(Replies::new(settle)?);
      link.connect_in_background();
      Ok(NativeRedisConnection { link, replies })
    })
  }

  /// Queues `command` for the next [`flush`](Self::flush); `decode` makes
  /// its reply.
  fn submit(
    &self,
    env: &Env,
    id: f64,
    store: &'static str,
    command: Cmd,
    decode: impl FnOnce(RedisResult<Value>) -> RedisResult<Reply> + Send + 'static,
  ) {
    self.replies.hold(env);
    let job = Job {
      id,
      store,
      command,
      decode: Box::new(decode),
    };
    self.link.submit(job);
  }

  /// Sends the calls queued since the last flush (see [`Link::flush`]).
  #[napi]
  pub fn flush(&self) -> Result<()> {
    guard("redisAdapter", || {
      self.link.flush(&self.replies);
      Ok(())
    })
  }

  /// Counts one hit on `<prefix>rl:<key>` in a window of `windowMs`;
  /// answers `{ count, resetAt }`.
  #[napi]
  pub fn increment(&self, env: &Env, id: f64, key: String, window_ms: f64) -> Result<()> {
    guard(RATE_LIMIT_STORE, || {
      let key = self.link.key("rl", &key);
      let window_ms = duration_ms(window_ms);
      if window_ms == 0 {
        // A zero window ends at once: every hit opens (and closes) its own.
        let now = now_ms() as f64;
        self.submit(env, id, RATE_LIMIT_STORE, command("DEL", key), move |answer| {
          answer?;
          Ok(Reply::Hit { count: 1.0, reset_at: now })
        });
        return Ok(());
      }
      let mut command = evalsha(&RATE_LIMIT_SCRIPT, key);
      command.arg(window_ms);
      self.submit(env, id, RATE_LIMIT_STORE, command, |answer| {
        let (count, reset_at): (i64, i64) = FromRedisValue::from_redis_value(answer?)?;
        Ok(Reply::Hit {
          count: count as f64,
          reset_at: reset_at as f64,
        })
      });
      Ok(())
    })
  }

  /// Answers the snapshot of circuit `<prefix>cb:<key>`.
  #[napi]
  pub fn get_state(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      self.circuit(env, id, key, "get", "");
      Ok(())
    })
  }

  #[napi]
  pub fn record_success(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      self.circuit(env, id, key, "success", "");
      Ok(())
    })
  }

  #[napi]
  pub fn record_failure(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      self.circuit(env, id, key, "failure", "");
      Ok(())
    })
  }

  /// `to` is "closed", "open" or "half-open" (checked by the JS layer and
  /// again by the script).
  #[napi]
  pub fn transition(&self, env: &Env, id: f64, key: String, to: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      self.circuit(env, id, key, "transition", &to);
      Ok(())
    })
  }

  /// Forgets the circuit `<prefix>cb:<key>`.
  #[napi]
  pub fn reset_circuit(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      let command = command("DEL", self.link.key("cb", &key));
      self.submit(env, id, CIRCUIT_STORE, command, |answer| answer.map(|_| Reply::Done));
      Ok(())
    })
  }

  fn circuit(&self, env: &Env, id: f64, key: String, op: &str, to: &str) {
    let mut command = evalsha(&CIRCUIT_SCRIPT, self.link.key("cb", &key));
    command.arg(op).arg(now_ms()).arg(to).arg(CIRCUIT_TTL_SECONDS);
    self.submit(env, id, CIRCUIT_STORE, command, |answer| {
      let (state, failures, successes, last_failure, last_change): (String, i64, i64, i64, i64) =
        FromRedisValue::from_redis_value(answer?)?;
      Ok(Reply::Snapshot {
        state: state_code(&state),
        numbers: [failures as f64, successes as f64, last_failure as f64, last_change as f64],
      })
    });
  }

  /// Answers the response under `<prefix>cache:<key>`, or `null` when
  /// there is none or what is there is not a well-formed envelope.
  #[napi]
  pub fn cache_get(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CACHE_STORE, || {
      let command = command("GET", self.link.key("cache", &key));
      self.submit(env, id, CACHE_STORE, command, |answer| {
        let raw: Option<Vec<u8>> = match answer {
          // Another Redis type under the key is garbage too: a miss.
          Err(error) if error.code() == Some("WRONGTYPE") => None,
          answer => FromRedisValue::from_redis_value(answer?)?,
        };
        let raw_len = raw.as_ref().map_or(0, Vec::len);
        let finish = move || {
          let hit = raw.and_then(|raw| StoredResponse::from_envelope(&raw));
          Reply::Cached(hit.map(|hit| (hit.status, hit.joined_headers(), hit.body)))
        };
        Ok(if raw_len > INLINE_ENVELOPE_BYTES { Reply::Later(Box::new(finish)) } else { finish() })
      });
      Ok(())
    })
  }

  /// Stores a response for `ttlMs` (rounded up to whole ms). A ttl of 0
  /// stores nothing — Redis rejects an expiry of 0 — and removes any older
  /// entry, since a response that expires at once replaces it.
  ///
  /// A small envelope is encoded right here; a larger one on napi-rs's
  /// runtime, off the JS thread, and queued from there. `body` holds the
  /// bytes of a Response the JS layer has consumed (`lib/response.js`), so
  /// reading it off the JS thread races with nothing.
  #[napi]
  pub fn cache_put(&self, env: &Env, id: f64, key: String, status: u32, headers: String, body: Uint8Array, ttl_ms: f64) -> Result<()> {
    guard(CACHE_STORE, || {
      let key = self.link.key("cache", &key);
      let ttl_ms = duration_ms(ttl_ms);
      let stored = |answer: RedisResult<Value>| answer.map(|_| Reply::Done);
      if ttl_ms == 0 {
        self.submit(env, id, CACHE_STORE, command("DEL", key), stored);
        return Ok(());
      }
      // A status no Response has (only `Response.error()`'s 0 fits a u32
      // here) is kept as an envelope that reads back as a miss.
      let status = u16::try_from(status).unwrap_or(u16::MAX);
      let set = move |body: &[u8]| {
        let envelope = StoredResponse::envelope_of_joined(status, &headers, body);
        let mut set = command("SET", key);
        set.arg(envelope).arg("PX").arg(ttl_ms);
        set
      };
      if body.len() <= INLINE_ENVELOPE_BYTES {
        let set = set(&body);
        self.submit(env, id, CACHE_STORE, set, stored);
        return Ok(());
      }
      self.replies.hold(env);
      let (link, replies) = (Arc::clone(&self.link), Arc::clone(&self.replies));
      napi::bindgen_prelude::spawn(async move {
        match guard_async(CACHE_STORE, async { Ok(set(&body)) }).await {
          Ok(command) => {
            drop(body);
            let decode = Box::new(stored);
            link.submit(Job { id, store: CACHE_STORE, command, decode });
            link.flush(&replies);
          }
          Err(panicked) => replies.send(id, Reply::Failed(panicked.reason.clone())),
        }
      });
      Ok(())
    })
  }

  /// Removes `<prefix>cache:<key>`; answers whether something was there.
  #[napi]
  pub fn cache_delete(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CACHE_STORE, || {
      let command = command("DEL", self.link.key("cache", &key));
      self.submit(env, id, CACHE_STORE, command, |answer| {
        let removed: i64 = FromRedisValue::from_redis_value(answer?)?;
        Ok(Reply::Removed(removed > 0))
      });
      Ok(())
    })
  }

  /// Closes the connection; later calls fail. Calls in flight finish.
  #[napi]
  pub fn close(&self) {
    self.link.close();
  }

  #[napi(getter)]
  pub fn closed(&self) -> bool {
    self.link.is_closed()
  }
}


#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn keys_follow_stomas_layout() {
    let link = Link::new("redis://127.0.0.1:6379", "stoma:".into(), 2000.0, 1000.0).unwrap();
    assert_eq!(link.key("rl", "ip:1"), "stoma:rl:ip:1");
    assert_eq!(link.key("cb", "upstream"), "stoma:cb:upstream");
    assert_eq!(link.key("cache", "GET /x"), "stoma:cache:GET /x");
    assert_eq!(link.address, "127.0.0.1:6379");
  }

  #[test]
  fn malformed_urls_are_refused_at_once() {
    for url in ["", "not a url", "http://example.com", "redis://host:99999"] {
      assert!(Link::new(url, String::new(), 2000.0, 1000.0).is_err(), "{url}");
    }
  }

  #[test]
  fn the_scripts_have_stable_hashes() {
    assert_eq!(RATE_LIMIT_SCRIPT.get_hash().len(), 40);
    assert_ne!(RATE_LIMIT_SCRIPT.get_hash(), CIRCUIT_SCRIPT.get_hash());
  }
}
