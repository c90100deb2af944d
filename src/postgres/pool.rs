//! A small pool of PostgreSQL connections, connected lazily, with every wait
//! bounded by a timeout.
//!
//! tokio-postgres pipelines: a `Client` sends each query as soon as it is
//! issued and matches answers in order, so many calls can be in flight on one
//! connection and no call holds a connection exclusively. The pool is
//! therefore just up to `size` connections — no checkout, no queue. Each call
//! takes the connection with the fewest calls in flight, opening another one
//! only when every open one is busy: one caller at a time keeps reusing one
//! warm connection, while concurrent callers spread over several server
//! processes (PostgreSQL runs one connection's statements one after another).
//! Each connection prepares a statement the first time it runs it and reuses
//! it afterwards.
//!
//! Nothing connects until the first call, and a connection that broke (the
//! server restarted, the network dropped) is replaced by a later call, so a
//! store recovers by itself once the database is back.
//! A call waits at most `connectTimeout` for a connection and then at most
//! `statementTimeout` for its answer; either way it fails with an error that
//! says which store failed, where it tried to reach and why.

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::Result;
use tokio::sync::OnceCell;
use tokio::time::timeout;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::sql::{Statements, Stmt, Tables};
use crate::errors::{lock, store_error};

/// A statement's parameters, as tokio-postgres takes them.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// How the pool was asked to behave.
pub struct PoolOptions {
  pub config: Config,
  pub size: usize,
  pub connect_timeout: Duration,
  pub statement_timeout: Duration,
  /// Whether each commit waits for its WAL record to reach disk (see
  /// `synchronousCommit` in `lib/postgres.js`).
  pub synchronous_commit: bool,
}

/// One live connection, the statements prepared on it so far, and how many
/// calls are using it.
struct Conn {
  client: Client,
  prepared: [OnceCell<Statement>; Stmt::COUNT],
  in_flight: AtomicUsize,
}

/// A connection taken for one call; gives its place back when dropped,
/// including when the call is cancelled by a timeout.
struct Lease {
  slot: usize,
  conn: Arc<Conn>,
}

impl Lease {
  fn new(slot: usize, conn: Arc<Conn>) -> Self {
    conn.in_flight.fetch_add(1, Ordering::Relaxed);
    Lease { slot, conn }
  }
}

impl Drop for Lease {
  fn drop(&mut self) {
    self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
  }
}

/// One place in the pool: its connection if any, and a lock that lets one
/// caller at a time (re)connect it.
#[derive(Default)]
struct Slot {
  live: Mutex<Option<Arc<Conn>>>,
  connecting: tokio::sync::Mutex<()>,
}

impl Slot {
  /// The slot's connection, unless it has none or it broke.
  fn live(&self) -> Option<Arc<Conn>> {
    lock(&self.live).as_ref().filter(|c| !c.client.is_closed()).cloned()
  }

  /// Drops `conn` from the slot (if it is still the slot's connection), so
  /// the next call reconnects. Calls already running on it finish or fail.
  fn discard(&self, conn: &Arc<Conn>) {
    let mut live = lock(&self.live);
    if live.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
      *live = None;
    }
  }
}

pub struct Pool {
  options: PoolOptions,
  /// `host:port` of the server, for error messages (never the whole URL,
  /// which may hold a password).
  target: String,
  tables: Tables,
  statements: Statements,
  slots: Box<[Slot]>,
  closed: AtomicBool,
}

impl Pool {
  pub fn new(options: PoolOptions, tables: Tables) -> Self {
    let target = describe_target(&options.config);
    let slots = (0..options.size.max(1)).map(|_| Slot::default()).collect();
    Pool {
      statements: Statements::new(&tables),
      tables,
      target,
      slots,
      options,
      closed: AtomicBool::new(false),
    }
  }

  pub fn tables(&self) -> &Tables {
    &self.tables
  }

  pub fn is_closed(&self) -> bool {
    self.closed.load(Ordering::Acquire)
  }

  /// Stops serving calls and drops every connection. Calls already running
  /// keep their connection until they finish; each connection closes when
  /// its last call is done.
  pub fn close(&self) {
    self.closed.store(true, Ordering::Release);
    for slot in self.slots.iter() {
      lock(&slot.live).take();
    }
  }

  /// Runs prepared statement `stmt` and returns its rows.
  pub async fn query(&self, store: &str, stmt: Stmt, params: Params<'_>) -> Result<Vec<Row>> {
    let lease = self.connection(store).await?;
    let answer = timeout(self.options.statement_timeout, async {
      let statement = self.prepare(&lease.conn, stmt).await?;
      lease.conn.client.query(&statement, params).await
    })
    .await;
    self.settle(store, Some(stmt), &lease, answer, self.options.statement_timeout)
  }

  /// Runs prepared statement `stmt` and returns how many rows it changed.
  pub async fn execute(&self, store: &str, stmt: Stmt, params: Params<'_>) -> Result<u64> {
    let lease = self.connection(store).await?;
    let answer = timeout(self.options.statement_timeout, async {
      let statement = self.prepare(&lease.conn, stmt).await?;
      lease.conn.client.execute(&statement, params).await
    })
    .await;
    self.settle(store, Some(stmt), &lease, answer, self.options.statement_timeout)
  }

  /// Runs a script of SQL statements (no parameters) within `limit`.
  pub async fn batch(&self, store: &str, sql: &str, limit: Duration) -> Result<()> {
    let lease = self.connection(store).await?;
    let answer = timeout(limit, lease.conn.client.batch_execute(sql)).await;
    self.settle(store, None, &lease, answer, limit)
  }

  async fn prepare(&self, conn: &Conn, stmt: Stmt) -> std::result::Result<Statement, tokio_postgres::Error> {
    let text = self.statements.text(stmt);
    conn.prepared[stmt as usize]
      .get_or_try_init(|| conn.client.prepare(text))
      .await
      .cloned()
  }

  /// Turns a timed statement's outcome into the call's result, discarding
  /// the connection if it did not answer in time: a connection that stalls
  /// is more likely dead than slow, and its replacement is cheap.
  fn settle<T>(
    &self,
    store: &str,
    stmt: Option<Stmt>,
    lease: &Lease,
    answer: std::result::Result<std::result::Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    limit: Duration,
  ) -> Result<T> {
    match answer {
      Ok(Ok(value)) => Ok(value),
      Ok(Err(error)) => Err(self.query_error(store, stmt, &error)),
      Err(_) => {
        self.slots[lease.slot].discard(&lease.conn);
        let option = if stmt.is_some() { " (statementTimeoutMs)" } else { "" };
        Err(store_error(
          store,
          format!("PostgreSQL at {} did not answer within {} ms{option}", self.target, limit.as_millis()),
        ))
      }
    }
  }

  fn query_error(&self, store: &str, stmt: Option<Stmt>, error: &tokio_postgres::Error) -> napi::Error {
    if let (Some(stmt), Some(&SqlState::UNDEFINED_TABLE)) = (stmt, error.code()) {
      return store_error(
        store,
        format!(
          "table {} does not exist in the database at {}: call ensureSchema() on the adapter, \
           or run POSTGRES_SCHEMA_SQL (postgresSchemaSql(tablePrefix) for another prefix) first",
          stmt.table(&self.tables),
          self.target
        ),
      );
    }
    match error.as_db_error() {
      Some(db) => store_error(store, format!("PostgreSQL error: {} (SQLSTATE {})", db.message(), db.code().code())),
      None => store_error(store, format!("lost the connection to PostgreSQL at {}: {}", self.target, chain(error))),
    }
  }

  /// A connection for one call: an idle open one if any; else a new one if
  /// the pool has room; else the open one with the fewest calls in flight.
  async fn connection(&self, store: &str) -> Result<Lease> {
    if self.is_closed() {
      return Err(closed_error(store));
    }
    let mut least_busy: Option<(usize, Arc<Conn>, usize)> = None;
    let mut unopened = None; // no connection, and nobody connecting it
    let mut opening = None; // another caller is connecting it
    for (index, slot) in self.slots.iter().enumerate() {
      match slot.live() {
        Some(conn) => {
          let load = conn.in_flight.load(Ordering::Relaxed);
          if load == 0 {
            return Ok(Lease::new(index, conn));
          }
          if least_busy.as_ref().is_none_or(|(_, _, best)| load < *best) {
            least_busy = Some((index, conn, load));
          }
        }
        None if slot.connecting.try_lock().is_ok() => {
          unopened.get_or_insert(index);
        }
        None => {
          opening.get_or_insert(index);
        }
      }
    }
    let index = match (unopened, least_busy, opening) {
      (Some(index), _, _) => index,
      (None, Some((index, conn, _)), _) => return Ok(Lease::new(index, conn)),
      (None, None, Some(index)) => index,
      (None, None, None) => 0, // unreachable: the pool has at least one slot
    };
    // The whole wait — for another caller's attempt and for our own — is
    // bounded, so callers queued behind a hanging connect fail together.
    match timeout(self.options.connect_timeout, self.connect(store, index)).await {
      Ok(result) => result.map(|conn| Lease::new(index, conn)),
      Err(_) => Err(store_error(
        store,
        format!(
          "could not connect to PostgreSQL at {} within {} ms (connectTimeoutMs)",
          self.target,
          self.options.connect_timeout.as_millis()
        ),
      )),
    }
  }

  async fn connect(&self, store: &str, index: usize) -> Result<Arc<Conn>> {
    let slot = &self.slots[index];
    let _turn = slot.connecting.lock().await;
    if let Some(conn) = slot.live() {
      return Ok(conn); // connected by the caller we queued behind
    }
    let (client, connection) = self.options.config.connect(NoTls).await.map_err(|error| {
      store_error(store, format!("could not connect to PostgreSQL at {}: {}", self.target, chain(&error)))
    })?;
    // The connection task does the socket I/O; it ends when the socket
    // closes or when the last handle to the client is dropped.
    tokio::spawn(async move {
      let _ = connection.await;
    });
    // Only an explicit opt-out changes the server's durability setting.
    if !self.options.synchronous_commit {
      client
        .batch_execute("SET synchronous_commit = off")
        .await
        .map_err(|error| store_error(store, format!("could not set up the connection to {}: {}", self.target, chain(&error))))?;
    }
    let conn = Arc::new(Conn {
      client,
      prepared: std::array::from_fn(|_| OnceCell::new()),
      in_flight: AtomicUsize::new(0),
    });
    *lock(&slot.live) = Some(conn.clone());
    if self.is_closed() {
      // close() ran while we were connecting: do not keep what we made.
      lock(&slot.live).take();
      return Err(closed_error(store));
    }
    Ok(conn)
  }
}

fn closed_error(store: &str) -> napi::Error {
  store_error(store, "the store was closed (close() was called); create a new adapter to reconnect")
}

/// An error and its causes, joined: tokio-postgres puts the useful part
/// ("Connection refused", "password authentication failed") in the causes.
fn chain(error: &tokio_postgres::Error) -> String {
  if let Some(db) = error.as_db_error() {
    return format!("{} (SQLSTATE {})", db.message(), db.code().code());
  }
  let mut text = error.to_string();
  let mut cause = error.source();
  while let Some(inner) = cause {
    text.push_str(": ");
    text.push_str(&inner.to_string());
    cause = inner.source();
  }
  text
}

/// `host:port` of the first server the configuration names.
fn describe_target(config: &Config) -> String {
  let port = config.get_ports().first().copied().unwrap_or(5432);
  match (config.get_hosts().first(), config.get_hostaddrs().first()) {
    (Some(Host::Tcp(host)), _) => format!("{host}:{port}"),
    #[cfg(unix)]
    (Some(Host::Unix(path)), _) => format!("{}/.s.PGSQL.{port}", path.display()),
    (None, Some(addr)) => format!("{addr}:{port}"),
    (None, None) => format!("localhost:{port}"),
  }
}

#[cfg(test)]
mod tests {
  use std::str::FromStr;

  use super::*;

  #[test]
  fn errors_name_the_server_but_never_the_password() {
    let target = |url: &str| describe_target(&Config::from_str(url).unwrap());
    assert_eq!(target("postgres://user:secret@db.example:6543/app"), "db.example:6543");
    assert_eq!(target("postgres://127.0.0.1/app"), "127.0.0.1:5432");
    assert_eq!(target("host=/run/postgresql port=5433"), "/run/postgresql/.s.PGSQL.5433");
  }
}
