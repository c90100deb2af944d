import { countCalls } from '../lib/stats.js'
import { checkBinding, checkKey, checkSeconds, rateLimitAlgorithm } from '../lib/validate.js'

// KV refuses an expiry less than 60 seconds away.
const KV_MIN_TTL_SECONDS = 60

/**
 * Fixed-window rate-limit counters in Workers KV, stored under the key
 * itself as JSON `{ count, resetAt }` (the layout Stoma's KV store uses, so
 * both can share a namespace). KV is eventually consistent and has no
 * atomic increment, so concurrent hits can undercount; use the Durable
 * Object store where exact counts matter. Unlike a naive expirationTtl of
 * the remaining window, entries expire no sooner than KV's 60-second
 * minimum; `resetAt` inside the value decides when a window is over.
 *
 * `{ algorithm: 'sliding-window' }` is refused (docs/sliding-window.md): a
 * sliding count is only as good as the counts it carries over, and KV can
 * neither increment atomically nor show a write to other locations for up
 * to 60 s, so it would undercount exactly the bursts it exists to stop.
 */
export class KVRateLimitStore {
  #kv

  constructor(kv, options) {
    this.#kv = checkBinding('KVRateLimitStore', kv, 'kv', 'KVNamespace', ['get', 'put'])
    if (rateLimitAlgorithm('KVRateLimitStore', options) !== 'fixed-window') {
      throw new RangeError(
        'KVRateLimitStore: rateLimit.algorithm "sliding-window" needs atomic, consistent counts, which Workers KV ' +
          'does not give (no atomic increment; writes reach other locations up to 60 s later); use the Durable ' +
          'Object store (rateLimitDo) for a sliding window',
      )
    }
    countCalls(this, ['increment'])
  }

  async increment(key, windowSeconds) {
    checkKey('KVRateLimitStore', key)
    checkSeconds('KVRateLimitStore', windowSeconds, 'windowSeconds')
    const now = Date.now()
    const stored = liveWindow(await this.#kv.get(key), now)
    const entry = stored
      ? { count: stored.count + 1, resetAt: stored.resetAt }
      : { count: 1, resetAt: now + windowSeconds * 1000 }
    const expirationTtl = Math.max(KV_MIN_TTL_SECONDS, Math.ceil((entry.resetAt - now) / 1000))
    try {
      await this.#kv.put(key, JSON.stringify(entry), { expirationTtl })
    } catch {
      // KV allows about one write per second per key. A client hitting us
      // faster than that makes writes fail; failing the increment would let
      // the policy fail open for exactly that client, so answer the count
      // we computed (the read above proved the binding works).
    }
    return entry
  }
}

/** The stored window if it is well-formed and not over yet; garbage counts as none. */
function liveWindow(text, now) {
  let stored
  try {
    stored = JSON.parse(text)
  } catch {
    return null
  }
  const valid =
    stored !== null &&
    typeof stored === 'object' &&
    Number.isSafeInteger(stored.count) &&
    typeof stored.resetAt === 'number' &&
    stored.resetAt > now
  return valid ? stored : null
}
