// The sliding-window reference (issue #18), written for clarity rather than
// speed; every backend's answers are checked against it. It mirrors
// src/sliding_window.rs: windows aligned to multiples of their length since
// the epoch; count = this window's hits (the call's own included) + the
// previous window's hits × the share of that window still inside the
// rolling window ending now, rounded down; resetAt = the current window's end.

/** The aligned window holding `now` (ms), for a window of `windowSeconds`. */
export function windowAt(now, windowSeconds) {
  const length = Math.max(1, Math.ceil(windowSeconds * 1000))
  const start = now - (((now % length) + length) % length)
  return { start, length, end: start + length }
}

/** A key → hits model answering `increment(key, windowSeconds, now)` as every store must. */
export class SlidingWindowModel {
  #keys = new Map()

  increment(key, windowSeconds, now) {
    const window = windowAt(now, windowSeconds)
    const stored = this.#keys.get(key)
    let previous = 0
    let current = 0
    if (stored?.start === window.start) {
      previous = stored.previous
      current = stored.current
    } else if (stored?.start === window.start - window.length) {
      previous = stored.current
    }
    current += 1
    this.#keys.set(key, { start: window.start, previous, current })
    const remaining = Math.min(window.length, Math.max(0, window.end - now))
    return { count: current + Math.floor((previous * remaining) / window.length), resetAt: window.end }
  }
}
