//! The lock around the memory stores' rate-limit shards and circuit table.
//!
//! Behind it every section is one table lookup or update of a few tens of
//! nanoseconds, run once per store call. With std's `Mutex` the lock and
//! unlock were ~13 of a circuit call's ~30 ns through `bun:ffi`: its unlock
//! is an atomic swap (it must learn whether a thread sleeps on the lock),
//! which waits for the CPU's store buffer to drain. A spin lock unlocks with
//! a plain release store. A thread that finds it taken yields its time slice
//! instead of spinning, so a holder that was preempted gets the CPU back;
//! the sections that can be long (`clear`, a table growing) are rare.
//!
//! A panic inside a section (none is expected: they do table updates and
//! arithmetic) releases the lock on unwind and the stores go on, as they did
//! with std's `Mutex`, whose poisoning `errors::lock` ignored.

pub type ShortLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;
pub type ShortLockGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T, spin::relax::Yield>;
