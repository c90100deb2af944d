//! PostgreSQL stores over tokio-postgres, on the same tables as Stoma's
//! `postgresAdapter`, so gateways using either can share one database.
//!
//! One [`NativePostgres`] serves the three stores of an adapter: it owns a
//! small pool of pipelined connections ([`pool`]) and knows the tables a
//! prefix names and the statements run on them ([`sql`]). Every method
//! returns a Promise settled from tokio, so no database wait ever blocks the
//! JS thread; the JS layer (`lib/postgres.js`) validates arguments, turns
//! cache parts into `Response`s and builds the adapter.
//!
//! The url is read by [`params`]; TLS (the url's `sslmode`, or the `tls`
//! option) goes through rustls with the settings of [`crate::tls`] (see
//! [`tls`]).
//!
//! Times are the caller's wall clock in epoch milliseconds, as in Stoma's
//! adapter, so a fleet mixing both agrees on every window and expiry.

mod batch;
mod cleanup;
mod params;
mod pool;
mod prepared;
mod sql;
mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::{PromiseRaw, Uint8Array};
use napi::{Env, Result};
use napi_derive::napi;
use tokio::task::AbortHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::Row;

use crate::fastcall::CopiedBuffer;

use crate::clock::{duration_ms, now_ms};
use crate::envelope::StoredResponse;
use crate::errors::{guard, guard_async, lock, option_error, store_error};
use crate::sliding_window::Window;
use batch::{params, Call};
use pool::{Pool, PoolOptions};
use sql::{Stmt, Tables};

const ADAPTER: &str = "postgresAdapter";
const RATE_LIMIT: &str = "PostgresRateLimitStore";
const CIRCUIT: &str = "PostgresCircuitBreakerStore";
const CACHE: &str = "PostgresCacheStore";

/// `ensureSchema()` may create tables and indexes, which can take longer than
/// a store call; it gets at least this long.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `ping()` waits: a probe of a server that may be down, asked
/// again soon if this one fails.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Serializes concurrent `ensureSchema()` calls across processes: two
/// `CREATE TABLE IF NOT EXISTS` racing on one name can both try to create it.
const SCHEMA_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('stoma-native schema'));";

/// Options from `lib/postgres.js`, already validated there.
#[napi(object)]
pub struct NativePostgresOptions {
  pub url: String,
  /// TLS asked for by the `tls` option (the url's `sslmode` wins).
  pub use_tls: bool,
  /// PEM certificates to trust instead of Mozilla's roots.
  pub tls_ca: Option<Uint8Array>,
  /// A PEM client certificate chain and its key, for servers that ask for
  /// one (mutual TLS).
  pub tls_cert: Option<Uint8Array>,
  pub tls_key: Option<Uint8Array>,
  /// The name the server's certificate must carry, when not its host's.
  pub tls_servername: Option<String>,
  pub table_prefix: String,
  pub pool_size: u32,
  pub connect_timeout_ms: f64,
  pub statement_timeout_ms: f64,
  /// Whether commits wait for the disk (PostgreSQL's `synchronous_commit`).
  pub synchronous_commit: bool,
  /// Delete expired rows this often, on tokio; absent means never.
  pub cleanup_interval_ms: Option<f64>,
  pub cleanup_rate_limits: bool,
  pub cleanup_sliding_windows: bool,
  pub cleanup_cache: bool,
}

#[napi(object)]
pub struct PgRateLimitHit {
  pub count: f64,
  pub reset_at: f64,
}

/// Stoma's `CircuitBreakerSnapshot`.
#[napi(object)]
pub struct PgCircuitSnapshot {
  #[napi(ts_type = "'closed' | 'open' | 'half-open'")]
  pub state: String,
  pub failure_count: f64,
  pub success_count: f64,
  pub last_failure_time: f64,
  pub last_state_change: f64,
}

/// A cache hit: headers joined as `name\0value\0…` (see `lib/response.js`).
#[napi(object, object_from_js = false)]
pub struct PgCachedResponse {
  pub status: u32,
  pub headers: String,
  #[napi(ts_type = "Buffer")]
  pub body: CopiedBuffer,
}

/// The native half of the PostgreSQL stores (see `lib/postgres.js`).
#[napi]
pub struct NativePostgres {
  pool: Arc<Pool>,
  cleanup: Mutex<Option<AbortHandle>>,
}

#[napi]
impl NativePostgres {
  /// Checks the options and returns at once: nothing connects until the
  /// first call.
  #[napi(constructor)]
  pub fn new(options: NativePostgresOptions) -> Result<Self> {
    guard(ADAPTER, || {
      if let Some(reason) = sql::check_prefix(&options.table_prefix) {
        return Err(store_error(ADAPTER, reason));
      }
      let connect_timeout = millis(options.connect_timeout_ms);
      let config = params::parse_url(&options.url, connect_timeout, options.use_tls)
        .map_err(|reason| option_error(ADAPTER, reason))?;
      let tls = match config.get_ssl_mode() {
        SslMode::Disable => None,
        _ => Some(
          tls::Tls::new(tls::Settings {
            trust: crate::tls::Trust {
              ca: options.tls_ca.as_deref(),
              cert: options.tls_cert.as_deref(),
              key: options.tls_key.as_deref(),
            },
            servername: options.tls_servername,
          })
          .map_err(|reason| option_error(ADAPTER, reason))?,
        ),
      };
      let pool = Arc::new(Pool::new(
        PoolOptions {
          config,
          tls,
          size: options.pool_size.max(1) as usize,
          connect_timeout,
          statement_timeout: millis(options.statement_timeout_ms),
          synchronous_commit: options.synchronous_commit,
        },
        Tables::new(&options.table_prefix),
      ));
      let cleanup = match options.cleanup_interval_ms {
        Some(every) => Some(cleanup::start(
          &pool,
          millis(every),
          cleanup::Targets {
            rate_limits: options.cleanup_rate_limits,
            sliding_windows: options.cleanup_sliding_windows,
            cache: options.cleanup_cache,
          },
        )),
        None => None,
      };
      Ok(NativePostgres {
        pool,
        cleanup: Mutex::new(cleanup),
      })
    })
  }

  /// Creates the tables (Stoma's three and our sliding windows) and their
  /// indexes if they do not exist.
  #[napi]
  pub async fn ensure_schema(&self) -> Result<()> {
    let pool = self.pool.clone();
    guard_async(ADAPTER, async move {
      let prefix = &pool.tables().prefix;
      let script = format!(
        "{SCHEMA_LOCK}{}{}",
        sql::schema_sql(prefix),
        sql::sliding_schema_sql(prefix)
      );
      pool.batch(ADAPTER, &script, SCHEMA_TIMEOUT).await
    })
    .await
  }

  /// Resolves once PostgreSQL answers (`SELECT 1`): whether the server is
  /// back, for `whenUnavailable: 'memory'`.
  #[napi]
  pub async fn ping(&self) -> Result<()> {
    let pool = self.pool.clone();
    guard_async(ADAPTER, async move {
      pool.batch(ADAPTER, "SELECT 1", PING_TIMEOUT).await
    })
    .await
  }

  /// Counts one hit on `key` in a fixed window of `windowMs`.
  #[napi]
  pub async fn increment(&self, key: String, window_ms: f64) -> Result<PgRateLimitHit> {
    let pool = self.pool.clone();
    guard_async(RATE_LIMIT, async move {
      let now = now_ms();
      let reset_at = now.saturating_add(duration_ms(window_ms));
      let rows = pool
        .query(
          RATE_LIMIT,
          Call::keyed(Stmt::Increment, key, params![now, reset_at]),
        )
        .await?;
      let row = only_row(RATE_LIMIT, &rows)?;
      Ok(PgRateLimitHit {
        count: column::<i32>(RATE_LIMIT, row, 0)? as f64,
        reset_at: column::<i64>(RATE_LIMIT, row, 1)? as f64,
      })
    })
    .await
  }

  /// Counts one hit on `key` in a sliding window of `windowMs` (see
  /// [`crate::sliding_window`]), at our clock's now.
  #[napi]
  pub async fn sliding_increment(&self, key: String, window_ms: f64) -> Result<PgRateLimitHit> {
    let pool = self.pool.clone();
    guard_async(RATE_LIMIT, async move {
      let now = now_ms();
      let window = Window::at(now, duration_ms(window_ms));
      let rows = pool
        .query(
          RATE_LIMIT,
          Call::keyed(
            Stmt::SlidingIncrement,
            key,
            params![window.start, window.length],
          ),
        )
        .await?;
      let row = only_row(RATE_LIMIT, &rows)?;
      let hits = column::<i64>(RATE_LIMIT, row, 0)?;
      let previous = column::<i64>(RATE_LIMIT, row, 1)?;
      Ok(PgRateLimitHit {
        count: window.count(now, previous, hits) as f64,
        reset_at: window.end() as f64,
      })
    })
    .await
  }

  /// Deletes sliding-window rows idle for two windows; answers how many.
  #[napi]
  pub async fn cleanup_sliding_windows(&self) -> Result<f64> {
    let pool = self.pool.clone();
    guard_async(RATE_LIMIT, async move {
      cleanup::run(&pool, RATE_LIMIT, Stmt::CleanupSlidingWindows).await
    })
    .await
  }

  /// Deletes expired rate-limit rows; answers how many.
  #[napi]
  pub async fn cleanup_rate_limits(&self) -> Result<f64> {
    let pool = self.pool.clone();
    guard_async(RATE_LIMIT, async move {
      cleanup::run(&pool, RATE_LIMIT, Stmt::CleanupRateLimits).await
    })
    .await
  }

  #[napi]
  pub async fn circuit_get(&self, key: String) -> Result<PgCircuitSnapshot> {
    let pool = self.pool.clone();
    guard_async(CIRCUIT, async move {
      let rows = pool
        .query(CIRCUIT, Call::keyed(Stmt::CircuitGet, key, params![]))
        .await?;
      match rows.first() {
        Some(row) => snapshot(row),
        None => Ok(PgCircuitSnapshot {
          state: "closed".to_string(),
          failure_count: 0.0,
          success_count: 0.0,
          last_failure_time: 0.0,
          last_state_change: now_ms() as f64,
        }),
      }
    })
    .await
  }

  #[napi]
  pub async fn circuit_record_success(&self, key: String) -> Result<PgCircuitSnapshot> {
    let pool = self.pool.clone();
    guard_async(CIRCUIT, async move {
      let rows = pool
        .query(
          CIRCUIT,
          Call::keyed(Stmt::CircuitSuccess, key, params![now_ms()]),
        )
        .await?;
      snapshot(only_row(CIRCUIT, &rows)?)
    })
    .await
  }

  #[napi]
  pub async fn circuit_record_failure(&self, key: String) -> Result<PgCircuitSnapshot> {
    let pool = self.pool.clone();
    guard_async(CIRCUIT, async move {
      let rows = pool
        .query(
          CIRCUIT,
          Call::keyed(Stmt::CircuitFailure, key, params![now_ms()]),
        )
        .await?;
      snapshot(only_row(CIRCUIT, &rows)?)
    })
    .await
  }

  /// `to` is `"closed"`, `"open"` or `"half-open"` (checked in JS, and here).
  #[napi]
  pub async fn circuit_transition(&self, key: String, to: String) -> Result<PgCircuitSnapshot> {
    let pool = self.pool.clone();
    guard_async(CIRCUIT, async move {
      if !matches!(to.as_str(), "closed" | "open" | "half-open") {
        return Err(store_error(
          CIRCUIT,
          format!("unknown circuit state {to:?}"),
        ));
      }
      let rows = pool
        .query(
          CIRCUIT,
          Call::keyed(Stmt::CircuitTransition, key, params![to, now_ms()]),
        )
        .await?;
      snapshot(only_row(CIRCUIT, &rows)?)
    })
    .await
  }

  #[napi]
  pub async fn circuit_reset(&self, key: String) -> Result<()> {
    let pool = self.pool.clone();
    guard_async(CIRCUIT, async move {
      pool
        .execute(CIRCUIT, Call::keyed(Stmt::CircuitReset, key, params![]))
        .await?;
      Ok(())
    })
    .await
  }

  /// The live entry under `key`, or `null` if there is none, it expired, or
  /// its row is not a well-formed response (garbage reads as a miss).
  #[napi]
  pub async fn cache_get(&self, key: String) -> Result<Option<PgCachedResponse>> {
    let pool = self.pool.clone();
    guard_async(CACHE, async move {
      let rows = pool
        .query(CACHE, Call::keyed(Stmt::CacheGet, key, params![now_ms()]))
        .await?;
      let Some(row) = rows.first() else {
        return Ok(None);
      };
      let (Ok(status), Ok(headers), Ok(body)) = (
        row.try_get::<_, i32>(0),
        row.try_get::<_, &str>(1),
        row.try_get::<_, &str>(2),
      ) else {
        return Ok(None);
      };
      let Ok(headers) = serde_json::from_str(headers) else {
        return Ok(None);
      };
      Ok(
        StoredResponse::from_columns(status as i64, &headers, body).map(|response| {
          PgCachedResponse {
            status: response.status as u32,
            headers: response.joined_headers(),
            body: CopiedBuffer(response.body),
          }
        }),
      )
    })
    .await
  }

  /// Stores a response until `now + ttlMs`. `headers` is
  /// `name\0value\0…`; the body is written as base64 text, as Stoma does.
  /// The body is copied here, on the JS thread, so the encoding can happen
  /// on tokio without holding on to JS memory.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn cache_put<'env>(
    &self,
    env: &'env Env,
    key: String,
    status: u32,
    headers: String,
    body: &[u8],
    ttl_ms: f64,
  ) -> Result<PromiseRaw<'env, ()>> {
    let response = guard(CACHE, || {
      let status = u16::try_from(status).map_err(|_| store_error(CACHE, "status out of range"))?;
      Ok(StoredResponse::from_joined(status, &headers, body.to_vec()))
    })?;
    let pool = self.pool.clone();
    env.spawn_future(guard_async(CACHE, async move {
      let status = i32::from(response.status);
      let headers_json = response.headers_json().to_string();
      let body_base64 = response.body_base64();
      let expires_at = now_ms().saturating_add(duration_ms(ttl_ms));
      let put = Call::keyed(
        Stmt::CachePut,
        key,
        params![status, headers_json, body_base64, expires_at],
      );
      pool.execute(CACHE, put).await?;
      Ok(())
    }))
  }

  /// Removes the entry under `key`; answers whether there was one.
  #[napi]
  pub async fn cache_delete(&self, key: String) -> Result<bool> {
    let pool = self.pool.clone();
    guard_async(CACHE, async move {
      Ok(
        pool
          .execute(CACHE, Call::keyed(Stmt::CacheDelete, key, params![]))
          .await?
          > 0,
      )
    })
    .await
  }

  /// Deletes expired cache rows; answers how many.
  #[napi]
  pub async fn cleanup_cache(&self) -> Result<f64> {
    let pool = self.pool.clone();
    guard_async(CACHE, async move {
      cleanup::run(&pool, CACHE, Stmt::CleanupCache).await
    })
    .await
  }

  /// Stops background cleanup and drops every connection; later calls
  /// reject. Idempotent.
  #[napi]
  pub fn close(&self) {
    if let Some(task) = lock(&self.cleanup).take() {
      task.abort();
    }
    self.pool.close();
  }

  /// `[poolSize, open connections, 1 if behind a pooler in transaction
  /// mode (statements unnamed) else 0]`, for `stats()`.
  #[napi(getter, ts_return_type = "[number, number, number]")]
  pub fn pool_usage(&self) -> Vec<f64> {
    let (size, open, pooled) = self.pool.usage();
    vec![size as f64, open as f64, if pooled { 1.0 } else { 0.0 }]
  }

  #[napi(getter)]
  pub fn closed(&self) -> bool {
    self.pool.is_closed()
  }
}

impl Drop for NativePostgres {
  /// A store garbage-collected without `close()` still stops its cleanup
  /// task; its connections close once their last call is done.
  fn drop(&mut self) {
    self.close();
  }
}

/// `POSTGRES_SCHEMA_SQL` for another table prefix.
#[napi]
pub fn postgres_schema_sql(table_prefix: String) -> Result<String> {
  match sql::check_prefix(&table_prefix) {
    None => Ok(sql::schema_sql(&table_prefix)),
    Some(reason) => Err(store_error("postgresSchemaSql", reason)),
  }
}

/// A JS duration in milliseconds as a `Duration` of at least 1 ms.
fn millis(ms: f64) -> Duration {
  Duration::from_millis(duration_ms(ms).max(1) as u64)
}

fn only_row<'a>(store: &str, rows: &'a [Row]) -> Result<&'a Row> {
  rows
    .first()
    .ok_or_else(|| store_error(store, "PostgreSQL returned no row"))
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
  store: &str,
  row: &'a Row,
  index: usize,
) -> Result<T> {
  row.try_get(index).map_err(|error| {
    store_error(
      store,
      format!("unexpected column {index} in the table: {error}"),
    )
  })
}

/// A circuit row as a snapshot. A state other than the three known ones
/// reads as `"closed"`, like an unknown key.
fn snapshot(row: &Row) -> Result<PgCircuitSnapshot> {
  let state: &str = column(CIRCUIT, row, 0)?;
  let state = match state {
    "open" | "half-open" => state,
    _ => "closed",
  };
  Ok(PgCircuitSnapshot {
    state: state.to_string(),
    failure_count: column::<i32>(CIRCUIT, row, 1)? as f64,
    success_count: column::<i32>(CIRCUIT, row, 2)? as f64,
    last_failure_time: column::<i64>(CIRCUIT, row, 3)? as f64,
    last_state_change: column::<i64>(CIRCUIT, row, 4)? as f64,
  })
}
