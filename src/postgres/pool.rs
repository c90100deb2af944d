//! A small pool of PostgreSQL connections, connected lazily, with every wait
//! bounded by a timeout.
//!
//! There is no checkout: each connection has a [`Lane`] (see `batch.rs`)
//! through which all its calls go — one alone when the connection is free,
//! several together (writes in one transaction, sharing one WAL flush) when
//! calls queue up behind a busy one.
//!
//! Which connection a call uses: a free open one if there is one, so one
//! caller at a time keeps reusing a warm connection and runs alone. When
//! none is free:
//! - a write of one row queues on the connection its key hashes to
//!   (`hash(key) % size`), so one key's queued writes all go in groups on
//!   one connection: the pool's own groups do not wait on each other's row
//!   locks, and a hot key cannot stall groups on other connections (why
//!   groups cannot deadlock is in `batch.rs`);
//! - anything else (reads, cleanups, the schema) opens another connection
//!   while the pool has room, else joins the one with the fewest calls, so
//!   concurrent readers spread over several server processes.
//!
//! A connection's calls go by the statements it prepared, until the pool
//! finds a pooler in front and sends them unnamed (see `prepared.rs`); no
//! session setting is ever made (see `sql.rs`), so the pool works through a
//! pooler in transaction mode too. Nothing
//! connects until the first call, and a connection that broke (the server
//! restarted, the network dropped) is replaced by a later call, so a store
//! recovers by itself once the database is back. A call waits at most
//! `connectTimeout` for a connection and then at most `statementTimeout` for
//! its answer, queueing included; either way it fails with an error that says
//! which store failed, where it tried to reach and why.

use std::error::Error as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::Result;
use tokio::time::timeout;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::TlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Row, Socket};

use super::batch::{self, Answer, Call, Lane};
use super::prepared::Naming;
use super::sql::{Statements, Stmt, Tables};
use super::tls::Tls;
use crate::errors::{lock, store_error, unavailable_error};

/// How the pool was asked to behave.
pub struct PoolOptions {
  pub config: Config,
  /// How to make TLS sessions, unless the config's `sslmode` is `disable`.
  pub tls: Option<Tls>,
  pub size: usize,
  pub connect_timeout: Duration,
  pub statement_timeout: Duration,
  /// Whether each commit waits for its WAL record to reach disk (see
  /// `synchronousCommit` in `lib/postgres.js`).
  pub synchronous_commit: bool,
}

/// One live connection: the lane its calls go through, and how many calls
/// are using it.
struct Conn {
  lane: Arc<Lane>,
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
    lock(&self.live)
      .as_ref()
      .filter(|c| !c.lane.is_closed())
      .cloned()
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
  statements: Arc<Statements>,
  /// Named statements, or unnamed once a pooler showed itself.
  naming: Arc<Naming>,
  slots: Box<[Slot]>,
  closed: AtomicBool,
}

impl Pool {
  pub fn new(options: PoolOptions, tables: Tables) -> Self {
    let target = describe_target(&options.config);
    let slots = (0..options.size.max(1)).map(|_| Slot::default()).collect();
    Pool {
      statements: Arc::new(Statements::new(&tables, options.synchronous_commit)),
      naming: Arc::default(),
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

  /// For `stats()`: the connections the pool may open, those open now, and
  /// whether a pooler in transaction mode was found (statements unnamed).
  pub fn usage(&self) -> (usize, usize, bool) {
    let open = self
      .slots
      .iter()
      .filter(|slot| slot.live().is_some())
      .count();
    (self.slots.len(), open, self.naming.is_unnamed())
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

  /// Runs `call` (a query) and returns its rows.
  pub async fn query(&self, store: &str, call: Call) -> Result<Vec<Row>> {
    match self
      .run(store, call, self.options.statement_timeout)
      .await?
    {
      Answer::Rows(rows) => Ok(rows),
      Answer::Count(_) => Err(store_error(
        store,
        "PostgreSQL returned no rows for a query",
      )),
    }
  }

  /// Runs `call` and returns how many rows it changed.
  pub async fn execute(&self, store: &str, call: Call) -> Result<u64> {
    match self
      .run(store, call, self.options.statement_timeout)
      .await?
    {
      Answer::Count(count) => Ok(count),
      Answer::Rows(rows) => Ok(rows.len() as u64),
    }
  }

  /// Runs a script of SQL statements (no parameters) within `limit`.
  pub async fn batch(&self, store: &str, sql: &str, limit: Duration) -> Result<()> {
    self
      .run(store, Call::Script(sql.to_string()), limit)
      .await
      .map(|_| ())
  }

  /// Runs `call` on its connection, waiting at most `limit` for the answer,
  /// time in the lane's queue included. A connection that does not answer
  /// in time is discarded: one that stalls is more likely dead than slow,
  /// and its replacement is cheap.
  async fn run(&self, store: &str, call: Call, limit: Duration) -> Result<Answer> {
    let stmt = call.stmt();
    let home = call.row().map(|(_, key)| self.home(key));
    let lease = self.connection(store, home).await?;
    match timeout(limit, batch::run(&lease.conn.lane, call, limit)).await {
      Ok(Some(Ok(answer))) => Ok(answer),
      Ok(Some(Err(error))) => Err(self.query_error(store, stmt, &error)),
      Ok(None) | Err(_) => {
        self.slots[lease.slot].discard(&lease.conn);
        let option = if stmt.is_some() {
          " (statementTimeoutMs)"
        } else {
          ""
        };
        Err(unavailable_error(
          store,
          format!(
            "PostgreSQL at {} did not answer within {} ms{option}",
            self.target,
            limit.as_millis()
          ),
        ))
      }
    }
  }

  /// The slot whose connection runs every write of `key`.
  fn home(&self, key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % self.slots.len() as u64) as usize
  }

  fn query_error(
    &self,
    store: &str,
    stmt: Option<Stmt>,
    error: &tokio_postgres::Error,
  ) -> napi::Error {
    if let (Some(stmt), Some(&SqlState::UNDEFINED_TABLE)) = (stmt, error.code()) {
      let remedy = match stmt.in_stomas_schema() {
        true => "call ensureSchema() on the adapter, \
                 or run POSTGRES_SCHEMA_SQL (postgresSchemaSql(tablePrefix) for another prefix) first",
        false => "call ensureSchema() on the adapter first",
      };
      return store_error(
        store,
        format!(
          "table {} does not exist in the database at {}: {remedy}",
          stmt.table(&self.tables),
          self.target
        ),
      );
    }
    match error.as_db_error() {
      Some(db) => {
        let message = format!(
          "PostgreSQL error: {} (SQLSTATE {})",
          db.message(),
          db.code().code()
        );
        if unavailable(db.code()) {
          unavailable_error(store, message)
        } else {
          store_error(store, message)
        }
      }
      None if lost(error) => unavailable_error(
        store,
        format!(
          "lost the connection to PostgreSQL at {}: {}",
          self.target,
          chain(error)
        ),
      ),
      None => store_error(
        store,
        format!("PostgreSQL at {}: {}", self.target, chain(error)),
      ),
    }
  }

  /// A connection for one call: an idle open one if any; else, for a write
  /// of one row, the one in slot `home`; else a new one if the pool has
  /// room; else the open one with the fewest calls in flight.
  async fn connection(&self, store: &str, home: Option<usize>) -> Result<Lease> {
    if self.is_closed() {
      return Err(closed_error(store));
    }
    let index = match home {
      Some(index) => match self
        .idle()
        .or_else(|| self.slots[index].live().map(|conn| (index, conn)))
      {
        Some((index, conn)) => return Ok(Lease::new(index, conn)),
        None => index,
      },
      None => match self.pick() {
        Ok(lease) => return Ok(lease),
        Err(index) => index,
      },
    };
    // The whole wait — for another caller's attempt and for our own — is
    // bounded, so callers queued behind a hanging connect fail together.
    match timeout(self.options.connect_timeout, self.connect(store, index)).await {
      Ok(result) => result.map(|conn| Lease::new(index, conn)),
      Err(_) => Err(unavailable_error(
        store,
        format!(
          "could not connect to PostgreSQL at {} within {} ms (connectTimeoutMs)",
          self.target,
          self.options.connect_timeout.as_millis()
        ),
      )),
    }
  }

  /// An open connection with no call in flight, if any.
  fn idle(&self) -> Option<(usize, Arc<Conn>)> {
    self.slots.iter().enumerate().find_map(|(index, slot)| {
      slot
        .live()
        .filter(|conn| conn.in_flight.load(Ordering::Relaxed) == 0)
        .map(|conn| (index, conn))
    })
  }

  /// A connection for a call that may use any: a lease on an open one, or
  /// the slot to connect.
  fn pick(&self) -> std::result::Result<Lease, usize> {
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
    match (unopened, least_busy, opening) {
      (Some(index), _, _) => Err(index),
      (None, Some((index, conn, _)), _) => Ok(Lease::new(index, conn)),
      (None, None, Some(index)) => Err(index),
      (None, None, None) => Err(0), // unreachable: the pool has at least one slot
    }
  }

  async fn connect(&self, store: &str, index: usize) -> Result<Arc<Conn>> {
    let slot = &self.slots[index];
    let _turn = slot.connecting.lock().await;
    if let Some(conn) = slot.live() {
      return Ok(conn); // connected by the caller we queued behind
    }
    let connected = match &self.options.tls {
      None => self.options.config.connect(NoTls).await.map(run_connection),
      Some(tls) => self
        .options
        .config
        .connect(tls.clone())
        .await
        .map(run_connection),
    };
    let client = connected.map_err(|error| {
      unavailable_error(
        store,
        format!(
          "could not connect to PostgreSQL at {}: {}",
          self.target,
          chain(&error)
        ),
      )
    })?;
    let conn = Arc::new(Conn {
      lane: Arc::new(Lane::new(
        client,
        self.statements.clone(),
        self.naming.clone(),
      )),
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

/// Errors the server sends when it cannot serve the call now, rather than
/// refusing the call itself: a connection exception (class 08), the server
/// shutting down or starting up (57P01–57P03), or the statement cancelled
/// by our statement timeout (57014).
fn unavailable(code: &SqlState) -> bool {
  code.code().starts_with("08")
    || [
      SqlState::ADMIN_SHUTDOWN,
      SqlState::CRASH_SHUTDOWN,
      SqlState::CANNOT_CONNECT_NOW,
      SqlState::QUERY_CANCELED,
    ]
    .contains(code)
}

/// The connection is gone (closed, or failed reading or writing).
fn lost(error: &tokio_postgres::Error) -> bool {
  use std::error::Error as _;
  error.is_closed()
    || error
      .source()
      .is_some_and(|source| source.is::<std::io::Error>())
}

fn closed_error(store: &str) -> napi::Error {
  store_error(
    store,
    "the store was closed (close() was called); create a new adapter to reconnect",
  )
}

/// An error and its causes, joined: tokio-postgres puts the useful part
/// ("Connection refused", "password authentication failed") in the causes.
pub fn chain(error: &tokio_postgres::Error) -> String {
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

/// Spawns the task that does a new connection's socket I/O (it ends when the
/// socket closes or the last handle to the client is dropped).
fn run_connection<T: TlsStream + Unpin + Send + 'static>(
  (client, connection): (Client, Connection<Socket, T>),
) -> Client {
  tokio::spawn(async move {
    let _ = connection.await;
  });
  client
}

#[cfg(test)]
mod tests {
  use std::str::FromStr;

  use super::*;

  #[test]
  fn errors_name_the_server_but_never_the_password() {
    let target = |url: &str| describe_target(&Config::from_str(url).unwrap());
    assert_eq!(
      target("postgres://user:secret@db.example:6543/app"),
      "db.example:6543"
    );
    assert_eq!(target("postgres://127.0.0.1/app"), "127.0.0.1:5432");
    assert_eq!(
      target("host=/run/postgresql port=5433"),
      "/run/postgresql/.s.PGSQL.5433"
    );
  }
}
