//! The Redis I/O thread.

use std::sync::LazyLock;

/// The thread all Redis I/O of the process waits on: one current-thread
/// tokio runtime for connection attempts, watchers and their timers. The
/// thread never ends; it holds nothing that keeps Node running.
pub static IO: LazyLock<tokio::runtime::Handle> = LazyLock::new(|| {
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
