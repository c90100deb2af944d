'use strict'
// Turning a Response into the parts the native stores keep, and back.
// Headers cross as one string, `name\0value\0name\0value…` (NUL cannot occur
// in a header name or value), in the order `Headers#forEach` yields them.

const { checkSeconds, describe } = require('./validate.js')

// Statuses whose Response must not carry a body.
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304])

function isResponse(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof value.status === 'number' &&
    typeof value.arrayBuffer === 'function' &&
    value.headers !== null &&
    typeof value.headers === 'object' &&
    typeof value.headers.forEach === 'function'
  )
}

function checkResponse(store, value) {
  if (!isResponse(value)) {
    throw new TypeError(`${store}: response must be a Response, got ${describe(value)}`)
  }
  // A Response can only carry 200–599; anything else (from a Response-like
  // object) could be stored but never rebuilt, so get() would throw.
  if (!Number.isInteger(value.status) || value.status < 200 || value.status > 599) {
    throw new RangeError(`${store}: response.status must be an integer from 200 to 599, got ${describe(value.status)}`)
  }
}

function joinHeaders(headers) {
  const parts = []
  headers.forEach((value, name) => {
    parts.push(name, value)
  })
  return parts.join('\0')
}

function splitHeaders(joined) {
  if (joined === '') return []
  const parts = joined.split('\0')
  const pairs = new Array(parts.length >> 1)
  for (let i = 0; i < pairs.length; i++) pairs[i] = [parts[2 * i], parts[2 * i + 1]]
  return pairs
}

const EMPTY = new Uint8Array(0)

/**
 * Reads a body's bytes. Taking the stream's chunks directly (one chunk for
 * a body built from bytes) skips the zero-filled buffer and the copy that
 * `arrayBuffer()` makes to concatenate them; the native store copies once.
 */
async function readChunks(response) {
  if (response.body === null) return EMPTY
  const reader = response.body.getReader()
  const chunks = []
  let length = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    chunks.push(value)
    length += value.byteLength
  }
  if (chunks.length === 1) return chunks[0]
  const body = new Uint8Array(length)
  let offset = 0
  for (const chunk of chunks) {
    body.set(chunk, offset)
    offset += chunk.byteLength
  }
  return body
}

/**
 * Reads a body's bytes in one piece, never touching `response.body`: in Bun
 * and Deno that getter builds a ReadableStream, which costs more than the
 * whole read (64 KiB: ~22 µs through a reader in Bun against ~6 µs; in
 * Deno, ~30 µs against ~2 µs, as arrayBuffer() takes an unread body's bytes
 * without a copy).
 */
async function readWhole(response) {
  return new Uint8Array(await response.arrayBuffer())
}

// Node reads fastest through the reader; Bun and Deno in one piece
// (docs/runtimes-speed.md).
const readBody =
  typeof process !== 'undefined' && process.versions?.node && !process.versions.bun && !globalThis.Deno
    ? readChunks
    : readWhole

/**
 * A cache put's `response` and `ttlSeconds`, checked (errors naming them
 * and `store`), and the response read into `{ status, headers, body }` for
 * a native store.
 */
async function putParts(store, response, ttlSeconds) {
  checkResponse(store, response)
  checkSeconds(store, ttlSeconds, 'ttlSeconds')
  const body = await readBody(response)
  return { status: response.status, headers: joinHeaders(response.headers), body }
}

/** Builds a fresh Response from stored parts; null-body statuses get none. */
function buildResponse(status, joinedHeaders, body) {
  return new Response(NULL_BODY_STATUSES.has(status) ? null : body, {
    status,
    headers: splitHeaders(joinedHeaders),
  })
}

module.exports = { putParts, buildResponse, joinHeaders, splitHeaders }
