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
//!   and loses updates. Both scripts run by `EVALSHA`; the `redis` crate's
//!   [`Script`] loads a script again when the server answers `NOSCRIPT`.
//! - One multiplexed connection carries every call of an adapter, so
//!   concurrent calls are pipelined on one socket.
//! - The cache envelope's JSON and base64 are handled here, off the JS
//!   thread, and the body crosses into JS as one buffer.
//! - Garbage under our keys reads as a cache miss, a fresh closed circuit or
//!   a fresh rate-limit window, never as an error.
//!
//! Failure behaviour: each call is bounded by `commandTimeoutMs` (waiting
//! for a connection included) and rejects with an error naming the store and
//! the cause. The connection is opened in the background when the adapter is
//! built and reopened on demand after it is lost (see [`Link`]), so calls
//! succeed again shortly after the server comes back, with no user action.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::{Buffer, Uint8Array};
use napi::{Error, Result, Status};
use napi_derive::napi;
use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, RedisError, RedisResult, Script};
use tokio::sync::watch;

use crate::clock::{duration_ms, now_ms};
use crate::envelope::StoredResponse;
use crate::errors::{guard, guard_async, lock, store_error};

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

local function reset_at()
  local at = redis.pcall('PEXPIRETIME', key)
  if type(at) == 'number' then
    return at
  end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + redis.call('PTTL', key)
end

local count = redis.pcall('INCR', key)
if type(count) == 'number' and count > 1 and redis.call('PTTL', key) > 0 then
  return { count, reset_at() }
end
redis.call('SET', key, 1, 'PX', window)
return { 1, reset_at() }
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

local function is_count(v)
  return type(v) == 'number' and v >= 0 and v == math.floor(v) and v <= 9007199254740991
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
  c.successCount = c.successCount + 1
elseif op == 'failure' then
  c.failureCount = c.failureCount + 1
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
}

impl Link {
  fn new(url: &str, prefix: String, connect_timeout_ms: f64, command_timeout_ms: f64) -> RedisResult<Arc<Self>> {
    let client = Client::open(url)?;
    let connect_timeout = Duration::from_millis(duration_ms(connect_timeout_ms).max(1) as u64);
    // The connection's own response timeout is off: `call` bounds the
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
    }))
  }

  fn key(&self, kind: &str, key: &str) -> String {
    format!("{}{kind}:{key}", self.prefix)
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
    napi::bindgen_prelude::spawn(async move {
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

  /// Runs `command` on the connection within the command timeout, turning
  /// every failure into an error naming `store` and the cause.
  async fn call<T, F, Fut>(self: &Arc<Self>, store: &str, command: F) -> Result<T>
  where
    F: FnOnce(MultiplexedConnection) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
  {
    let mut used = None;
    let work = async {
      let live = self.connection().await?;
      used = Some(live.generation);
      command(live.connection).await.map_err(|error| -> Arc<str> {
        if error.is_unrecoverable_error() {
          self.forget(live.generation);
        }
        format!("Redis at {}: {}", self.address, describe(&error)).into()
      })
    };
    let outcome = tokio::time::timeout(self.command_timeout, work).await;
    let ms = self.command_timeout.as_millis();
    match outcome {
      Ok(Ok(value)) => Ok(value),
      Ok(Err(cause)) => Err(store_error(store, cause)),
      Err(_) => match used {
        // No answer on an open connection: it may be dead without knowing
        // it (a frozen server, a lost route), so the next call opens anew.
        Some(generation) => {
          self.forget(generation);
          Err(store_error(store, format!("Redis at {} did not answer within {ms} ms", self.address)))
        }
        None => Err(store_error(store, format!("cannot connect to Redis at {} within {ms} ms", self.address))),
      },
    }
  }
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

/// `{ count, resetAt }` as Stoma's `RateLimitStore.increment` answers it.
#[napi(object)]
pub struct RedisRateLimitHit {
  pub count: f64,
  /// Epoch ms at which the window ends.
  pub reset_at: f64,
}

/// A circuit-breaker snapshot in Stoma's shape.
#[napi(object)]
pub struct RedisCircuitSnapshot {
  /// "closed", "open" or "half-open".
  pub state: String,
  pub failure_count: f64,
  pub success_count: f64,
  pub last_failure_time: f64,
  pub last_state_change: f64,
}

/// A cache hit: headers joined as `name\0value\0…` (see `lib/response.js`).
#[napi(object)]
pub struct RedisCachedResponse {
  pub status: u32,
  pub headers: String,
  pub body: Buffer,
}

/// One Redis connection and the operations of the three stores over it
/// (see `lib/redis.js`, which shares one between an adapter's stores).
#[napi]
pub struct NativeRedisConnection {
  link: Arc<Link>,
}

#[napi]
impl NativeRedisConnection {
  /// Parses `url` (throwing an `InvalidArg` error at once if it is
  /// malformed) and starts connecting in the background.
  #[napi(constructor)]
  pub fn new(url: String, prefix: String, connect_timeout_ms: f64, command_timeout_ms: f64) -> Result<Self> {
    guard("redisAdapter", || {
      let link = Link::new(&url, prefix, connect_timeout_ms, command_timeout_ms)
        .map_err(|error| Error::new(Status::InvalidArg, error.to_string()))?;
      link.connect_in_background();
      Ok(NativeRedisConnection { link })
    })
  }

  /// Counts one hit on `<prefix>rl:<key>` in a window of `windowMs`.
  #[napi]
  pub async fn increment(&self, key: String, window_ms: f64) -> Result<RedisRateLimitHit> {
    guard_async(RATE_LIMIT_STORE, async {
      let window_ms = duration_ms(window_ms);
      let key = self.link.key("rl", &key);
      if window_ms == 0 {
        // A zero window ends at once: every hit opens (and closes) its own.
        let now = now_ms();
        self.link.call(RATE_LIMIT_STORE, |mut c| async move { ::redis::cmd("DEL").arg(key).exec_async(&mut c).await }).await?;
        return Ok(RedisRateLimitHit { count: 1.0, reset_at: now as f64 });
      }
      let (count, reset_at): (i64, i64) = self
        .link
        .call(RATE_LIMIT_STORE, |mut c| async move {
          RATE_LIMIT_SCRIPT.key(key).arg(window_ms).invoke_async(&mut c).await
        })
        .await?;
      Ok(RedisRateLimitHit {
        count: count as f64,
        reset_at: reset_at as f64,
      })
    })
    .await
  }

  #[napi]
  pub async fn get_state(&self, key: String) -> Result<RedisCircuitSnapshot> {
    self.circuit(key, "get", "").await
  }

  #[napi]
  pub async fn record_success(&self, key: String) -> Result<RedisCircuitSnapshot> {
    self.circuit(key, "success", "").await
  }

  #[napi]
  pub async fn record_failure(&self, key: String) -> Result<RedisCircuitSnapshot> {
    self.circuit(key, "failure", "").await
  }

  /// `to` is "closed", "open" or "half-open" (checked by the JS layer and
  /// again by the script).
  #[napi]
  pub async fn transition(&self, key: String, to: String) -> Result<RedisCircuitSnapshot> {
    self.circuit(key, "transition", &to).await
  }

  /// Forgets the circuit `<prefix>cb:<key>`.
  #[napi]
  pub async fn reset_circuit(&self, key: String) -> Result<()> {
    guard_async(CIRCUIT_STORE, async {
      let key = self.link.key("cb", &key);
      self.link.call(CIRCUIT_STORE, |mut c| async move { ::redis::cmd("DEL").arg(key).exec_async(&mut c).await }).await
    })
    .await
  }

  async fn circuit(&self, key: String, op: &str, to: &str) -> Result<RedisCircuitSnapshot> {
    guard_async(CIRCUIT_STORE, async {
      let key = self.link.key("cb", &key);
      let now = now_ms();
      let (state, failures, successes, last_failure, last_change): (String, i64, i64, i64, i64) = self
        .link
        .call(CIRCUIT_STORE, |mut c| async move {
          CIRCUIT_SCRIPT
            .key(key)
            .arg(op)
            .arg(now)
            .arg(to)
            .arg(CIRCUIT_TTL_SECONDS)
            .invoke_async(&mut c)
            .await
        })
        .await?;
      Ok(RedisCircuitSnapshot {
        state,
        failure_count: failures as f64,
        success_count: successes as f64,
        last_failure_time: last_failure as f64,
        last_state_change: last_change as f64,
      })
    })
    .await
  }

  /// The response under `<prefix>cache:<key>`, or `null` when there is none
  /// or what is there is not a well-formed envelope.
  #[napi]
  pub async fn cache_get(&self, key: String) -> Result<Option<RedisCachedResponse>> {
    guard_async(CACHE_STORE, async {
      let key = self.link.key("cache", &key);
      let raw: Option<Vec<u8>> = self
        .link
        .call(CACHE_STORE, |mut c| async move {
          match ::redis::cmd("GET").arg(key).query_async(&mut c).await {
            // Another Redis type under the key is garbage too: a miss.
            Err(error) if error.code() == Some("WRONGTYPE") => Ok(None),
            other => other,
          }
        })
        .await?;
      Ok(raw.and_then(|raw| StoredResponse::from_envelope(&raw)).map(|hit| RedisCachedResponse {
        status: u32::from(hit.status),
        headers: hit.joined_headers(),
        body: hit.body.into(),
      }))
    })
    .await
  }

  /// Stores a response for `ttlMs` (rounded up to whole ms). A ttl of 0
  /// stores nothing — Redis rejects an expiry of 0 — and removes any older
  /// entry, since a response that expires at once replaces it.
  ///
  /// `body` is a private copy made by the JS layer (`arrayBuffer()`), so
  /// reading it here, off the JS thread, races with nothing.
  #[napi]
  pub async fn cache_put(&self, key: String, status: u32, headers: String, body: Uint8Array, ttl_ms: f64) -> Result<()> {
    guard_async(CACHE_STORE, async {
      let key = self.link.key("cache", &key);
      let ttl_ms = duration_ms(ttl_ms);
      if ttl_ms == 0 {
        return self.link.call(CACHE_STORE, |mut c| async move { ::redis::cmd("DEL").arg(key).exec_async(&mut c).await }).await;
      }
      let status = u16::try_from(status).map_err(|_| store_error(CACHE_STORE, format!("status {status} is out of range")))?;
      let envelope = StoredResponse::from_joined(status, &headers, body.to_vec()).to_envelope();
      drop(body);
      self
        .link
        .call(CACHE_STORE, |mut c| async move {
          ::redis::cmd("SET").arg(key).arg(envelope).arg("PX").arg(ttl_ms).exec_async(&mut c).await
        })
        .await
    })
    .await
  }

  /// Removes `<prefix>cache:<key>`; answers whether something was there.
  #[napi]
  pub async fn cache_delete(&self, key: String) -> Result<bool> {
    guard_async(CACHE_STORE, async {
      let key = self.link.key("cache", &key);
      let removed: i64 = self
        .link
        .call(CACHE_STORE, |mut c| async move { ::redis::cmd("DEL").arg(key).query_async(&mut c).await })
        .await?;
      Ok(removed > 0)
    })
    .await
  }

  /// Closes the connection; later calls reject. Calls in flight finish.
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
