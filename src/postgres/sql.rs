//! The SQL text: table names, the schema, and one statement per operation.
//!
//! Table names cannot be bound as parameters, so the prefix is pasted into
//! the text. Stoma pastes whatever it is given; we paste only a prefix that
//! matches `^[A-Za-z_][A-Za-z0-9_]{0,40}$` ([`check_prefix`]), which cannot
//! close an identifier, open a comment or end a statement. Names stay
//! unquoted, exactly as Stoma writes them, so PostgreSQL folds them to lower
//! case the same way for both and a mixed fleet finds the same tables.
//!
//! Every statement that changes a row is a single `INSERT … ON CONFLICT DO
//! UPDATE … RETURNING`, so PostgreSQL's row lock makes it atomic: concurrent
//! callers queue on the row and none of their updates is lost. The target
//! table gets an alias and every column in `SET` is qualified (with the alias
//! or `EXCLUDED`); Stoma's `transition()` leaves one unqualified and fails
//! with `column reference "failure_count" is ambiguous`.
//!
//! Every statement declares its parameter types ([`Stmt::param_types`]):
//! prepared by name once per connection, or, behind a pooler that does not
//! keep named statements, sent unnamed with its text on every call (see
//! `prepared.rs`), it means the same either way.
//!
//! With `synchronousCommit: false`, each write turns `synchronous_commit`
//! off for its own transaction (`set_config(…, true)`, the same as `SET
//! LOCAL`, in the statement itself), never for the session: behind a pooler
//! a session setting would stay on whichever server connection ran it, for
//! that connection's other clients. A write alone thus stays one statement,
//! and a group's transaction commits without waiting as soon as one of its
//! writes ran.
//!
//! Cleanups delete only rows nobody holds (`FOR UPDATE SKIP LOCKED`): a row
//! locked by an open transaction is being written, so it is left for the
//! next cleanup rather than waited for. A cleanup that waited could hold
//! some expired rows while wanting one that a group of writes holds, as
//! that group wants one of the cleanup's — a deadlock (see `batch.rs`).

use tokio_postgres::types::Type;

/// The schema for `stoma_` tables: the same text as Stoma's
/// `POSTGRES_SCHEMA_SQL` (our tests compare the two), written as a template
/// in which `{p}` stands for the prefix.
const SCHEMA_TEMPLATE: &str = "
CREATE TABLE IF NOT EXISTS {p}rate_limits (
  key TEXT PRIMARY KEY,
  count INTEGER NOT NULL DEFAULT 0,
  reset_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_{p}rate_limits_reset_at ON {p}rate_limits (reset_at);

CREATE TABLE IF NOT EXISTS {p}circuit_breakers (
  key TEXT PRIMARY KEY,
  state TEXT NOT NULL DEFAULT 'closed',
  failure_count INTEGER NOT NULL DEFAULT 0,
  success_count INTEGER NOT NULL DEFAULT 0,
  last_failure_time BIGINT NOT NULL DEFAULT 0,
  last_state_change BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS {p}cache (
  key TEXT PRIMARY KEY,
  status INTEGER NOT NULL,
  headers JSONB NOT NULL DEFAULT '[]',
  body TEXT NOT NULL DEFAULT '',
  expires_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_{p}cache_expires_at ON {p}cache (expires_at);
";

/// The table of sliding windows (issue #18), ours alone: not in Stoma's
/// schema, so created by `ensureSchema()` after it. Per key, the current
/// window's start and hits, the previous window's hits, and when the row
/// stops mattering (the end of the next window, whose previous window this
/// one is), which the cleanup goes by.
const SLIDING_SCHEMA_TEMPLATE: &str = "
CREATE TABLE IF NOT EXISTS {p}sliding_windows (
  key TEXT PRIMARY KEY,
  window_start BIGINT NOT NULL,
  hits BIGINT NOT NULL,
  previous_hits BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_{p}sliding_windows_expires_at ON {p}sliding_windows (expires_at);
";

/// Longest prefix accepted: with it, `idx_<prefix>rate_limits_reset_at` is
/// 65 bytes, which PostgreSQL truncates to 63 — still distinct from the
/// cache index, whose name differs right after the prefix.
const MAX_PREFIX_LEN: usize = 41;

/// Why a prefix was refused, or `None` if it is safe to paste into SQL.
pub fn check_prefix(prefix: &str) -> Option<String> {
  let mut bytes = prefix.bytes();
  let first_ok = bytes
    .next()
    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
  let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
  if first_ok && rest_ok && prefix.len() <= MAX_PREFIX_LEN {
    None
  } else {
    Some(format!(
      "tablePrefix must match /^[A-Za-z_][A-Za-z0-9_]{{0,40}}$/ (letters, digits and underscores, \
       not starting with a digit, at most {MAX_PREFIX_LEN} characters)"
    ))
  }
}

/// The schema for tables named with `prefix` (assumed checked).
pub fn schema_sql(prefix: &str) -> String {
  SCHEMA_TEMPLATE.replace("{p}", prefix)
}

/// The sliding-window table for `prefix` (assumed checked).
pub fn sliding_schema_sql(prefix: &str) -> String {
  SLIDING_SCHEMA_TEMPLATE.replace("{p}", prefix)
}

/// The tables a prefix names.
#[derive(Clone, Debug)]
pub struct Tables {
  pub prefix: String,
  pub rate_limits: String,
  pub sliding_windows: String,
  pub circuit_breakers: String,
  pub cache: String,
}

impl Tables {
  pub fn new(prefix: &str) -> Self {
    Tables {
      prefix: prefix.to_string(),
      rate_limits: format!("{prefix}rate_limits"),
      sliding_windows: format!("{prefix}sliding_windows"),
      circuit_breakers: format!("{prefix}circuit_breakers"),
      cache: format!("{prefix}cache"),
    }
  }
}

/// Every statement the stores run, indexing [`Statements::text`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stmt {
  /// `($1 key, $2 now, $3 now + window) → (count, reset_at)`
  Increment,
  /// `($1 now)`, skipping locked rows
  CleanupRateLimits,
  /// `($1 key, $2 window start, $3 window length) → (hits, previous_hits)`
  SlidingIncrement,
  /// `($1 now)`, skipping locked rows
  CleanupSlidingWindows,
  /// `($1 key) → snapshot row or none`
  CircuitGet,
  /// `($1 key, $2 now) → snapshot row`
  CircuitSuccess,
  /// `($1 key, $2 now) → snapshot row`
  CircuitFailure,
  /// `($1 key, $2 state, $3 now) → snapshot row`
  CircuitTransition,
  /// `($1 key)`
  CircuitReset,
  /// `($1 key, $2 now) → (status, headers as text, body) or none`
  CacheGet,
  /// `($1 key, $2 status, $3 headers JSON text, $4 base64 body, $5 expires_at)`
  CachePut,
  /// `($1 key)`, one row affected if something was removed
  CacheDelete,
  /// `($1 now)`, skipping locked rows
  CleanupCache,
}

impl Stmt {
  pub const COUNT: usize = 13;

  /// The table the statement works on, for error messages.
  pub fn table(self, tables: &Tables) -> &str {
    match self {
      Stmt::Increment | Stmt::CleanupRateLimits => &tables.rate_limits,
      Stmt::SlidingIncrement | Stmt::CleanupSlidingWindows => &tables.sliding_windows,
      Stmt::CircuitGet
      | Stmt::CircuitSuccess
      | Stmt::CircuitFailure
      | Stmt::CircuitTransition
      | Stmt::CircuitReset => &tables.circuit_breakers,
      Stmt::CacheGet | Stmt::CachePut | Stmt::CacheDelete | Stmt::CleanupCache => &tables.cache,
    }
  }

  /// The table as a number, for sorting a group's writes by (table, key).
  pub fn table_rank(self) -> u8 {
    match self {
      Stmt::Increment | Stmt::CleanupRateLimits => 0,
      Stmt::CircuitGet
      | Stmt::CircuitSuccess
      | Stmt::CircuitFailure
      | Stmt::CircuitTransition
      | Stmt::CircuitReset => 1,
      Stmt::CacheGet | Stmt::CachePut | Stmt::CacheDelete | Stmt::CleanupCache => 2,
      Stmt::SlidingIncrement | Stmt::CleanupSlidingWindows => 3,
    }
  }

  /// Whether its table is one of Stoma's (`POSTGRES_SCHEMA_SQL` creates
  /// it); only `ensureSchema()` creates the sliding-window table.
  pub fn in_stomas_schema(self) -> bool {
    !matches!(self, Stmt::SlidingIncrement | Stmt::CleanupSlidingWindows)
  }

  /// Whether the statement writes exactly the one row under its key (`$1`):
  /// those may share a transaction with other writes (see `batch.rs`).
  pub fn changes_one_row(self) -> bool {
    matches!(
      self,
      Stmt::Increment
        | Stmt::SlidingIncrement
        | Stmt::CircuitSuccess
        | Stmt::CircuitFailure
        | Stmt::CircuitTransition
        | Stmt::CircuitReset
        | Stmt::CachePut
        | Stmt::CacheDelete
    )
  }

  /// The types of `$1`, `$2`, …, as the server would infer them from the
  /// columns they meet; the Rust values bound to them must match (a
  /// mismatch is refused before anything is sent).
  pub fn param_types(self) -> &'static [Type] {
    const KEY: &[Type] = &[Type::TEXT];
    const KEY_TIME: &[Type] = &[Type::TEXT, Type::INT8];
    match self {
      Stmt::Increment | Stmt::SlidingIncrement => &[Type::TEXT, Type::INT8, Type::INT8],
      Stmt::CleanupRateLimits | Stmt::CleanupSlidingWindows | Stmt::CleanupCache => &[Type::INT8],
      Stmt::CircuitGet | Stmt::CircuitReset | Stmt::CacheDelete => KEY,
      Stmt::CircuitSuccess | Stmt::CircuitFailure | Stmt::CacheGet => KEY_TIME,
      Stmt::CircuitTransition => &[Type::TEXT, Type::TEXT, Type::INT8],
      Stmt::CachePut => &[Type::TEXT, Type::INT4, Type::TEXT, Type::TEXT, Type::INT8],
    }
  }

  /// Whether the caller wants the rows (else how many rows changed).
  pub fn returns_rows(self) -> bool {
    matches!(
      self,
      Stmt::Increment
        | Stmt::SlidingIncrement
        | Stmt::CircuitGet
        | Stmt::CircuitSuccess
        | Stmt::CircuitFailure
        | Stmt::CircuitTransition
        | Stmt::CacheGet
    )
  }
}

/// The columns every circuit statement answers, in [`crate::postgres`]'s
/// reading order.
const SNAPSHOT: &str =
  "c.state, c.failure_count, c.success_count, c.last_failure_time, c.last_state_change";

/// Turns `synchronous_commit` off until the end of the transaction; always
/// true, so as a condition it keeps every row.
const ASYNC_COMMIT: &str = "set_config('synchronous_commit', 'off', true) <> ''";

/// The statement texts for one set of tables. Every column they answer has
/// a built-in type, so reading a result never makes tokio-postgres look a
/// type up (which it does with a named statement of its own).
pub struct Statements {
  texts: Vec<String>,
}

impl Statements {
  /// `durable`: whether writes keep the server's `synchronous_commit`.
  pub fn new(t: &Tables, durable: bool) -> Self {
    let (rl, sw, cb, cache) = (
      &t.rate_limits,
      &t.sliding_windows,
      &t.circuit_breakers,
      &t.cache,
    );
    // The row an upsert inserts, and the condition that picks the row a
    // delete removes; without durable commits both also run ASYNC_COMMIT.
    let row = |values: &str| match durable {
      true => format!("VALUES ({values})"),
      false => format!("SELECT {values} WHERE {ASYNC_COMMIT}"),
    };
    let only_key = match durable {
      true => "key = $1".to_string(),
      false => format!("key = $1 AND {ASYNC_COMMIT}"),
    };
    let texts = vec![
      // Increment: a missing or expired row becomes a new window at 1.
      format!(
        "INSERT INTO {rl} AS r (key, count, reset_at) {} \
         ON CONFLICT (key) DO UPDATE SET \
           count = CASE WHEN r.reset_at <= $2 THEN 1 ELSE r.count + 1 END, \
           reset_at = CASE WHEN r.reset_at <= $2 THEN $3 ELSE r.reset_at END \
         RETURNING r.count, r.reset_at",
        row("$1, 1, $3")
      ),
      format!("DELETE FROM {rl} WHERE key IN (SELECT key FROM {rl} WHERE reset_at <= $1 FOR UPDATE SKIP LOCKED)"),
      // SlidingIncrement: the window `$2` (of length `$3`) gets one more hit;
      // a row in an older window moves to this one, its hits becoming the
      // previous window's if it was the one just before (see
      // `crate::sliding_window`). SET reads the row as it was.
      format!(
        "INSERT INTO {sw} AS s (key, window_start, hits, previous_hits, expires_at) {} \
         ON CONFLICT (key) DO UPDATE SET \
           hits = CASE WHEN s.window_start = $2 THEN s.hits + 1 ELSE 1 END, \
           previous_hits = CASE WHEN s.window_start = $2 THEN s.previous_hits \
             WHEN s.window_start = $2 - $3 THEN s.hits ELSE 0 END, \
           window_start = $2, \
           expires_at = EXCLUDED.expires_at \
         RETURNING s.hits, s.previous_hits",
        row("$1, $2, 1, 0, $2 + 2 * $3")
      ),
      format!("DELETE FROM {sw} WHERE key IN (SELECT key FROM {sw} WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)"),
      format!("SELECT {SNAPSHOT} FROM {cb} AS c WHERE c.key = $1"),
      format!(
        "INSERT INTO {cb} AS c (key, state, failure_count, success_count, last_failure_time, last_state_change) \
         {} \
         ON CONFLICT (key) DO UPDATE SET success_count = c.success_count + 1 \
         RETURNING {SNAPSHOT}",
        row("$1, 'closed', 0, 1, 0, $2")
      ),
      format!(
        "INSERT INTO {cb} AS c (key, state, failure_count, success_count, last_failure_time, last_state_change) \
         {} \
         ON CONFLICT (key) DO UPDATE SET failure_count = c.failure_count + 1, last_failure_time = EXCLUDED.last_failure_time \
         RETURNING {SNAPSHOT}",
        row("$1, 'closed', 1, 0, $2, $2")
      ),
      // Transition: closed zeroes both counters, half-open zeroes successes.
      format!(
        "INSERT INTO {cb} AS c (key, state, failure_count, success_count, last_failure_time, last_state_change) \
         {} \
         ON CONFLICT (key) DO UPDATE SET \
           state = EXCLUDED.state, \
           failure_count = CASE WHEN EXCLUDED.state = 'closed' THEN 0 ELSE c.failure_count END, \
           success_count = CASE WHEN EXCLUDED.state = 'open' THEN c.success_count ELSE 0 END, \
           last_state_change = EXCLUDED.last_state_change \
         RETURNING {SNAPSHOT}",
        row("$1, $2, 0, 0, 0, $3")
      ),
      format!("DELETE FROM {cb} WHERE {only_key}"),
      // Headers travel as JSON text both ways: no JSONB codec needed here.
      format!("SELECT status, headers::text, body FROM {cache} WHERE key = $1 AND expires_at > $2"),
      format!(
        "INSERT INTO {cache} AS c (key, status, headers, body, expires_at) \
         {} \
         ON CONFLICT (key) DO UPDATE SET \
           status = EXCLUDED.status, headers = EXCLUDED.headers, body = EXCLUDED.body, expires_at = EXCLUDED.expires_at",
        row("$1, $2, $3::text::jsonb, $4, $5")
      ),
      format!("DELETE FROM {cache} WHERE {only_key}"),
      format!("DELETE FROM {cache} WHERE key IN (SELECT key FROM {cache} WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)"),
    ];
    debug_assert_eq!(texts.len(), Stmt::COUNT);
    Statements { texts }
  }

  pub fn text(&self, stmt: Stmt) -> &str {
    &self.texts[stmt as usize]
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const ALL: [Stmt; Stmt::COUNT] = [
    Stmt::Increment,
    Stmt::CleanupRateLimits,
    Stmt::SlidingIncrement,
    Stmt::CleanupSlidingWindows,
    Stmt::CircuitGet,
    Stmt::CircuitSuccess,
    Stmt::CircuitFailure,
    Stmt::CircuitTransition,
    Stmt::CircuitReset,
    Stmt::CacheGet,
    Stmt::CachePut,
    Stmt::CacheDelete,
    Stmt::CleanupCache,
  ];

  #[test]
  fn every_statement_declares_a_type_for_each_parameter() {
    for durable in [true, false] {
      let statements = Statements::new(&Tables::new("t_"), durable);
      for stmt in ALL {
        let text = statements.text(stmt);
        let highest = (1..=9)
          .filter(|n| text.contains(&format!("${n}")))
          .max()
          .unwrap_or(0);
        assert_eq!(stmt.param_types().len(), highest, "{stmt:?}: {text}");
      }
    }
  }

  #[test]
  fn without_durable_commits_every_write_and_only_writes_turn_them_off() {
    let durable = Statements::new(&Tables::new("t_"), true);
    let not = Statements::new(&Tables::new("t_"), false);
    for stmt in ALL {
      assert!(!durable.text(stmt).contains("set_config"), "{stmt:?}");
      assert_eq!(
        not.text(stmt).contains(ASYNC_COMMIT),
        stmt.changes_one_row(),
        "{stmt:?}"
      );
    }
  }

  #[test]
  fn accepts_only_plain_identifiers() {
    for good in ["stoma_", "_", "A", "tenant_42_", &"x".repeat(41)] {
      assert_eq!(check_prefix(good), None, "{good}");
    }
    for bad in [
      "",
      "1abc",
      "a-b",
      "a b",
      "stoma_; DROP TABLE x; --",
      "a\"b",
      "é",
      &"x".repeat(42),
    ] {
      assert!(check_prefix(bad).is_some(), "{bad}");
    }
  }

  #[test]
  fn the_default_schema_names_stomas_tables() {
    let sql = schema_sql("stoma_");
    assert!(sql.starts_with("\nCREATE TABLE IF NOT EXISTS stoma_rate_limits (\n"));
    assert!(sql.contains("idx_stoma_cache_expires_at ON stoma_cache (expires_at);\n"));
    assert!(!sql.contains("{p}"));
  }

  #[test]
  fn every_statement_names_its_table() {
    let statements = Statements::new(&Tables::new("t_"), true);
    assert!(statements
      .text(Stmt::Increment)
      .contains("INTO t_rate_limits AS r"));
    assert!(statements
      .text(Stmt::CircuitTransition)
      .contains("INTO t_circuit_breakers AS c"));
    assert!(statements.text(Stmt::CleanupCache).contains("FROM t_cache"));
    assert!(statements
      .text(Stmt::CleanupRateLimits)
      .ends_with("FOR UPDATE SKIP LOCKED)"));
  }
}
