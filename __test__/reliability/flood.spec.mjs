// Floods: 1,000,000 distinct keys into the memory stores, each in a child
// process so its resident memory can be measured. The RSS growth must stay
// inside the bound README "Limits and hostile input" states for the store's
// maxKeys / maxEntries / maxBytes, and the cost per call must stay flat
// (last 100k batch vs first: a flatness check, not a speed assertion).
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { entry, lastJson } from '../support/processes.mjs'

const child = fileURLToPath(new URL('../support/flood-child.mjs', import.meta.url))
const MiB = 2 ** 20
/** What the JS side of a million calls (promises, strings) may add to RSS, GC'd or not. */
const JS_ALLOWANCE_MIB = 80

async function flood(kind, total = 1_000_000) {
  const { spawnSync } = await import('node:child_process')
  const run = spawnSync(process.execPath, ['--expose-gc', child, kind, String(total)], {
    env: { ...process.env, STOMA_NATIVE: entry },
    encoding: 'utf8',
    timeout: 60_000,
  })
  expect(run.status, run.stderr).toBe(0)
  const result = lastJson(run.stdout)
  const first = result.nsPerCall[0]
  const last = result.nsPerCall.at(-1)
  console.log(
    `flood ${kind}: ${total} calls, rss ${result.base.toFixed(0)} → peak ${result.peak.toFixed(0)} MiB (after GC ${result.after.toFixed(0)}), ` +
      `size ${result.size}, per call first/last batch ${(first / 1000).toFixed(2)} / ${(last / 1000).toFixed(2)} µs`,
  )
  expect(
    last / first,
    `per-call cost ${result.nsPerCall.map((n) => (n / 1000).toFixed(2)).join(', ')} µs`,
  ).toBeLessThan(3)
  return { ...result, growth: result.peak - result.base }
}

describe('reliability: floods of distinct keys into the memory stores', () => {
  it('rate limit (maxKeys 100,000): 1,000,000 keys → ≤ 512 B a key held, fails closed, flat cost', async () => {
    const r = await flood('rateLimit')
    expect(r.size).toBe(100_000)
    expect(r.refused).toBe(900_000) // every key beyond capacity, in a 60 s window
    expect(r.growth).toBeLessThan(JS_ALLOWANCE_MIB + (100_000 * 512) / MiB)
  })

  it('circuit breaker (maxKeys 10,000): 1,000,000 keys → ≤ 512 B a circuit held, LRU, flat cost', async () => {
    const r = await flood('circuit')
    expect(r.size).toBe(10_000)
    expect(r.growth).toBeLessThan(JS_ALLOWANCE_MIB + (10_000 * 512) / MiB)
  })

  it('cache (maxBytes 64 MiB, tiny entries): 1,000,000 keys → resident ≤ 1.25 × maxBytes, flat cost', async () => {
    const r = await flood('cacheBytes')
    expect(r.bytes).toBeLessThanOrEqual(64 * MiB)
    expect(r.bytes).toBeGreaterThan(63 * MiB)
    expect(r.growth).toBeLessThan(JS_ALLOWANCE_MIB + 1.25 * 64)
  })

  it('cache (maxEntries 10,000, 1 KiB bodies): 300,000 keys → resident ≤ 1.25 × the bytes held, flat cost', async () => {
    const r = await flood('cacheEntries', 300_000)
    expect(r.size).toBe(10_000)
    expect(r.growth).toBeLessThan(JS_ALLOWANCE_MIB + (1.25 * r.bytes) / MiB)
  })
}, 120_000)
