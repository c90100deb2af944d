//! Deleting expired rows, on demand and in the background.
//!
//! Expired rate-limit windows, idle sliding windows and cache entries are
//! never read again (every
//! statement checks the time) but stay in the tables until deleted. Stoma
//! leaves that to the user's cron; we also offer a task on tokio that does
//! it every `cleanupIntervalMs`, so it never takes time from the JS thread.
//! The task holds the pool weakly: it ends when the store is closed or
//! garbage-collected.

use std::sync::{Arc, Weak};
use std::time::Duration;

use napi::Result;
use tokio::task::AbortHandle;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::batch::{params, Call};
use super::pool::Pool;
use super::sql::Stmt;
use crate::clock::now_ms;

/// Which tables the background task cleans (those of the stores in use).
#[derive(Clone, Copy)]
pub struct Targets {
  pub rate_limits: bool,
  pub sliding_windows: bool,
  pub cache: bool,
}

/// Deletes the expired rows of one table; answers how many were deleted.
pub async fn run(pool: &Pool, store: &str, stmt: Stmt) -> Result<f64> {
  Ok(
    pool
      .execute(store, Call::unkeyed(stmt, params![now_ms()]))
      .await? as f64,
  )
}

/// Starts cleaning `targets` every `every`, first after one period.
pub fn start(pool: &Arc<Pool>, every: Duration, targets: Targets) -> AbortHandle {
  let pool: Weak<Pool> = Arc::downgrade(pool);
  let task = napi::bindgen_prelude::spawn(async move {
    let mut ticks = interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
      ticks.tick().await;
      let Some(pool) = pool.upgrade().filter(|p| !p.is_closed()) else {
        return;
      };
      // Failures (database down, tables missing) are retried next period;
      // the stores' own calls report them.
      if targets.rate_limits {
        let _ = run(&pool, "PostgresRateLimitStore", Stmt::CleanupRateLimits).await;
      }
      if targets.sliding_windows {
        let _ = run(&pool, "PostgresRateLimitStore", Stmt::CleanupSlidingWindows).await;
      }
      if targets.cache {
        let _ = run(&pool, "PostgresCacheStore", Stmt::CleanupCache).await;
      }
    }
  });
  task.abort_handle()
}
