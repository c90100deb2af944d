'use strict'
// Bun's and Deno's fastest road into the memory stores (src/ffi.rs): their
// JIT-compiled FFI calls to the addon's plain C symbols, where one call
// through their N-API layers costs more than Stoma's whole Map operation
// (docs/runtimes-speed.md). Node keeps N-API (src/fastcall.rs), which is
// as fast there.
//
// The road is chosen once, at load: `bun:ffi` in Bun, `Deno.dlopen` in Deno
// when the addon's file may be opened (`--allow-ffi`, which N-API in Deno
// needs too), none in Node, nor anywhere with STOMA_NATIVE_FFI=0. Each store
// then gets a lane: its own memory shared with the native side, into which
// keys are written as UTF-8 so that no string crosses a call. Everything a
// lane does, the store's N-API calls do with the same state, so both roads
// serve the same named state (across workers too); a key too long for the
// lane takes the N-API road for that call.

const native = require('./native.js')

// Answers of the symbols (src/ffi.rs, src/memory/cache.rs).
const FAILED_TYPE = -3
const MISS = -2
const SLOTS = 8
const MESSAGE_SLOT = SLOTS - 1

// Bytes a lane keeps for a key (a cache lane: for a key and its header string).
const KEY_BYTES = 1024
const CACHE_BYTES = 16 * 1024

// Keys up to this many UTF-16 units are written by a loop (a few ns for an
// ASCII key); longer and non-ASCII ones by TextEncoder.
const LOOP_UNITS = 64

// Every symbol: parameter types and result, in Deno's names.
const SYMBOLS = {
  stoma_rate_limit_increment: [['pointer', 'u32', 'f64'], 'f64'],
  stoma_sliding_rate_limit_increment: [['pointer', 'u32', 'f64'], 'f64'],
  stoma_circuit_operate: [['pointer', 'u32', 'u32', 'u32'], 'f64'],
  stoma_cache_put: [['pointer', 'u32', 'u32', 'u32', 'buffer', 'f64', 'f64'], 'f64'],
  stoma_cache_get: [['pointer', 'u32'], 'f64'],
  stoma_test_panic: [['pointer', 'u32'], 'f64'],
}

// A road: `symbols`, `pointer(address)` (what a 'pointer' parameter takes)
// and `view(address, length)` (an ArrayBuffer over native memory).

/** Bun: bun:ffi, with a lane's address passed as a number. */
function openBun(path) {
  const { dlopen, FFIType, toArrayBuffer } = require('bun:ffi')
  const type = { pointer: FFIType.ptr, buffer: FFIType.ptr, u32: FFIType.u32, f64: FFIType.f64 }
  const spec = {}
  for (const [name, [args, result]] of Object.entries(SYMBOLS)) {
    spec[name] = { args: args.map((t) => type[t]), returns: type[result] }
  }
  return {
    runtime: 'bun',
    symbols: dlopen(path, spec).symbols,
    pointer: (address) => address,
    view: (address, length) => toArrayBuffer(address, 0, length),
  }
}

/** Deno: Deno.dlopen, if allowed without a prompt; a lane's address as a pointer object. */
function openDeno(path) {
  const { Deno } = globalThis
  if (Deno.permissions.querySync({ name: 'ffi', path }).state !== 'granted') return null
  const spec = {}
  for (const [name, [parameters, result]] of Object.entries(SYMBOLS)) spec[name] = { parameters, result }
  const pointer = (address) => Deno.UnsafePointer.create(BigInt(address))
  return {
    runtime: 'deno',
    symbols: Deno.dlopen(path, spec).symbols,
    pointer,
    view: (address, length) => Deno.UnsafePointerView.getArrayBuffer(pointer(address), length),
  }
}

/** The runtime's FFI over the addon's file, or null to keep N-API. */
function open() {
  if (process.env.STOMA_NATIVE_FFI === '0') return null
  const opener = process.versions.bun ? openBun : globalThis.Deno?.dlopen ? openDeno : null
  const path = opener && native.ffiLibraryPath()
  if (!path) return null
  try {
    return opener(path)
  } catch {
    // No FFI after all (a runtime without it, a refused permission): N-API serves.
    return null
  }
}

const road = open()

const encoder = new TextEncoder()
const EMPTY = new Uint8Array(0)
const decoder = new TextDecoder()

/**
 * A store's lane: `handle` for the symbols, `slots` for results, `bytes`
 * for keys. `made` is `{ handle, memory }` from the native store's lane(),
 * whose memory (held here) owns the native lane.
 */
class Lane {
  constructor(made) {
    this.handle = road.pointer(made.handle)
    this.memory = made.memory
    this.slots = new Float64Array(made.memory, 0, SLOTS)
    this.bytes = new Uint8Array(made.memory, SLOTS * 8)
    // The key last written: repeated keys (one client, one upstream) are not written again.
    this.key = null
    this.keyLength = 0
  }

  /** Writes `text` as UTF-8 at `offset`; answers its byte length, or -1 if it does not fit. */
  write(text, offset) {
    const bytes = this.bytes
    const units = text.length
    if (units <= LOOP_UNITS && offset + units <= bytes.length) {
      let i = 0
      for (; i < units; i++) {
        const unit = text.charCodeAt(i)
        if (unit >= 0x80) break
        bytes[offset + i] = unit
      }
      if (i === units) return units
    }
    // Lone surrogates become U+FFFD, as on the N-API road.
    const { read, written } = encoder.encodeInto(text, bytes.subarray(offset))
    return read === units ? written : -1
  }

  /** Writes `key` at the start; answers its byte length, or -1 if it does not fit. */
  writeKey(key) {
    if (key === this.key) return this.keyLength
    const length = this.write(key, 0)
    this.key = length < 0 ? null : key
    this.keyLength = length
    return length
  }

  /** The error a call answered `code` with; its message overwrote the key. */
  error(code) {
    this.key = null
    const message = decoder.decode(this.bytes.subarray(0, this.slots[MESSAGE_SLOT])) || 'stoma-native: bad lane'
    return code === FAILED_TYPE ? new TypeError(message) : new Error(message)
  }
}

/**
 * A native store's lane, or null if the native side refuses one (a lane
 * whose address a number cannot hold): the store keeps N-API then.
 */
function laneOf(store, bytes) {
  try {
    return new Lane(store.lane(bytes))
  } catch {
    return null
  }
}

/**
 * The rate-limit store's `{ call(key, windowMs) → count, out }` (out[0] is
 * resetAt), as `bound` (its N-API bound call) answers, through a lane, with
 * the symbol of the store's `algorithm` (a lane serves only its own).
 */
function rateLimitCall(store, bound, algorithm) {
  const lane = laneOf(store, KEY_BYTES)
  if (lane === null) return bound
  const { handle, slots } = lane
  const increment =
    algorithm === 'sliding-window'
      ? road.symbols.stoma_sliding_rate_limit_increment
      : road.symbols.stoma_rate_limit_increment
  return {
    call(key, windowMs) {
      const length = lane.writeKey(key)
      if (length < 0) {
        const count = bound.call(key, windowMs)
        slots[0] = bound.out[0]
        return count
      }
      const count = increment(handle, length, windowMs)
      if (count < 0) throw lane.error(count)
      return count
    },
    out: slots,
  }
}

/**
 * The circuit store's `{ call(op, key, to), out }` (out holds the snapshot's
 * five fields), as `bound` answers, through a lane.
 */
function circuitCall(store, bound) {
  const lane = laneOf(store, KEY_BYTES)
  if (lane === null) return bound
  const { handle, slots } = lane
  const operate = road.symbols.stoma_circuit_operate
  return {
    call(op, key, to = 0) {
      const length = lane.writeKey(key)
      if (length < 0) {
        bound.call(op, key, to)
        slots.set(bound.out)
        return
      }
      const answer = operate(handle, op, length, to)
      if (answer < 0) throw lane.error(answer)
    },
    out: slots,
  }
}

/**
 * The cache store's `{ put(key, status, headers, body, ttlMs), get(key) }`
 * through a lane; `get` answers `{ status, headers, body }` or null. A key
 * and header string too long for the lane take `napi`'s calls.
 *
 * A hit's body is a view of the stored bytes, lent until the lane's next
 * get (src/memory/cache.rs): the caller must build its `Response` from it at
 * once, which copies it, and keep no other reference.
 */
function cacheCalls(store, napi) {
  const lane = laneOf(store, CACHE_BYTES)
  if (lane === null) return napi
  const { handle, slots } = lane
  const { stoma_cache_put: put, stoma_cache_get: get } = road.symbols
  return {
    put(key, status, headers, body, ttlMs) {
      const keyLength = lane.writeKey(key)
      const headersLength = keyLength < 0 ? -1 : lane.write(headers, keyLength)
      if (headersLength < 0) return napi.put(key, status, headers, body, ttlMs)
      const answer = put(handle, keyLength, headersLength, status, body, body.byteLength, ttlMs)
      if (answer < 0) throw lane.error(answer)
    },
    get(key) {
      const keyLength = lane.writeKey(key)
      if (keyLength < 0) return napi.get(key)
      const size = get(handle, keyLength)
      if (size < 0) {
        if (size === MISS) return null
        throw lane.error(size)
      }
      const headersLength = slots[1]
      const data = size === 0 ? EMPTY : new Uint8Array(road.view(slots[2], size))
      const headers = headersLength === 0 ? '' : decoder.decode(data.subarray(0, headersLength))
      return { status: slots[0], headers, body: data.subarray(headersLength) }
    },
  }
}

/** The test hook's lane and symbol (src/testing.rs), for the boundary tests. */
function testPanic(message) {
  const lane = new Lane(native.__testLane(256))
  const answer = road.symbols.stoma_test_panic(lane.handle, lane.writeKey(message))
  if (answer < 0) throw lane.error(answer)
  return answer
}

module.exports = road && {
  runtime: road.runtime,
  symbols: road.symbols,
  rateLimitCall,
  circuitCall,
  cacheCalls,
  testPanic,
}
