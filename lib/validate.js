'use strict'
// Argument checks shared by every store, the Cloudflare entry's included.
// They throw the JS error classes a caller expects (TypeError for a wrong
// type, RangeError for a bad value), naming the argument; the stores turn
// the throw into a rejected Promise.
//
// CommonJS, because index.js requires it and Node 20 before 20.19 cannot
// require an ES module; cloudflare/*.js import it, and bundlers (wrangler's
// esbuild) wrap it for workerd. So it uses no Node built-in and requires
// nothing but its lib/ siblings that do the same: it must load where there
// is no Node and no addon.

const { CIRCUIT_STATES } = require('./circuit.js')

function describe(value) {
  if (value === null) return 'null'
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'undefined') return String(value)
  return typeof value
}

function checkKey(store, key, name = 'key') {
  if (typeof key !== 'string') {
    throw new TypeError(`${store}: ${name} must be a string, got ${describe(key)}`)
  }
}

/** A duration in seconds: a finite number >= 0 (fractions allowed). */
function checkSeconds(store, value, name) {
  if (typeof value !== 'number') {
    throw new TypeError(`${store}: ${name} must be a number, got ${describe(value)}`)
  }
  if (!(value >= 0) || value === Infinity) {
    throw new RangeError(`${store}: ${name} must be a finite number >= 0, got ${describe(value)}`)
  }
}

/**
 * An optional integer option from `min` (0 or 1) to `max`, or `fallback`
 * when absent. `max` is where the value stops making sense or fitting what
 * reads it, so a typo in the exponent is refused rather than truncated.
 */
function integerAtLeast(min, store, value, name, fallback, max) {
  if (value === undefined) return fallback
  if (typeof value !== 'number') {
    throw new TypeError(`${store}: ${name} must be a number, got ${describe(value)}`)
  }
  if (!Number.isSafeInteger(value) || value < min) {
    const wanted = min === 1 ? 'a positive integer' : 'a whole number ≥ 0'
    throw new RangeError(`${store}: ${name} must be ${wanted}, got ${describe(value)}`)
  }
  if (max !== undefined && value > max) {
    throw new RangeError(`${store}: ${name} must be at most ${max}, got ${describe(value)}`)
  }
  return value
}

const positiveInteger = (store, value, name, fallback, max) => integerAtLeast(1, store, value, name, fallback, max)
const nonNegativeInteger = (store, value, name, fallback, max) => integerAtLeast(0, store, value, name, fallback, max)

/** The longest timeout or interval taken, in ms: Node's timers' limit (~24.8 days). */
const MAX_MS = 2 ** 31 - 1

/** An options argument: undefined or a plain object. */
function optionsObject(store, value, name = 'options') {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object') {
    throw new TypeError(`${store}: ${name} must be an object, got ${describe(value)}`)
  }
  return value
}

/**
 * Refuses keys of `options` not in `known`: a misspelt option would
 * otherwise silently take its default. `path` names a nested object.
 */
function checkKnownKeys(store, options, known, path) {
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      const name = path === undefined ? key : `${path}.${key}`
      throw new TypeError(`${store}: unknown option ${name}; the options are ${known.join(', ')}`)
    }
  }
}

/**
 * A platform binding or client (KV namespace, Durable Object namespace,
 * Cache…): an object with the named methods. Checked up front so a wrong
 * binding fails where it is passed, not on the first request that uses it.
 */
function checkBinding(store, value, name, kind, methods) {
  const ok = value !== null && typeof value === 'object' && methods.every((m) => typeof value[m] === 'function')
  if (!ok) {
    throw new TypeError(`${store}: ${name} must be a ${kind} (with ${methods.join(', ')}), got ${describe(value)}`)
  }
  return value
}

/** The name of a shared memory state: a non-empty string. */
function checkName(store, value) {
  if (typeof value !== 'string' || value.length === 0) {
    throw new TypeError(`${store}: name must be a non-empty string, got ${describe(value)}`)
  }
  return value
}

function optionalName(store, value) {
  return value === undefined ? undefined : checkName(store, value)
}

/**
 * `value`, argument or option `name`, when it is one of the strings
 * `choices`: a TypeError if it is not a string, a RangeError if it is
 * another, each listing them ("a", "b" or "c").
 */
function checkChoice(who, value, name, choices) {
  const quoted = choices.map((choice) => `"${choice}"`)
  const listed = `${quoted.slice(0, -1).join(', ')} or ${quoted.at(-1)}`
  if (typeof value !== 'string') {
    throw new TypeError(`${who}: ${name} must be a string (${listed}), got ${describe(value)}`)
  }
  if (!choices.includes(value)) {
    throw new RangeError(`${who}: ${name} must be ${listed}, got ${describe(value)}`)
  }
  return value
}

/** A circuit state for `transition(key, to)`. */
function checkCircuitState(store, to) {
  checkChoice(store, to, 'to', CIRCUIT_STATES)
}

/**
 * An adapter's `stores` option: which of its three stores to build, each
 * `true` unless set to `false`.
 */
function storeFlags(who, value) {
  const stores = optionsObject(who, value, 'stores')
  const names = ['rateLimit', 'circuitBreaker', 'cache']
  checkKnownKeys(who, stores, names, 'stores')
  for (const name of names) {
    if (stores[name] !== undefined && typeof stores[name] !== 'boolean') {
      throw new TypeError(`${who}: stores.${name} must be a boolean, got ${describe(stores[name])}`)
    }
  }
  return {
    rateLimit: stores.rateLimit !== false,
    circuitBreaker: stores.circuitBreaker !== false,
    cache: stores.cache !== false,
  }
}

/** The rate-limit algorithms a store counts with; the first is the default. */
const RATE_LIMIT_ALGORITHMS = ['fixed-window', 'sliding-window']

/**
 * The algorithm an adapter's `rateLimit` option (`{ algorithm }`, and
 * `known`'s other keys where a store has more) asks its rate-limit store to
 * count with: 'fixed-window' (Stoma's, the default) or 'sliding-window'.
 */
function rateLimitAlgorithm(who, value, known = ['algorithm']) {
  const options = optionsObject(who, value, 'rateLimit')
  checkKnownKeys(who, options, known, 'rateLimit')
  return checkAlgorithm(who, options.algorithm, 'rateLimit.algorithm')
}

/**
 * A rate-limit algorithm given as option `name` (a store class's
 * `algorithm`, an adapter's `rateLimit.algorithm`); absent, the default.
 */
function checkAlgorithm(who, algorithm = RATE_LIMIT_ALGORITHMS[0], name = 'algorithm') {
  return checkChoice(who, algorithm, name, RATE_LIMIT_ALGORITHMS)
}

/** PEM text given as a string, bytes, or an array of those (as Node's `tls` takes it), as bytes. */
function pemBytes(who, value, name) {
  if (value === undefined) return undefined
  if (typeof value === 'string') return new TextEncoder().encode(value)
  if (value instanceof Uint8Array) return value
  if (Array.isArray(value) && value.length > 0) {
    const parts = value.map((part, index) => pemBytes(who, part, `${name}[${index}]`))
    return new TextEncoder().encode(parts.map((part) => new TextDecoder().decode(part)).join('\n'))
  }
  throw new TypeError(`${who}: ${name} must be PEM text (a string or a Buffer), got ${describe(value)}`)
}

/**
 * Reads the `tls` option of the Redis and PostgreSQL connections: absent or
 * false (TLS only if the url asks: `rediss://`, `sslmode`), true, or
 * `{ ca, cert, key, servername }` — PEM certificates (strings or bytes)
 * trusted instead of Mozilla's roots, a client certificate and its key for
 * servers that ask for one, and the name the server's certificate must
 * carry when not its host's, as with Node's `tls.connect()`. `name` is the
 * option's name in messages (`sentinel.tls` for the sentinels' own).
 */
function tlsOption(who, tls, name = 'tls') {
  if (tls === undefined || tls === false) return { useTls: false }
  if (tls === true) return { useTls: true }
  if (tls === null || typeof tls !== 'object') {
    throw new TypeError(`${who}: ${name} must be a boolean or { ca, cert, key, servername }, got ${describe(tls)}`)
  }
  checkKnownKeys(who, tls, ['ca', 'cert', 'key', 'servername'], name)
  if (tls.servername !== undefined && (typeof tls.servername !== 'string' || tls.servername === '')) {
    throw new TypeError(`${who}: ${name}.servername must be a host name, got ${describe(tls.servername)}`)
  }
  return {
    useTls: true,
    tlsCa: pemBytes(who, tls.ca, `${name}.ca`),
    tlsCert: pemBytes(who, tls.cert, `${name}.cert`),
    tlsKey: pemBytes(who, tls.key, `${name}.key`),
    tlsServername: tls.servername,
  }
}

module.exports = {
  describe,
  checkKnownKeys,
  checkBinding,
  tlsOption,
  checkKey,
  checkSeconds,
  positiveInteger,
  nonNegativeInteger,
  MAX_MS,
  optionsObject,
  checkName,
  optionalName,
  checkChoice,
  checkCircuitState,
  storeFlags,
  RATE_LIMIT_ALGORITHMS,
  rateLimitAlgorithm,
  checkAlgorithm,
}
