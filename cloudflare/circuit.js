// Stoma's circuit-breaker transition rules, written once and used by both
// the per-isolate memory store and the CircuitBreakerDO, so the two cannot
// drift apart.

import {
  checkCircuitState,
  checkKey,
  checkKnownKeys,
  describe,
  optionsObject,
  positiveInteger,
} from '../lib/validate.js'
import { CIRCUIT_METHODS } from '../lib/circuit.js'
import { countCalls } from '../lib/stats.js'

/** The snapshot an unknown key reads as. */
export function freshCircuit(now) {
  return { state: 'closed', failureCount: 0, successCount: 0, lastFailureTime: 0, lastStateChange: now }
}

/**
 * The snapshot after `operation` (one of lib/circuit.js's CIRCUIT_OPERATIONS) at time `now`.
 * A failure counts and stamps lastFailureTime; a success counts; a
 * transition stamps lastStateChange and zeroes both counters on "closed",
 * the success counter on "half-open". Returns a new object.
 */
export function applyCircuitOperation(snapshot, operation, to, now) {
  const next = { ...snapshot }
  switch (operation) {
    case 'getState':
      break
    case 'recordSuccess':
      next.successCount += 1
      break
    case 'recordFailure':
      next.failureCount += 1
      next.lastFailureTime = now
      break
    case 'transition':
      next.state = to
      next.lastStateChange = now
      if (to === 'closed') next.failureCount = 0
      if (to === 'closed' || to === 'half-open') next.successCount = 0
      break
    default:
      throw new RangeError(`unknown circuit operation ${describe(operation)}`)
  }
  return next
}

const DEFAULT_CIRCUIT_KEYS = 10_000

/**
 * Circuit-breaker state in this isolate's memory, in plain JavaScript.
 * It is the fallback when no CircuitBreakerDO is bound: each Workers
 * isolate keeps its own circuits (so isolates disagree), but
 * cloudflareAdapter() shares one store per isolate, so an adapter built per
 * request still remembers earlier failures. Bounded by `maxKeys` (10,000);
 * beyond that the least recently used circuit is forgotten.
 */
export class InMemoryCircuitBreakerStore {
  #circuits = new Map()
  #maxKeys

  constructor(options) {
    const opts = optionsObject('InMemoryCircuitBreakerStore', options)
    checkKnownKeys('InMemoryCircuitBreakerStore', opts, ['maxKeys'])
    this.#maxKeys = positiveInteger('InMemoryCircuitBreakerStore', opts.maxKeys, 'maxKeys', DEFAULT_CIRCUIT_KEYS)
    countCalls(this, CIRCUIT_METHODS)
  }

  // Runs synchronously, so each update is atomic within the isolate.
  #run(operation, key, to) {
    try {
      checkKey('InMemoryCircuitBreakerStore', key)
      if (operation === 'transition') checkCircuitState('InMemoryCircuitBreakerStore', to)
      const now = Date.now()
      const current = this.#circuits.get(key)
      const next = applyCircuitOperation(current ?? freshCircuit(now), operation, to, now)
      // An unknown key that is only read stays unknown.
      if (current !== undefined || operation !== 'getState') this.#remember(key, next)
      return Promise.resolve({ ...next })
    } catch (error) {
      return Promise.reject(error)
    }
  }

  // Re-inserting moves the key to the end of the Map's order, so the first
  // key is always the least recently used one.
  #remember(key, snapshot) {
    this.#circuits.delete(key)
    this.#circuits.set(key, snapshot)
    if (this.#circuits.size > this.#maxKeys) this.#circuits.delete(this.#circuits.keys().next().value)
  }

  getState(key) {
    return this.#run('getState', key)
  }

  recordSuccess(key) {
    return this.#run('recordSuccess', key)
  }

  recordFailure(key) {
    return this.#run('recordFailure', key)
  }

  transition(key, to) {
    return this.#run('transition', key, to)
  }

  reset(key) {
    try {
      checkKey('InMemoryCircuitBreakerStore', key)
      this.#circuits.delete(key)
      return Promise.resolve()
    } catch (error) {
      return Promise.reject(error)
    }
  }

  /** Number of circuits held. */
  get size() {
    return this.#circuits.size
  }

  /** Remove every circuit. */
  clear() {
    this.#circuits.clear()
  }

  destroy() {
    this.#circuits.clear()
  }
}
