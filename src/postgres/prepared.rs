//! Named statements, and the switch to unnamed ones when a pooler is in
//! front.
//!
//! Each connection prepares each of the stores' statements once, under a
//! name no other client can use, and then sends only Bind, Execute and Sync
//! per call: the server neither parses nor plans it again (after a few runs
//! it keeps a generic plan), about half its CPU per call compared with an
//! unnamed statement, which carries its text and is parsed and planned on
//! every call.
//!
//! Names: `stoma_<tag>_<n>`, where `tag` is a random 64-bit number drawn
//! once per process and `n` counts every statement this process prepares.
//! tokio-postgres's own names (`s0`, `s1`, …) restart at 0 in every process,
//! so behind a pooler that shares server connections between clients, one
//! process's Bind of `s1` could find — and run, with its parameters —
//! another process's `s1`. Ours can only ever find our own statement.
//!
//! Poolers. Behind a pooler in transaction mode (PgBouncer before 1.21, or
//! later without `max_prepared_statements`; other transaction poolers), each
//! transaction may run on another server connection, where the statement
//! this connection prepared does not exist: its Bind fails with SQLSTATE
//! 26000 and the server runs nothing of that call (a statement the server
//! refused is never applied, and this one never began). The same holds for
//! a Parse answered 42P05 (the name exists already). Either answer is taken
//! to mean a pooler is in front: the pool switches to unnamed statements for
//! good ([`Naming`]), and that call is sent again, unnamed. Calls answered
//! any other way — rows, another error, a lost connection, no answer in
//! time — are never sent again. (Inside a group's transaction the refused
//! Bind aborts the transaction; the group's writes are then each sent again
//! on their own, see `batch.rs`, by then unnamed.) PgBouncer 1.21 and later
//! with `max_prepared_statements` set track named statements themselves and
//! prepare them on whichever server connection they pick, so named
//! statements keep working there.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Error, Statement};

use super::sql::{Statements, Stmt};

/// How a pool sends its statements: by name until a pooler shows itself,
/// then unnamed. Shared by the pool's connections.
#[derive(Default)]
pub struct Naming {
  unnamed: AtomicBool,
}

impl Naming {
  pub fn is_unnamed(&self) -> bool {
    self.unnamed.load(Ordering::Relaxed)
  }

  /// From now on every statement goes unnamed (see the module docs).
  pub fn switch_to_unnamed(&self) {
    self.unnamed.store(true, Ordering::Relaxed);
  }
}

/// Whether the server refused a call because the named statement it used
/// does not exist (26000) or a Parse because its name is taken (42P05):
/// nothing of the call ran, and a pooler is in front.
pub fn statement_missing(error: &Error) -> bool {
  matches!(
    error.code(),
    Some(&SqlState::INVALID_SQL_STATEMENT_NAME) | Some(&SqlState::DUPLICATE_PSTATEMENT)
  )
}

/// The statements prepared on one connection.
pub struct Prepared {
  slots: [OnceCell<Statement>; Stmt::COUNT],
}

impl Default for Prepared {
  fn default() -> Self {
    Prepared {
      slots: std::array::from_fn(|_| OnceCell::new()),
    }
  }
}

impl Prepared {
  /// The statement to send `stmt` by on `client`, prepared there first if it
  /// is not yet (one round trip, once per connection); `None` when the pool
  /// sends statements unnamed, also when preparing it just showed that a
  /// pooler is in front. Another failure (a missing table, a lost
  /// connection) is the caller's answer.
  pub async fn get(
    &self,
    client: &Client,
    statements: &Statements,
    naming: &Naming,
    stmt: Stmt,
  ) -> Result<Option<Statement>, Error> {
    if naming.is_unnamed() {
      return Ok(None);
    }
    let prepared = self.slots[stmt as usize]
      .get_or_try_init(|| async {
        let name = next_name();
        client
          .prepare_typed_named(&name, statements.text(stmt), stmt.param_types())
          .await
      })
      .await;
    match prepared {
      Ok(statement) => Ok(Some(statement.clone())),
      Err(error) if statement_missing(&error) => {
        naming.switch_to_unnamed();
        Ok(None)
      }
      Err(error) => Err(error),
    }
  }
}

/// A name no other process's statement has: see the module docs.
fn next_name() -> String {
  static TAG: LazyLock<u64> = LazyLock::new(|| {
    // RandomState's keys come from the operating system's random source;
    // the pid and the time only make a collision between processes less
    // likely still.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let now = SystemTime::now()
      .duration_since(UNIX_EPOCH)
      .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.finish()
  });
  static COUNT: AtomicU64 = AtomicU64::new(0);
  format!(
    "stoma_{:016x}_{}",
    *TAG,
    COUNT.fetch_add(1, Ordering::Relaxed)
  )
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn names_are_distinct_carry_the_process_tag_and_fit_postgresqls_limit() {
    let (first, second) = (next_name(), next_name());
    assert_ne!(first, second);
    let tag = |name: &str| name.rsplit_once('_').unwrap().0.to_string();
    assert_eq!(tag(&first), tag(&second));
    assert!(first.starts_with("stoma_") && tag(&first).len() == "stoma_".len() + 16);
    // NAMEDATALEN - 1: longer names would be truncated, and could collide.
    assert!(format!("stoma_{:016x}_{}", u64::MAX, u64::MAX).len() <= 63);
  }
}
