// Durable Object backed stores. Each key gets its own object
// (`idFromName(key)`); an object runs one request at a time, which is what
// makes its read–update–write steps atomic across every isolate and data
// center. The stores talk to their objects over plain fetch, which needs no
// `cloudflare:workers` import, so this file loads anywhere.

import { CIRCUIT_METHODS, CIRCUIT_OPERATIONS } from '../lib/circuit.js'
import { countCalls } from '../lib/stats.js'
import { checkBinding, checkCircuitState, checkKey, checkSeconds, rateLimitAlgorithm } from '../lib/validate.js'
import { applyCircuitOperation, freshCircuit } from './circuit.js'

const RATE_LIMITER_ORIGIN = 'https://rate-limiter.internal'
const CIRCUIT_BREAKER_ORIGIN = 'https://circuit-breaker.internal'

// A circuit nobody touched for a day is forgotten, like Stoma's Redis store.
const CIRCUIT_IDLE_MS = 24 * 60 * 60 * 1000

function checkNamespace(owner, namespace) {
  return checkBinding(owner, namespace, 'namespace', 'DurableObjectNamespace', ['idFromName', 'get'])
}

/** Sends `url` to the object named `name` and answers its JSON reply. */
async function callObject(owner, namespace, name, url) {
  const stub = namespace.get(namespace.idFromName(name))
  const response = await stub.fetch(url, { method: 'POST' })
  if (!response.ok) {
    throw new Error(`${owner}: the Durable Object answered ${response.status}: ${await response.text()}`)
  }
  return response.status === 204 ? undefined : response.json()
}

/**
 * Durable Object holding one key's rate-limit counters. Fixed window (the
 * default): `{ count, resetAt }` under "counter", answering
 * `/increment?window=<seconds>` with the new `{ count, resetAt }`, the same
 * protocol and storage as Stoma's RateLimiterDO, so either class can serve
 * a fixed-window store. Sliding window (`/increment?window=<s>&algorithm=sliding-window`):
 * `{ start, current, previous, expiresAt }` under "sliding" (see
 * slidingHit), answered with `algorithm` echoed, which Stoma's class does
 * not do. An alarm deletes each entry once it counts for nothing.
 * Export it from your Worker and bind it (see the README).
 */
export class RateLimiterDO {
  #state

  constructor(state) {
    this.#state = state
  }

  async fetch(request) {
    const params = new URL(request.url).searchParams
    const windowSeconds = Number(params.get('window'))
    if (!(windowSeconds >= 0) || windowSeconds === Infinity) {
      return new Response('window must be a finite number of seconds >= 0', { status: 400 })
    }
    const sliding = params.get('algorithm') === SLIDING
    const storage = this.#state.storage
    // No other request enters this object until the update is stored.
    return this.#state.blockConcurrencyWhile(async () => {
      const now = Date.now()
      if (sliding) {
        const { entry, hit } = slidingHit(await storage.get('sliding'), now, windowSeconds)
        await storage.put('sliding', entry)
        await this.#alarmBy(entry.expiresAt)
        return Response.json({ ...hit, algorithm: SLIDING })
      }
      const stored = await storage.get('counter')
      let entry
      if (stored && stored.resetAt > now) {
        entry = { count: stored.count + 1, resetAt: stored.resetAt }
      } else {
        entry = { count: 1, resetAt: now + windowSeconds * 1000 }
        await this.#alarmBy(entry.resetAt)
      }
      await storage.put('counter', entry)
      return Response.json(entry)
    })
  }

  /** Makes sure an alarm runs by `at` (the one alarm serves both entries). */
  async #alarmBy(at) {
    const storage = this.#state.storage
    const set = await storage.getAlarm()
    if (set === null || set > at) await storage.setAlarm(at)
  }

  async alarm() {
    const storage = this.#state.storage
    const now = Date.now()
    const counter = await storage.get('counter')
    const sliding = await storage.get('sliding')
    // A late alarm must not wipe an entry written after it was set.
    const live = []
    if (counter && counter.resetAt > now) live.push(counter.resetAt)
    else await storage.delete('counter')
    if (sliding && sliding.expiresAt > now) live.push(sliding.expiresAt)
    else await storage.delete('sliding')
    if (live.length > 0) await storage.setAlarm(Math.min(...live))
  }
}

const SLIDING = 'sliding-window'

/**
 * One sliding-window hit at `now` on a key's stored entry (or none): the
 * entry to store and the `{ count, resetAt }` to answer. Windows are aligned
 * to multiples of their length since the epoch; the count is this window's
 * hits plus the previous window's scaled by its share still inside the
 * rolling window, rounded down (docs/sliding-window.md; the same arithmetic
 * as src/sliding_window.rs, both held to the tests' reference model).
 */
function slidingHit(stored, now, windowSeconds) {
  const length = Math.max(1, Math.ceil(windowSeconds * 1000))
  const start = now - (now % length)
  const end = start + length
  let current = 1
  let previous = 0
  if (stored?.start === start) {
    current = stored.current + 1
    previous = stored.previous
  } else if (stored?.start === start - length) {
    previous = stored.current
  }
  // The entry counts for nothing once the window after this one is over.
  const entry = { start, current, previous, expiresAt: end + length }
  const remaining = Math.min(length, Math.max(0, end - now))
  return { entry, hit: { count: current + Math.floor((previous * remaining) / length), resetAt: end } }
}

/**
 * Rate-limit counters, one RateLimiterDO per key: exact counts however many
 * isolates hit the same key at once. Pass the Durable Object namespace bound
 * to RateLimiterDO, and optionally `{ algorithm }`: 'fixed-window' (the
 * default) or 'sliding-window', which needs stoma-native's RateLimiterDO.
 */
export class DurableObjectRateLimitStore {
  #namespace
  #query

  constructor(namespace, options) {
    this.#namespace = checkNamespace('DurableObjectRateLimitStore', namespace)
    const algorithm = rateLimitAlgorithm('DurableObjectRateLimitStore', options)
    this.#query = algorithm === SLIDING ? `&algorithm=${SLIDING}` : ''
    countCalls(this, ['increment'])
  }

  async increment(key, windowSeconds) {
    checkKey('DurableObjectRateLimitStore', key)
    checkSeconds('DurableObjectRateLimitStore', windowSeconds, 'windowSeconds')
    const url = `${RATE_LIMITER_ORIGIN}/increment?window=${windowSeconds}${this.#query}`
    const answer = await callObject('DurableObjectRateLimitStore', this.#namespace, key, url)
    if (this.#query && answer.algorithm !== SLIDING) {
      // Stoma's own class ignores the algorithm and counts a fixed window.
      throw new Error(
        'DurableObjectRateLimitStore: the bound Durable Object class did not count a sliding window; bind stoma-native’s RateLimiterDO',
      )
    }
    return { count: answer.count, resetAt: answer.resetAt }
  }
}

/**
 * Durable Object holding one circuit's snapshot under "circuit". It answers
 * `/getState`, `/recordSuccess`, `/recordFailure`, `/transition?to=<state>`
 * with the snapshot after the operation (Stoma's rules, from circuit.js),
 * and `/reset` by forgetting the circuit. A circuit idle for 24 hours is
 * forgotten by an alarm. Export it from your Worker and bind it.
 */
export class CircuitBreakerDO {
  #state

  constructor(state) {
    this.#state = state
  }

  async fetch(request) {
    const url = new URL(request.url)
    const operation = url.pathname.slice(1)
    const storage = this.#state.storage
    if (operation === 'reset') {
      await storage.deleteAll()
      await storage.deleteAlarm()
      return new Response(null, { status: 204 })
    }
    const to = url.searchParams.get('to') ?? undefined
    if (!CIRCUIT_OPERATIONS.includes(operation)) return new Response(`unknown operation ${operation}`, { status: 404 })
    if (operation === 'transition') {
      try {
        checkCircuitState('CircuitBreakerDO', to)
      } catch (error) {
        return new Response(error.message, { status: 400 })
      }
    }
    // No other request enters this object until the update is stored.
    return this.#state.blockConcurrencyWhile(async () => {
      const now = Date.now()
      const current = (await storage.get('circuit')) ?? freshCircuit(now)
      const next = applyCircuitOperation(current, operation, to, now)
      if (operation !== 'getState') {
        await storage.put('circuit', next)
        await storage.setAlarm(now + CIRCUIT_IDLE_MS)
      }
      return Response.json(next)
    })
  }

  async alarm() {
    await this.#state.storage.deleteAll()
  }
}

/**
 * Circuit-breaker state kept in Durable Objects, one CircuitBreakerDO per
 * circuit key. Every isolate and every request sees the same circuit and
 * updates apply atomically, so a circuit opened by failures in one request
 * stays open for the next, even when the adapter is rebuilt per request
 * (Stoma's Workers adapter keeps circuits in per-isolate memory instead).
 */
export class DurableObjectCircuitBreakerStore {
  #namespace

  constructor(namespace) {
    this.#namespace = checkNamespace('DurableObjectCircuitBreakerStore', namespace)
    countCalls(this, CIRCUIT_METHODS)
  }

  async #call(key, path) {
    checkKey('DurableObjectCircuitBreakerStore', key)
    return callObject('DurableObjectCircuitBreakerStore', this.#namespace, key, `${CIRCUIT_BREAKER_ORIGIN}/${path}`)
  }

  getState(key) {
    return this.#call(key, 'getState')
  }

  recordSuccess(key) {
    return this.#call(key, 'recordSuccess')
  }

  recordFailure(key) {
    return this.#call(key, 'recordFailure')
  }

  async transition(key, to) {
    checkCircuitState('DurableObjectCircuitBreakerStore', to)
    return this.#call(key, `transition?to=${encodeURIComponent(to)}`)
  }

  async reset(key) {
    await this.#call(key, 'reset')
  }
}
