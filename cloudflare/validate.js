// Argument checks for the Cloudflare stores. They mirror lib/validate.js
// (same wording, same error classes: TypeError for a wrong type, RangeError
// for a bad value, naming the argument), but are ESM with no Node built-ins,
// because this entry must load in workerd without the CommonJS/native side.

export function describe(value) {
  if (value === null) return 'null'
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'undefined') return String(value)
  return typeof value
}

export function checkKey(owner, key, name = 'key') {
  if (typeof key !== 'string') {
    throw new TypeError(`${owner}: ${name} must be a string, got ${describe(key)}`)
  }
}

/** A duration in seconds: a finite number >= 0 (fractions allowed). */
export function checkSeconds(owner, value, name) {
  if (typeof value !== 'number') {
    throw new TypeError(`${owner}: ${name} must be a number, got ${describe(value)}`)
  }
  if (!(value >= 0) || value === Infinity) {
    throw new RangeError(`${owner}: ${name} must be a finite number >= 0, got ${describe(value)}`)
  }
}

/** An optional positive integer option, or `fallback` when absent. */
export function positiveInteger(owner, value, name, fallback) {
  if (value === undefined) return fallback
  if (typeof value !== 'number') {
    throw new TypeError(`${owner}: ${name} must be a number, got ${describe(value)}`)
  }
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`${owner}: ${name} must be a positive integer, got ${describe(value)}`)
  }
  return value
}

/** An options argument: undefined/null (no options) or an object. */
export function optionsObject(owner, value, name = 'options') {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object') {
    throw new TypeError(`${owner}: ${name} must be an object, got ${describe(value)}`)
  }
  return value
}

/**
 * A platform binding (KV namespace, Durable Object namespace, Cache…):
 * an object with the named methods. Checked up front so a wrong binding
 * fails where it is passed, not on the first request that uses it.
 */
export function checkBinding(owner, value, name, kind, methods) {
  const ok = value !== null && typeof value === 'object' && methods.every((m) => typeof value[m] === 'function')
  if (!ok) {
    throw new TypeError(`${owner}: ${name} must be a ${kind} (with ${methods.join(', ')}), got ${describe(value)}`)
  }
  return value
}
