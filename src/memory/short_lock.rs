//! The lock around the memory stores' rate-limit shards and circuit table.
//!
//! Behind it every section is one table lookup or update of a few tens of
//! nanoseconds, run once per store call. With std's `Mutex` the lock and
//! unlock were ~13 of a circuit call's ~30 ns through `bun:ffi`: its unlock
//! is an atomic swap (it must learn whether a thread sleeps on the lock),
//! which waits for the CPU's store buffer to drain. A spin lock unlocks with
//! a plain release store. A thread that finds it taken calls `sched_yield`
//! rather than spinning hot, which lets a holder preempted on the same CPU
//! run; the sections that can be long (`clear`, a table growing) are rare.
//!
//! The price: a waiter never sleeps. Where many worker threads share one
//! named state on few CPUs (or under a cgroup CPU quota), waiting burns
//! CPU that std's `Mutex`, which parks its waiters, would leave idle.
//!
//! A panic inside a section (none is expected: they do table updates and
//! arithmetic) releases the lock on unwind and the stores go on, as they did
//! with std's `Mutex`, whose poisoning `errors::lock` ignored.

pub type ShortLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;
pub type ShortLockGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T, spin::relax::Yield>;

/// For the tests that count under contention: more threads than cores
/// (twice as many, at least 8), so holders are preempted and waiters yield.
#[cfg(test)]
pub(super) fn contending_threads() -> usize {
  let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
  (cores * 2).max(8)
}
