// The installed package's internals the FFI tests reach past its exports:
// lib/ffi.js (the road taken, or null for N-API) and lib/native.js.
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const require = createRequire(import.meta.url)
const root = dirname(require.resolve('stoma-native/package.json'))

export const ffi = require(join(root, 'lib', 'ffi.js'))
export const native = require(join(root, 'lib', 'native.js'))

/** 'bun:ffi', 'Deno.dlopen' or 'N-API'. */
export const road = () => (ffi ? { bun: 'bun:ffi', deno: 'Deno.dlopen' }[ffi.runtime] : 'N-API')

/** What a lane's `handle` becomes as a 'pointer' argument in this runtime. */
export const pointer = (address) =>
  typeof globalThis.Bun !== 'undefined' ? address : globalThis.Deno.UnsafePointer.create(BigInt(address))
