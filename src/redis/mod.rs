//! Stores in Redis, sharing their data with Stoma's JS `redisAdapter`.
//!
//! Keys and values are exactly those Stoma's adapter keeps (see the contract
//! doc), so a fleet can mix Stoma's stores and ours on one server:
//!
//! - `<prefix>rl:<key>`    — an integer counter that expires with its window;
//! - `<prefix>rls:<key>`   — ours alone: a sliding window's hash (`start`,
//!   `hits`, `previous`), expiring two windows after it last moved
//!   ([`scripts::SLIDING_RATE_LIMIT`]);
//! - `<prefix>cb:<key>`    — the circuit's snapshot as JSON, with a 24-hour expiry;
//! - `<prefix>cache:<key>` — the response envelope ([`StoredResponse`]) with the ttl.
//!
//! What differs is how we get there:
//!
//! - Every circuit update runs as one Lua script on the server (read, change
//!   and write back atomically), so concurrent `recordFailure` calls are all
//!   counted; Stoma's adapter reads, changes and writes in three round trips
//!   and loses updates ([`scripts`]).
//! - One connection carries every call of an adapter. The calls one turn of
//!   the JS event loop makes are written together (16 at a time in a long
//!   turn) from the JS thread, which then polls briefly for the answers
//!   (until 16 have come, when more are due); answers that take longer come
//!   back in batches from the I/O thread ([`wire`], [`replies`]).
//! - The cache envelope's JSON and base64 are handled in Rust
//!   ([`StoredResponse`]) and the body crosses into JS as one buffer.
//! - `rediss://` (or the `tls` option) runs the same connection over rustls,
//!   checking the certificate against Mozilla's roots or the user's `ca`
//!   ([`crate::tls`]).
//! - Garbage under our keys reads as a cache miss, a fresh closed circuit or
//!   a fresh rate-limit window, never as an error.
//!
//! The life of a call: the JS layer (`lib/redis.js`) picks a call id and
//! calls a method here, which builds the command and queues it; a microtask
//! flushes the queue ([`NativeRedisConnection::flush`]), and each answer
//! settles its call's Promise in the JS layer.
//!
//! Failure behaviour: each call is bounded by `commandTimeoutMs` (waiting
//! for a connection included) and rejects with an error naming the store and
//! the cause. The connection is opened in the background when the adapter is
//! built and reopened on demand after it is lost, so calls succeed again
//! shortly after the server comes back, with no user action.

mod cluster;
mod event_loop;
mod io;
mod job;
mod near_cache;
mod pipeline;
mod refusal;
mod replies;
mod resp;
mod route;
mod scripts;
mod sentinel;
mod setup;
mod slots;
mod socket;
mod spin;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{Cmd, FromRedisValue, RedisResult, Value};
use napi::bindgen_prelude::{Function, Uint8Array, Unknown};
use napi::{Env, Error, Result, Status};
use napi_derive::napi;

use crate::circuit::{CircuitOperation, CircuitState};
use crate::clock::{duration_ms, now_ms};
use crate::envelope::StoredResponse;
use crate::errors::{guard, guard_async};
use crate::sliding_window::Window;
use event_loop::EventLoop;
use job::{merge_counted, Group, Job, Reload};
use near_cache::{Copy, Lookup, NearCache, Ticket};
use replies::{Batch, Replies, Reply};
use route::{Deployment, Login, Route};
use scripts::{CIRCUIT, RATE_LIMIT, READ, SLIDING_RATE_LIMIT};
use setup::{Greeting, Role, Tls};
use wire::Settings;

const ADAPTER: &str = "redisAdapter";
const RATE_LIMIT_STORE: &str = "RedisRateLimitStore";
const CIRCUIT_STORE: &str = "RedisCircuitBreakerStore";
const CACHE_STORE: &str = "RedisCacheStore";

/// Stoma keeps circuits for 24 hours after their last update, so that keys
/// of circuits nobody uses any more do not live forever.
const CIRCUIT_TTL_SECONDS: u32 = 86_400;

/// Cache envelopes up to this size are encoded and decoded where the call
/// is (with SIMD base64, about 15 µs for a 64 KiB body); larger ones on
/// napi-rs's runtime, so the JS thread does not stall on a big response.
const INLINE_ENVELOPE_BYTES: usize = 256 * 1024;

/// `<prefix><kind>:<key>`, e.g. `stoma:rl:<key>`.
fn store_key(prefix: &str, kind: &str, key: &str) -> String {
  let mut full = String::with_capacity(prefix.len() + kind.len() + 1 + key.len());
  full.push_str(prefix);
  full.push_str(kind);
  full.push(':');
  full.push_str(key);
  full
}

/// `name key`, e.g. `GET <key>`.
fn command(name: &str, key: String) -> Cmd {
  let mut command = ::redis::cmd(name);
  command.arg(key);
  command
}

/// Reads a call's answer into its reply.
type Decoder = fn(RedisResult<Value>) -> RedisResult<Reply>;

/// A rate-limit script's answer: `count, resetAt`.
fn hit_of(answer: RedisResult<Value>) -> RedisResult<(f64, f64)> {
  let (count, reset_at): (i64, i64) = FromRedisValue::from_redis_value(answer?)?;
  Ok((count as f64, reset_at as f64))
}

/// A circuit script's answer: the state's code, then `failureCount,
/// successCount, lastFailureTime, lastStateChange`.
fn snapshot_of(answer: RedisResult<Value>) -> RedisResult<(u8, [f64; 4])> {
  snapshot_and_expiry(answer).map(|(state, numbers, _)| (state, numbers))
}

/// A circuit script's answer, with the key's expiry when the script gives
/// it ("get": epoch ms, -1 none, -2 no key).
fn snapshot_and_expiry(answer: RedisResult<Value>) -> RedisResult<(u8, [f64; 4], Option<i64>)> {
  let mut fields: Vec<Value> = FromRedisValue::from_redis_value(answer?)?;
  let expiry = match fields.len() {
    6 => Some(i64::from_redis_value(fields.pop().expect("six fields"))?),
    _ => None,
  };
  let (state, failures, successes, last_failure, last_change): (String, i64, i64, i64, i64) =
    FromRedisValue::from_redis_value(Value::Array(fields))?;
  // A state the script does not know reads as closed.
  let state = CircuitState::from_name(&state).unwrap_or(CircuitState::Closed);
  let numbers = [failures, successes, last_failure, last_change].map(|n| n as f64);
  Ok((state.code(), numbers, expiry))
}

/// A key's expiry as a script reports it (epoch ms; -1 none), as a near
/// cache keeps it.
fn expiry(at: i64) -> Option<i64> {
  (at >= 0).then_some(at)
}

/// A near cache's part in one call: the cache, the key, the call's ticket.
#[derive(Clone)]
struct Near {
  cache: Arc<NearCache>,
  key: Box<[u8]>,
  ticket: Ticket,
}

impl Near {
  fn keep(&self, copy: Copy, expires_at: Option<i64>) {
    self.cache.keep(&self.key, self.ticket, copy, expires_at);
  }

  fn forget(&self) {
    self.cache.forget(&self.key, self.ticket);
  }

  /// For a read: run if the server will not track it, so it is not kept.
  fn untracked(&self) -> Box<dyn FnOnce() + Send> {
    let near = self.clone();
    Box::new(move || near.forget())
  }
}

/// Another Redis type is under the key: `WRONGTYPE`, which Redis before 7
/// wraps in `ERR Error running script …` when a script meets it.
fn wrong_type(error: &::redis::RedisError) -> bool {
  error.code() == Some("WRONGTYPE")
    || error
      .detail()
      .is_some_and(|detail| detail.contains("WRONGTYPE"))
}

/// The answer to `getState` from a circuit's copy.
fn snapshot_reply(copy: Copy) -> Reply {
  match copy {
    Copy::Snapshot(state, numbers) => Reply::Snapshot { state, numbers },
    // An unknown circuit reads as fresh and closed, changed now.
    _ => Reply::Snapshot {
      state: CircuitState::Closed.code(),
      numbers: [0.0, 0.0, 0.0, now_ms() as f64],
    },
  }
}

/// The answer to a cache `get` from an entry's copy.
fn cached_reply(copy: Copy) -> Reply {
  match copy {
    Copy::Response(hit) => Reply::Cached(Some(hit)),
    _ => Reply::Cached(None),
  }
}

/// Increments of one key in one window, merged: the script adds them all and
/// each call gets one of the consecutive counts, as if they had run one after
/// another.
fn merge_increments(calls: Vec<Job>) -> Job {
  merge_counted(calls, |answer, ids| {
    let (count, reset_at) = hit_of(answer)?;
    let first = count - ids.len() as f64 + 1.0;
    let hits = ids.iter().enumerate().map(|(i, &id)| {
      let count = first + i as f64;
      (id, Reply::Hit { count, reset_at })
    });
    Ok(Reply::Many(hits.collect()))
  })
}

/// Sliding-window increments (see [`scripts::SLIDING_RATE_LIMIT`]) of one
/// key merge only when made at one instant with one window length: their
/// counts are then those of hits one after another at that instant.
fn sliding_group(window: Window, now: i64) -> Group {
  Group {
    merge: merge_sliding,
    extra: (window.length as u128) << 64 | u128::from(now as u64),
  }
}

/// The window and the instant a sliding group was made for.
fn sliding_instant(group: Group) -> (Window, i64) {
  let (length, now) = ((group.extra >> 64) as i64, group.extra as u64 as i64);
  (Window::at(now, length), now)
}

fn merge_sliding(calls: Vec<Job>) -> Job {
  let (window, now) = sliding_instant(calls[0].group.expect("grouped"));
  merge_counted(calls, move |answer, ids| {
    sliding_replies(answer, ids, window, now)
  })
}

/// The answers to the sliding-window calls `ids` (one, or several merged,
/// counted in their order) from the script's `{ hits, previous hits }`.
fn sliding_replies(
  answer: RedisResult<Value>,
  ids: &[f64],
  window: Window,
  now: i64,
) -> RedisResult<Reply> {
  let (hits, previous): (i64, i64) = FromRedisValue::from_redis_value(answer?)?;
  let reset_at = window.end() as f64;
  let first = hits - ids.len() as i64 + 1;
  let mut replies = ids.iter().enumerate().map(|(i, &id)| {
    let count = window.count(now, previous, first + i as i64) as f64;
    (id, Reply::Hit { count, reset_at })
  });
  match ids.len() {
    1 => Ok(replies.next().expect("one call").1),
    _ => Ok(Reply::Many(replies.collect())),
  }
}

/// `recordFailure` / `recordSuccess` calls of one circuit, merged: the script
/// counts them all; each call gets the snapshot it would have had, its count
/// (`numbers[counted]`) one of the consecutive values.
fn spread_snapshots(answer: RedisResult<Value>, ids: &[f64], counted: usize) -> RedisResult<Reply> {
  let (state, numbers) = snapshot_of(answer)?;
  let first = numbers[counted] - ids.len() as f64 + 1.0;
  let snapshots = ids.iter().enumerate().map(|(i, &id)| {
    let mut numbers = numbers;
    numbers[counted] = first + i as f64;
    (id, Reply::Snapshot { state, numbers })
  });
  Ok(Reply::Many(snapshots.collect()))
}

/// Reads of one key that answer nobody (see `refresh_copy`), merged: the
/// last one is enough — its ticket is the key's latest.
fn merge_reads(mut calls: Vec<Job>) -> Job {
  let mut last = calls.pop().expect("calls to merge");
  last.group = None;
  last
}

fn merge_failures(calls: Vec<Job>) -> Job {
  merge_counted(calls, |answer, ids| spread_snapshots(answer, ids, 0))
}

fn merge_successes(calls: Vec<Job>) -> Job {
  merge_counted(calls, |answer, ids| spread_snapshots(answer, ids, 1))
}

/// The answer to a cache read of `raw` (an envelope, or nothing), its copy
/// kept in the near cache when one is reading (until the given expiry). A
/// large envelope is decoded off the I/O thread.
fn envelope_reply(raw: Option<Vec<u8>>, near: Option<(Near, Option<i64>)>) -> Reply {
  let large = raw
    .as_ref()
    .is_some_and(|raw| raw.len() > INLINE_ENVELOPE_BYTES);
  let finish = move || {
    let hit = raw
      .and_then(|raw| StoredResponse::from_envelope(&raw))
      .map(|hit| Arc::new((hit.status, hit.joined_headers(), hit.body)));
    if let Some((near, expires_at)) = near {
      match &hit {
        Some(hit) => near.keep(Copy::Response(Arc::clone(hit)), expires_at),
        // Garbage under the key reads as a miss, kept until it changes.
        None => near.keep(Copy::Absent, None),
      }
    }
    Reply::Cached(hit)
  };
  if large {
    Reply::Later(Box::new(finish))
  } else {
    finish()
  }
}

/// A `tls` option as `lib/validate.js`'s tlsOption reads it (the fields
/// of [`NativeRedisOptions`] of the same names).
#[napi(object)]
pub struct NativeTlsOptions {
  pub use_tls: bool,
  pub tls_ca: Option<Uint8Array>,
  pub tls_cert: Option<Uint8Array>,
  pub tls_key: Option<Uint8Array>,
  pub tls_servername: Option<String>,
}

/// The TLS settings given by a `tls` option's fields.
fn tls_settings(
  use_tls: bool,
  ca: Option<&[u8]>,
  cert: Option<&[u8]>,
  key: Option<&[u8]>,
  servername: Option<&String>,
) -> Result<Tls> {
  let trust = crate::tls::Trust { ca, cert, key };
  Ok(Tls {
    wanted: use_tls,
    config: crate::tls::client_config(&trust)
      .map_err(|error| Error::new(Status::InvalidArg, error))?,
    server_name: servername.cloned(),
  })
}

/// Options from `lib/redis.js`, already validated there.
#[napi(object)]
pub struct NativeRedisOptions {
  /// One server (standalone).
  pub url: Option<String>,
  /// Seed nodes of a Redis Cluster (instead of `url`).
  pub cluster_nodes: Option<Vec<String>>,
  /// Sentinels watching a primary named `sentinel_name` (instead of `url`).
  pub sentinel_nodes: Option<Vec<String>>,
  pub sentinel_name: Option<String>,
  /// The sentinels' own credentials, over their urls'.
  pub sentinel_username: Option<String>,
  pub sentinel_password: Option<String>,
  /// The sentinels' own TLS settings (otherwise those of the `tls` fields,
  /// for sentinels whose urls are `rediss://`).
  pub sentinel_tls: Option<NativeTlsOptions>,
  /// Credentials and database of the servers holding the data, over their
  /// urls'.
  pub username: Option<String>,
  pub password: Option<String>,
  pub db: Option<u32>,
  pub prefix: String,
  pub connect_timeout_ms: f64,
  pub command_timeout_ms: f64,
  /// How long a flush may poll for its answers (0: never).
  pub spin_micros: f64,
  /// Stop polling as soon as the event loop has other work (Node only).
  pub watch_event_loop: bool,
  /// TLS asked for by the `tls` option (a `rediss://` url asks too).
  pub use_tls: bool,
  /// PEM certificates to trust instead of Mozilla's roots.
  pub tls_ca: Option<Uint8Array>,
  /// A client certificate chain and its key, PEM (mutual TLS).
  pub tls_cert: Option<Uint8Array>,
  pub tls_key: Option<Uint8Array>,
  /// The name servers' certificates must carry, when not their host's.
  pub tls_servername: Option<String>,
  /// Keep a near cache of at most this many entries and bytes (both set,
  /// or neither: no near cache).
  pub near_cache_max_entries: Option<f64>,
  pub near_cache_max_bytes: Option<f64>,
}

/// A JS duration in milliseconds as a `Duration` of at least 1 ms.
fn millis(ms: f64) -> Duration {
  Duration::from_millis(duration_ms(ms).max(1) as u64)
}

/// The Redis connection(s) of one adapter and the operations of its three
/// stores (see `lib/redis.js`, which shares one between an adapter's stores).
///
/// Each operation takes a call id chosen by the JS layer and returns at
/// once; its answer arrives later through the `settle` function given to the
/// constructor (see [`Replies`] and [`Batch`]).
#[napi]
pub struct NativeRedisConnection {
  route: Arc<Route>,
  replies: Arc<Replies>,
  prefix: String,
  command_timeout: Duration,
  /// The JS thread's event loop, when it can tell us it has other work.
  event_loop: Option<EventLoop>,
  /// Copies of cache entries and circuits (the `nearCache` option).
  near: Option<Arc<NearCache>>,
  /// Calls answered from the near cache, returned by the next flush.
  ready: std::sync::Mutex<Vec<(f64, Reply)>>,
}

#[napi]
impl NativeRedisConnection {
  /// Parses the url(s) (throwing an `InvalidArg` error at once, naming the
  /// option, if one is malformed) and starts connecting in the background.
  #[napi(constructor)]
  pub fn new(
    env: Env,
    options: NativeRedisOptions,
    #[napi(ts_arg_type = "(batch: [Float64Array, ...unknown[]]) => void")] settle: Function<
      '_,
      Batch,
      Unknown<'static>,
    >,
  ) -> Result<Self> {
    guard(ADAPTER, || {
      let replies = Arc::new(Replies::new(settle)?);
      let spin_micros = options.spin_micros;
      let sentinel_tls = match &options.sentinel_tls {
        Some(own) => Some(tls_settings(
          own.use_tls,
          own.tls_ca.as_deref(),
          own.tls_cert.as_deref(),
          own.tls_key.as_deref(),
          own.tls_servername.as_ref(),
        )?),
        None => None,
      };
      let deployment = match (
        &options.url,
        &options.cluster_nodes,
        &options.sentinel_nodes,
      ) {
        (_, Some(nodes), _) => Deployment::Cluster { nodes },
        (_, _, Some(nodes)) => Deployment::Sentinel {
          name: options.sentinel_name.as_deref().unwrap_or_default(),
          nodes,
          username: options.sentinel_username.as_deref(),
          password: options.sentinel_password.as_deref(),
          tls: sentinel_tls.as_ref(),
        },
        (Some(url), None, None) => Deployment::Server { url },
        (None, None, None) => return Err(Error::new(Status::InvalidArg, "url: missing")),
      };
      let login = Login {
        username: options.username.as_deref(),
        password: options.password.as_deref(),
        db: options.db.map(i64::from),
      };
      let near = match (options.near_cache_max_entries, options.near_cache_max_bytes) {
        (Some(entries), Some(bytes)) => {
          Some(Arc::new(NearCache::new(entries as usize, bytes as usize)))
        }
        _ => None,
      };
      let mut setup = vec![RATE_LIMIT.load(), SLIDING_RATE_LIMIT.load(), CIRCUIT.load()];
      if near.is_some() {
        setup.push(READ.load());
      }
      let settings = Settings {
        connect_timeout: millis(options.connect_timeout_ms),
        command_timeout: millis(options.command_timeout_ms),
        spin: Duration::from_micros(if spin_micros.is_finite() && spin_micros > 0.0 {
          spin_micros as u64
        } else {
          0
        }),
        // Scripts are loaded on every new connection, so the first calls
        // need no retry (a failure to load is not fatal: see `Reload`).
        greeting: Greeting {
          role: Role::Any,
          tracking: near.is_some(),
          setup,
        },
        near: near.clone(),
      };
      let command_timeout = settings.command_timeout;
      let tls = tls_settings(
        options.use_tls,
        options.tls_ca.as_deref(),
        options.tls_cert.as_deref(),
        options.tls_key.as_deref(),
        options.tls_servername.as_ref(),
      )?;
      let route = Route::open(&deployment, &login, &tls, settings, Arc::clone(&replies))
        .map_err(|error| Error::new(Status::InvalidArg, error))?;
      Ok(NativeRedisConnection {
        route: Arc::new(route),
        replies,
        prefix: options.prefix,
        command_timeout,
        event_loop: if options.watch_event_loop {
          EventLoop::of(&env)
        } else {
          None
        },
        near,
        ready: std::sync::Mutex::new(Vec::new()),
      })
    })
  }

  fn key(&self, kind: &str, key: &str) -> String {
    store_key(&self.prefix, kind, key)
  }

  /// A call of `store` on the Redis key `key`, sending the command `build`
  /// makes of it; `decode` reads the answer.
  fn job(
    &self,
    id: f64,
    store: &'static str,
    key: String,
    build: impl FnOnce(String) -> Cmd,
    decode: impl FnOnce(RedisResult<Value>) -> RedisResult<Reply> + Send + 'static,
  ) -> Job {
    let slot = self.route.slot(&key);
    let deadline = Instant::now() + self.command_timeout;
    let mut job = Job::new(id, store, build(key), Box::new(decode), deadline);
    job.slot = slot;
    job
  }

  /// Queues a call for the next [`flush`](Self::flush), making Node wait
  /// for its answer.
  fn send(&self, env: &Env, job: Job) {
    self.replies.hold(env);
    self.route.submit(job);
  }

  /// Answers call `id` with `reply` at the next flush, without asking Redis
  /// (a near-cache hit).
  fn answer_now(&self, env: &Env, id: f64, reply: Reply) {
    self.replies.hold(env);
    crate::errors::lock(&self.ready).push((id, reply));
  }

  /// For a read of `key`: its live copy (`Err`), or the near cache's part
  /// in reading it (`Ok(None)` when there is no near cache).
  fn near_read(&self, key: &str) -> std::result::Result<Option<Near>, Copy> {
    let Some(cache) = &self.near else {
      return Ok(None);
    };
    match cache.lookup(key.as_bytes(), now_ms()) {
      Lookup::Hit(copy) => Err(copy),
      Lookup::Miss(ticket) => Ok(Some(Near {
        cache: Arc::clone(cache),
        key: key.as_bytes().into(),
        ticket,
      })),
    }
  }

  /// For a write of `key`: the copy is dropped now (later reads must not
  /// see it) and the write's answer may replace it.
  fn near_write(&self, key: &str) -> Option<Near> {
    let cache = self.near.as_ref()?;
    cache.invalidate(key.as_bytes());
    Some(Near {
      cache: Arc::clone(cache),
      key: key.as_bytes().into(),
      ticket: cache.writing(key.as_bytes()),
    })
  }

  /// Sends the calls queued since the last flush and answers those whose
  /// replies came while it polled (see `wire::flush`); `null` when none did.
  /// The others arrive through `settle`, or a later flush takes them (see
  /// [`awaiting`](Self::awaiting)). With `defer`, a busy Node loop delays
  /// the writing to that later flush, so one turn's calls share one write.
  #[napi(ts_return_type = "[Float64Array, ...unknown[]] | null")]
  pub fn flush(&self, env: &Env, spin: bool, defer: bool) -> Result<Option<Batch>> {
    guard(ADAPTER, || {
      let mut answers = std::mem::take(&mut *crate::errors::lock(&self.ready));
      answers.extend(self.route.flush(spin, defer, self.event_loop.as_ref()));
      Ok(self.collected(env, answers))
    })
  }

  /// Writes the calls queued so far, before the turn's closing `flush()`
  /// (see `wire::write_early`); answers those already answered, or `null`.
  #[napi(ts_return_type = "[Float64Array, ...unknown[]] | null")]
  pub fn write_early(&self, env: &Env) -> Result<Option<Batch>> {
    guard(ADAPTER, || {
      Ok(self.collected(env, self.route.write_early()))
    })
  }

  /// Answers the JS thread collected itself, as the batch returned to JS
  /// (`null` when there are none), counted as delivered.
  fn collected(&self, env: &Env, answers: Vec<(f64, Reply)>) -> Option<Batch> {
    if answers.is_empty() {
      return None;
    }
    self.replies.delivered_here(env, answers.len());
    Some(Batch(answers))
  }

  /// Calls are in flight that only another `flush()` will collect (on a
  /// busy Node event loop); the JS layer then flushes again next turn.
  #[napi(getter)]
  pub fn awaiting(&self) -> bool {
    self.route.awaiting()
  }

  /// Counts one hit on `<prefix>rl:<key>` in a window of `windowMs`;
  /// answers `{ count, resetAt }`.
  #[napi]
  pub fn increment(&self, env: &Env, id: f64, key: String, window_ms: f64) -> Result<()> {
    guard(RATE_LIMIT_STORE, || {
      let key = self.key("rl", &key);
      let window_ms = duration_ms(window_ms);
      if window_ms == 0 {
        // A zero window ends at once: every hit opens (and closes) its own.
        let now = now_ms() as f64;
        let delete = |key| command("DEL", key);
        let job = self.job(id, RATE_LIMIT_STORE, key, delete, move |answer| {
          answer?;
          Ok(Reply::Hit {
            count: 1.0,
            reset_at: now,
          })
        });
        self.send(env, job);
        return Ok(());
      }
      let call = |key| {
        let mut command = RATE_LIMIT.call(key);
        command.arg(window_ms).arg(1);
        command
      };
      let decode: Decoder = |answer| {
        let (count, reset_at) = hit_of(answer)?;
        Ok(Reply::Hit { count, reset_at })
      };
      let mut job = self.job(id, RATE_LIMIT_STORE, key, call, decode);
      job.reload = Some(&*RATE_LIMIT as &dyn Reload);
      job.group = Some(Group {
        merge: merge_increments,
        extra: u128::from(window_ms as u64),
      });
      self.send(env, job);
      Ok(())
    })
  }

  /// Counts one hit on `<prefix>rls:<key>` in a sliding window of
  /// `windowMs` (see [`crate::sliding_window`]), at our clock's now; answers
  /// `{ count, resetAt }`.
  #[napi]
  pub fn sliding_increment(&self, env: &Env, id: f64, key: String, window_ms: f64) -> Result<()> {
    guard(RATE_LIMIT_STORE, || {
      let key = self.key("rls", &key);
      let now = now_ms();
      let window = Window::at(now, duration_ms(window_ms));
      // Relative, so a server clock unlike ours still keeps the key as long.
      let ttl = window.end().saturating_add(window.length) - now;
      let call = |key| {
        let mut command = SLIDING_RATE_LIMIT.call(key);
        command
          .arg(window.start)
          .arg(window.start - window.length)
          .arg(ttl)
          .arg(1);
        command
      };
      let decode = move |answer| sliding_replies(answer, &[id], window, now);
      let mut job = self.job(id, RATE_LIMIT_STORE, key, call, decode);
      job.reload = Some(&*SLIDING_RATE_LIMIT as &dyn Reload);
      job.group = Some(sliding_group(window, now));
      self.send(env, job);
      Ok(())
    })
  }

  /// Answers the snapshot of circuit `<prefix>cb:<key>`.
  #[napi]
  pub fn circuit_get(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      self.circuit(env, id, key, "get", "");
      Ok(())
    })
  }

  #[napi]
  pub fn circuit_record_success(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      self.circuit(env, id, key, "success", "");
      Ok(())
    })
  }

  #[napi]
  pub fn circuit_record_failure(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      self.circuit(env, id, key, "failure", "");
      Ok(())
    })
  }

  /// `to` is "closed", "open" or "half-open" (checked by the JS layer and
  /// again by the script).
  #[napi]
  pub fn circuit_transition(&self, env: &Env, id: f64, key: String, to: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      self.circuit(env, id, key, "transition", &to);
      Ok(())
    })
  }

  /// `PING`, answered when the server (in a cluster, the node serving
  /// slot 0) answers: how an unavailable server is probed.
  #[napi]
  pub fn ping(&self, env: &Env, id: f64) -> Result<()> {
    guard(ADAPTER, || {
      let job = Job::new(
        id,
        ADAPTER,
        ::redis::cmd("PING"),
        Box::new(|answer: RedisResult<Value>| answer.map(|_| Reply::Done)),
        Instant::now() + self.command_timeout,
      );
      self.send(env, job);
      Ok(())
    })
  }

  /// Forgets the circuit `<prefix>cb:<key>`.
  #[napi]
  pub fn circuit_reset(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CIRCUIT_STORE, || {
      let key = self.key("cb", &key);
      let near = self.near_write(&key);
      let refresh = near.is_some();
      let delete = |key| command("DEL", key);
      let job = self.job(id, CIRCUIT_STORE, key.clone(), delete, move |answer| {
        if let Some(near) = near {
          near.forget();
        }
        answer.map(|_| Reply::Done)
      });
      self.send(env, job);
      if refresh {
        self.refresh_copy(key);
      }
      Ok(())
    })
  }

  fn circuit(&self, env: &Env, id: f64, key: String, op: &str, to: &str) {
    let key = self.key("cb", &key);
    let reading = op == "get";
    let near = if reading {
      match self.near_read(&key) {
        Err(copy) => return self.answer_now(env, id, snapshot_reply(copy)),
        Ok(near) => near,
      }
    } else {
      self.near_write(&key)
    };
    let refresh = near.is_some() && !reading;
    let mut job = self.circuit_job(id, key.clone(), op, to, near);
    job.group = match op {
      "failure" => Some(Group {
        merge: merge_failures,
        extra: CircuitOperation::RecordFailure as u128,
      }),
      "success" => Some(Group {
        merge: merge_successes,
        extra: CircuitOperation::RecordSuccess as u128,
      }),
      _ => None,
    };
    self.send(env, job);
    if refresh {
      self.refresh_copy(key);
    }
  }

  /// A call running the circuit script's `op` on `key`, its answer kept in
  /// (or, for a write, dropped from) the near cache when there is one.
  fn circuit_job(&self, id: f64, key: String, op: &str, to: &str, near: Option<Near>) -> Job {
    let untracked = near.as_ref().filter(|_| op == "get").map(Near::untracked);
    let call = |key| {
      let mut command = CIRCUIT.call(key);
      command
        .arg(op)
        .arg(now_ms())
        .arg(to)
        .arg(CIRCUIT_TTL_SECONDS)
        .arg(1);
      command
    };
    let decode = move |answer| {
      let read = snapshot_and_expiry(answer);
      if let Some(near) = near {
        match &read {
          // A read: the key's expiry came with it (-2: no such circuit).
          Ok((_, _, Some(-2))) => near.keep(Copy::Absent, None),
          Ok((state, numbers, Some(at))) => {
            near.keep(Copy::Snapshot(*state, *numbers), expiry(*at))
          }
          // A write: the server no longer tracks the key for us (a write
          // ends its tracking), so nothing of it may be kept.
          Ok((_, _, None)) | Err(_) => near.forget(),
        }
      }
      let (state, numbers, _) = read?;
      Ok(Reply::Snapshot { state, numbers })
    };
    let mut job = self.job(id, CIRCUIT_STORE, key, call, decode);
    job.reload = Some(&*CIRCUIT as &dyn Reload);
    job.untracked = untracked;
    job
  }

  /// After a write of circuit `key`, a tracked read right behind it (same
  /// connection, same flush): the next `getState` is answered from its copy.
  /// Answers nobody; the reads of one flush merge into one.
  fn refresh_copy(&self, key: String) {
    let Ok(Some(near)) = self.near_read(&key) else {
      return;
    };
    let mut job = self.circuit_job(0.0, key, "get", "", Some(near));
    job.silent = true;
    job.group = Some(Group {
      merge: merge_reads,
      extra: 0,
    });
    self.route.submit(job);
  }

  /// Answers the response under `<prefix>cache:<key>`, or `null` when
  /// there is none or what is there is not a well-formed envelope.
  #[napi]
  pub fn cache_get(&self, env: &Env, id: f64, key: String) -> Result<()> {
    guard(CACHE_STORE, || {
      let key = self.key("cache", &key);
      let near = match self.near_read(&key) {
        Err(copy) => {
          self.answer_now(env, id, cached_reply(copy));
          return Ok(());
        }
        Ok(near) => near,
      };
      let job = match near {
        None => self.job(
          id,
          CACHE_STORE,
          key,
          |key| command("GET", key),
          |answer| {
            let raw: Option<Vec<u8>> = match answer {
              // Another Redis type under the key is garbage too: a miss.
              Err(error) if wrong_type(&error) => None,
              answer => FromRedisValue::from_redis_value(answer?)?,
            };
            Ok(envelope_reply(raw, None))
          },
        ),
        Some(near) => {
          let untracked = near.untracked();
          let read = |key| READ.call(key);
          let mut job = self.job(id, CACHE_STORE, key, read, move |answer| {
            let fields: Vec<Value> = match answer {
              Err(error) if wrong_type(&error) => {
                near.forget();
                return Ok(Reply::Cached(None));
              }
              answer => FromRedisValue::from_redis_value(answer?)?,
            };
            let mut fields = fields.into_iter();
            match (fields.next(), fields.next(), fields.next()) {
              (Some(Value::Int(1)), Some(raw), Some(at)) => {
                let raw: Vec<u8> = FromRedisValue::from_redis_value(raw)?;
                let at: i64 = FromRedisValue::from_redis_value(at)?;
                Ok(envelope_reply(Some(raw), Some((near, expiry(at)))))
              }
              _ => {
                near.keep(Copy::Absent, None);
                Ok(Reply::Cached(None))
              }
            }
          });
          job.reload = Some(&*READ as &dyn Reload);
          job.untracked = Some(untracked);
          job
        }
      };
      self.send(env, job);
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
  // Positional, as every per-call method here: an options object would
  // cost a property lookup per field on each call.
  #[allow(clippy::too_many_arguments)]
  #[napi]
  pub fn cache_put(
    &self,
    env: &Env,
    id: f64,
    key: String,
    status: u32,
    headers: String,
    body: Uint8Array,
    ttl_ms: f64,
  ) -> Result<()> {
    guard(CACHE_STORE, || {
      let key = self.key("cache", &key);
      let ttl_ms = duration_ms(ttl_ms);
      // The copy goes now; the next read fetches what was put.
      let near = self.near_write(&key);
      let stored = move |answer: RedisResult<Value>| {
        if let Some(near) = near {
          near.forget();
        }
        answer.map(|_| Reply::Done)
      };
      if ttl_ms == 0 {
        let job = self.job(id, CACHE_STORE, key, |key| command("DEL", key), stored);
        self.send(env, job);
        return Ok(());
      }
      // A status no Response has (only `Response.error()`'s 0 fits a u32
      // here) is kept as an envelope that reads back as a miss.
      let status = u16::try_from(status).unwrap_or(u16::MAX);
      let set = move |key, body: &[u8]| {
        let envelope = StoredResponse::envelope_of_joined(status, &headers, body);
        let mut set = command("SET", key);
        set.arg(envelope).arg("PX").arg(ttl_ms);
        set
      };
      if body.len() <= INLINE_ENVELOPE_BYTES {
        let job = self.job(id, CACHE_STORE, key, |key| set(key, &body), stored);
        self.send(env, job);
        return Ok(());
      }
      // The job is made now, with an empty command, so it is routed and
      // timed like any other; the envelope is encoded off the JS thread.
      let mut job = self.job(id, CACHE_STORE, key.clone(), |_| Cmd::new(), stored);
      self.replies.hold(env);
      let route = Arc::clone(&self.route);
      let replies = Arc::clone(&self.replies);
      napi::bindgen_prelude::spawn(async move {
        match guard_async(CACHE_STORE, async { Ok(set(key, &body)) }).await {
          Ok(command) => {
            drop(body);
            job.command = command;
            route.send_elsewhere(job);
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
      let key = self.key("cache", &key);
      let near = self.near_write(&key);
      let delete = |key| command("DEL", key);
      let decode = move |answer: RedisResult<Value>| {
        if let Some(near) = near {
          near.forget();
        }
        let removed: i64 = FromRedisValue::from_redis_value(answer?)?;
        Ok(Reply::Removed(removed > 0))
      };
      let job = self.job(id, CACHE_STORE, key, delete, decode);
      self.send(env, job);
      Ok(())
    })
  }

  /// Closes the connection(s); later calls fail. Calls in flight finish.
  #[napi]
  pub fn close(&self) {
    self.route.close();
  }

  #[napi(getter)]
  pub fn closed(&self) -> bool {
    self.route.is_closed()
  }

  /// The near cache's copies, the bytes charged for them and the reads
  /// answered from a copy, or `null` without one.
  #[napi(getter, ts_return_type = "[number, number, number] | null")]
  pub fn near_cache_size(&self) -> Option<Vec<f64>> {
    let (entries, bytes, hits) = self.near.as_ref()?.size();
    Some(vec![entries as f64, bytes as f64, hits as f64])
  }
}

impl Drop for NativeRedisConnection {
  /// A connection dropped without `close()` (its adapter was collected)
  /// closes once its calls are answered.
  fn drop(&mut self) {
    self.route.close();
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn another_type_under_a_key_is_recognised_from_redis_6_and_7() {
    let error = |reply: &[u8]| resp::decode(reply).unwrap().extract_error().unwrap_err();
    assert!(wrong_type(&error(
      b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    )));
    assert!(wrong_type(&error(
      b"-ERR Error running script (call to f_0b1c): @user_script:1: WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    )));
    assert!(!wrong_type(&error(b"-ERR unknown command\r\n")));
  }

  #[test]
  fn merged_sliding_calls_count_one_after_another_at_their_instant() {
    // 50 ms into a 1 s window: 95% of the previous window's 10 hits count.
    let (now, window) = (10_050, Window::at(10_050, 1000));
    let answer = Ok(Value::Array(vec![Value::Int(5), Value::Int(10)]));
    let Ok(Reply::Many(replies)) = sliding_replies(answer, &[1.0, 2.0, 3.0], window, now) else {
      panic!("three answers");
    };
    let counts: Vec<(f64, f64, f64)> = replies
      .into_iter()
      .map(|(id, reply)| match reply {
        Reply::Hit { count, reset_at } => (id, count, reset_at),
        _ => panic!("a hit"),
      })
      .collect();
    assert_eq!(
      counts,
      [
        (1.0, 12.0, 11_000.0),
        (2.0, 13.0, 11_000.0),
        (3.0, 14.0, 11_000.0)
      ]
    );
  }

  #[test]
  fn sliding_groups_hold_the_window_length_and_the_instant() {
    for (now, length) in [(10_050, 1000), (-5, 1), (1 << 52, 1 << 52)] {
      let window = Window::at(now, length);
      assert_eq!(sliding_instant(sliding_group(window, now)), (window, now));
    }
    let at = |now| sliding_group(Window::at(now, 1000), now).extra;
    assert_ne!(at(10_050), at(10_051));
  }

  #[test]
  fn keys_follow_stomas_layout() {
    assert_eq!(store_key("stoma:", "rl", "ip:1"), "stoma:rl:ip:1");
    assert_eq!(store_key("stoma:", "cb", "upstream"), "stoma:cb:upstream");
    assert_eq!(store_key("stoma:", "cache", "GET /x"), "stoma:cache:GET /x");
  }

  #[test]
  fn malformed_urls_are_refused_at_once() {
    for url in ["", "not a url", "http://example.com", "redis://host:99999"] {
      assert!(::redis::Client::open(url).is_err(), "{url}");
    }
  }
}
