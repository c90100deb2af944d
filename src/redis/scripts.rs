//! The Lua scripts the stores run on the server, and how to call them.
//!
//! They are loaded when a connection opens and run by `EVALSHA`; a call the
//! server refuses with `NOSCRIPT` (it lost its script cache, e.g. after a
//! restart) is sent again as `EVAL`, which also loads the script.

use std::sync::LazyLock;

use ::redis::{Arg, Cmd, Script};

use super::job::Reload;

/// A script's source and its SHA-1, as `EVALSHA` names it.
pub struct Lua {
  pub source: String,
  pub sha: String,
}

impl Lua {
  fn new(source: String) -> Self {
    Lua {
      sha: Script::new(&source).get_hash().to_string(),
      source,
    }
  }

  /// `EVALSHA <sha> 1 <key>`; the caller adds the script's arguments.
  pub fn call(&self, key: String) -> Cmd {
    let mut command = ::redis::cmd("EVALSHA");
    command.arg(&self.sha).arg(1).arg(key);
    command
  }

  /// `SCRIPT LOAD <source>`, run by every new connection.
  pub fn load(&self) -> Cmd {
    let mut command = ::redis::cmd("SCRIPT");
    command.arg("LOAD").arg(&self.source);
    command
  }
}

impl Reload for Lua {
  /// The same call as `EVAL <source> …`, for a server that lost the script.
  fn with_source(&self, evalsha: &Cmd) -> Cmd {
    let mut command = ::redis::cmd("EVAL");
    command.arg(&self.source);
    for arg in evalsha.args_iter().skip(2) {
      if let Arg::Simple(bytes) = arg {
        command.arg(bytes);
      }
    }
    command
  }
}

pub static RATE_LIMIT: LazyLock<Lua> = LazyLock::new(|| {
  Lua::new(format!(
    "{RATE_LIMIT_HEAD}{EXPIRES_AT_LUA}{RATE_LIMIT_TAIL}"
  ))
});
pub static CIRCUIT: LazyLock<Lua> =
  LazyLock::new(|| Lua::new(format!("{EXPIRES_AT_LUA}{CIRCUIT_LUA}")));
pub static READ: LazyLock<Lua> = LazyLock::new(|| Lua::new(format!("{EXPIRES_AT_LUA}{READ_LUA}")));
pub static SLIDING_RATE_LIMIT: LazyLock<Lua> =
  LazyLock::new(|| Lua::new(SLIDING_RATE_LIMIT_LUA.to_string()));

/// When a key expires, in epoch ms: PEXPIRETIME's answer (-1: no expiry,
/// -2: no key), or, on a server without it (Redis < 7), the same computed
/// from TIME and PTTL. `known` is what PEXPIRETIME already said, if anything.
const EXPIRES_AT_LUA: &str = r#"
local function expires_at(key, known)
  local at = known or redis.pcall('PEXPIRETIME', key)
  if type(at) == 'number' then
    return at
  end
  at = redis.call('PTTL', key)
  if at < 0 then
    return at
  end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + at
end
"#;

/// A fixed-window counter: the same data as Stoma's script (INCR, and an
/// expiry set on the first hit) but in milliseconds, so fractional windows
/// work. Anything under the key that is not a counter with an expiry (a
/// string, another Redis type, a counter left without expiry) is replaced by
/// a fresh window rather than failing every call.
///
/// `n` hits at once count as n calls one after another would: they are
/// calls of one flush merged into one (see `job::coalesce`).
///
/// The window's end is read back as the key's absolute expiry
/// (PEXPIRETIME, Redis 7; computed from TIME and PTTL on older servers), so
/// every hit of a window, from any client, reports the same `resetAt`.
/// The hit inside a live window is checked first, before the helper for the
/// rarer cases is even defined (the script is this head, `EXPIRES_AT_LUA`
/// and the tail): that is ~6% more calls a second for Redis.
/// KEYS[1]: the counter. ARGV[1]: the window in ms (> 0); ARGV[2]: the
/// hits to count (1 if absent). Returns { count, resetAt in epoch ms }.
const RATE_LIMIT_HEAD: &str = r#"
local key, window, n = KEYS[1], ARGV[1], tonumber(ARGV[2]) or 1

-- The common case first, with nothing else set up: a live window.
local count = redis.pcall('INCRBY', key, n)
local at
if type(count) == 'number' and count > n then
  at = redis.pcall('PEXPIRETIME', key)
  if type(at) == 'number' and at > 0 then
    return { count, at }
  end
end

-- (Here comes `expires_at`.)
"#;

const RATE_LIMIT_TAIL: &str = r#"
-- A server without PEXPIRETIME, or a window to open: the first hit, or
-- anything under the key that is not a counter with an expiry.
if type(count) == 'number' and count > n then
  local ends = expires_at(key, at)
  if ends > 0 then
    return { count, ends }
  end
end
redis.call('SET', key, n, 'PX', window)
-- After the SET only an error from before is still news.
return { n, expires_at(key, type(at) == 'table' and at or nil) }
"#;

/// A sliding-window counter (issue #18, see `crate::sliding_window`): one
/// hash per key — one key, so one slot in a cluster — holding the current
/// window's `start` and `hits` and the `previous` window's hits.
///
/// The script only keeps the counters. The caller works out the window from
/// its own clock (so the memory store, PostgreSQL and Redis agree on every
/// boundary) and the count from the answer (`Window::count`, in integers:
/// Lua's numbers are doubles). Starts travel as the caller's decimal text and
/// are compared as text, so no number here goes through a double but the
/// hit counts, which stay far below 2^53.
///
/// Anything under the key that is not such a hash (another type, fields
/// that are not counts) is replaced by a fresh window rather than failing
/// every call. `n` hits at once count as n calls at one instant would (calls
/// of one flush merged into one, see `job::coalesce`). The hit inside the
/// current window is handled first, with the fewest Lua steps: that path
/// runs ~1.3× as many calls a second as a version that checked every field
/// through a helper.
///
/// KEYS[1]: the hash. ARGV[1]: the current window's start (epoch ms);
/// ARGV[2]: the previous window's start; ARGV[3]: ms until the key may go,
/// the end of the next window (whose previous window this one is); ARGV[4]:
/// the hits to count (1 if absent). Returns { hits, previous hits }.
const SLIDING_RATE_LIMIT_LUA: &str = r#"
local key, start = KEYS[1], ARGV[1]

-- The common case first, with nothing else set up: a hit in the window the
-- key is in (HINCRBY refuses hits that are not an integer).
local stored = redis.pcall('HMGET', key, 'start', 'previous')
if stored[1] == start then
  local previous = tonumber(stored[2])
  if previous and previous >= 0 then
    local hits = redis.pcall('HINCRBY', key, 'hits', ARGV[4] or 1)
    if type(hits) == 'number' then
      return { hits, previous }
    end
  end
end

-- A new window (or garbage to replace): the stored window's hits carry over
-- if it is the one just before.
local before, ttl, n = ARGV[2], ARGV[3], tonumber(ARGV[4]) or 1
local previous = 0
if stored[1] == before then
  local hits = tonumber(redis.call('HGET', key, 'hits'))
  if hits and hits >= 0 and hits == math.floor(hits) and hits <= 9007199254740991 then
    previous = hits
  end
elseif stored.err then
  -- Another Redis type under the key.
  redis.call('DEL', key)
end
redis.call('HSET', key, 'start', start, 'hits', n, 'previous', previous)
redis.call('PEXPIRE', key, ttl)
return { n, previous }
"#;

/// One circuit-breaker operation, read-modify-write on the server.
/// KEYS[1]: the circuit. ARGV[1]: "get", "success", "failure" or
/// "transition"; ARGV[2]: now in epoch ms (the caller's clock, as Stoma uses
/// `Date.now()`); ARGV[3]: the target state of a transition; ARGV[4]: the
/// key's expiry in seconds; ARGV[5]: how many successes or failures to
/// record (merged calls, see `job::coalesce`; 1 if absent).
/// The value is Stoma's JSON, written in Stoma's field order; anything that
/// does not decode to that shape reads as a fresh closed circuit (decoding
/// runs under `pcall`, so invalid JSON cannot make the script fail).
/// Returns { state, failureCount, successCount, lastFailureTime, lastStateChange },
/// and for "get" the key's expiry too (see the end of the script).
const CIRCUIT_LUA: &str = r#"
local key, op, now, n = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5]) or 1
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
  c.successCount = math.min(c.successCount + n, MAX_COUNT)
elseif op == 'failure' then
  c.failureCount = math.min(c.failureCount + n, MAX_COUNT)
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
if op == 'get' then
  -- A near cache keeps the copy no longer than the key lives (-2: no key).
  return { c.state, c.failureCount, c.successCount, c.lastFailureTime, c.lastStateChange, expires_at(key) }
end
redis.call('SET', key, string.format(
  '{"state":"%s","failureCount":%d,"successCount":%d,"lastFailureTime":%d,"lastStateChange":%d}',
  c.state, c.failureCount, c.successCount, c.lastFailureTime, c.lastStateChange), 'EX', ARGV[4])
return { c.state, c.failureCount, c.successCount, c.lastFailureTime, c.lastStateChange }
"#;

/// A cache entry and when it expires, for a near cache: `GET` alone cannot
/// say how long a copy may be kept. KEYS[1]: the entry. Returns { 0 } when
/// there is none, else { 1, value, expiry in epoch ms (-1: none) }. Another
/// type under the key fails with WRONGTYPE, as `GET` does.
const READ_LUA: &str = r#"
local key = KEYS[1]
local value = redis.call('GET', key)
if not value then
  return { 0 }
end
return { 1, value, expires_at(key) }
"#;

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_scripts_have_stable_hashes() {
    assert_eq!(RATE_LIMIT.sha.len(), 40);
    assert_ne!(RATE_LIMIT.sha, CIRCUIT.sha);
    assert_ne!(READ.sha, CIRCUIT.sha);
    assert_ne!(SLIDING_RATE_LIMIT.sha, RATE_LIMIT.sha);
  }

  #[test]
  fn a_refused_evalsha_is_resent_with_its_source() {
    let mut call = RATE_LIMIT.call("stoma:rl:k".into());
    call.arg(60_000).arg(1);
    let eval = RATE_LIMIT.with_source(&call);
    let args: Vec<Vec<u8>> = eval
      .args_iter()
      .map(|arg| {
        if let Arg::Simple(b) = arg {
          b.to_vec()
        } else {
          Vec::new()
        }
      })
      .collect();
    assert_eq!(args[0], b"EVAL");
    assert_eq!(args[1], RATE_LIMIT.source.as_bytes());
    assert_eq!(
      &args[2..],
      &[
        b"1".to_vec(),
        b"stoma:rl:k".to_vec(),
        b"60000".to_vec(),
        b"1".to_vec()
      ]
    );
  }
}
