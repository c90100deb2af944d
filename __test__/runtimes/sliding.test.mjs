// The sliding-window contract (sliding-window.mjs) on the installed package
// in Bun and Deno, whose memory stores take the FFI road (lib/ffi.js), and
// on the N-API road with STOMA_NATIVE_FFI=0. The runtimes spec sets
// STOMA_NATIVE_TEST_HOOKS=1, which the frozen clock (__setTestClock) needs.
import { bunAdapter, denoAdapter, MemoryRateLimitStore, memoryAdapter, TestAdapter } from 'stoma-native'
import { native, road } from './ffi-road.mjs'
import { slidingWindowContract } from './sliding-window.mjs'

const runtime = typeof globalThis.Bun !== 'undefined' ? 'bun' : 'deno'
const label = `${runtime} ${road()}`
const setClock = (ms) => native.__setTestClock(ms)
const sliding = { algorithm: 'sliding-window' }

slidingWindowContract(`${label} MemoryRateLimitStore`, {
  createStore: () => new MemoryRateLimitStore(sliding),
  setClock,
  createWithOptions: (rateLimit) => memoryAdapter({ rateLimit }),
})
slidingWindowContract(`${label} ${runtime}Adapter`, {
  createStore: () => (runtime === 'bun' ? bunAdapter : denoAdapter)({ rateLimit: sliding }).rateLimitStore,
  setClock,
})
slidingWindowContract(`${label} TestAdapter`, {
  createStore: () => new TestAdapter({ rateLimit: sliding }).rateLimitStore,
  setClock,
  createWithOptions: (rateLimit) => new TestAdapter({ rateLimit }),
})
