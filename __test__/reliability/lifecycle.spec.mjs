// Lifecycle: 10,000 create/close cycles of each adapter (calls in every
// 100th; close() twice; a call after close() must reject naming the store),
// and 10,000 memory adapters left to the GC instead of closed,
// leave no growth in open file descriptors and bounded RSS growth after GC
// (measured after a warm-up, once the allocator and V8 reach a steady state).
// Each kind runs in its own child process, so its fds and RSS are its own.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { postgresAdapter } from '../../index.mjs'
import { DATABASE_URL, REDIS_URL, entry, lastJson } from '../support/processes.mjs'
import { deleteRedisKeys, dropTables } from '../../scripts/cleanup.mjs'

const child = fileURLToPath(new URL('../support/lifecycle-child.mjs', import.meta.url))
const RUN = `life${process.pid}_${Date.now().toString(36)}`
const RSS_GROWTH_MIB = 32

async function cycles(kind, count = 10_000, warmUp = 500) {
  const proc = spawn(process.execPath, ['--expose-gc', child, kind, String(count), String(warmUp)], {
    env: {
      ...process.env,
      STOMA_NATIVE: entry,
      REDIS_URL,
      DATABASE_URL,
      PREFIX: kind === 'redis' ? `${RUN}:` : `${RUN}_`,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  proc.stdout.on('data', (c) => (stdout += c))
  proc.stderr.on('data', (c) => (stderr += c))
  const timer = setTimeout(() => proc.kill('SIGKILL'), 100_000)
  const [code] = await once(proc, 'exit')
  clearTimeout(timer)
  expect(code, stderr).toBe(0)
  const r = lastJson(stdout)
  console.log(
    `lifecycle ${kind}: ${r.cycles} cycles in ${r.ms} ms, fds ${r.before.fds} → ${r.after.fds}, rss ${r.before.rss.toFixed(1)} → ${r.after.rss.toFixed(1)} MiB`,
  )
  expect(r.after.fds).toBeLessThanOrEqual(r.before.fds + 2)
  expect(r.after.rss - r.before.rss).toBeLessThan(RSS_GROWTH_MIB)
  return r
}

describe('reliability: 10,000 create/close cycles per adapter', () => {
  beforeAll(async () => {
    const adapter = postgresAdapter({ url: DATABASE_URL, tablePrefix: `${RUN}_` })
    await adapter.ensureSchema()
    await adapter.close()
  })
  afterAll(async () => {
    await deleteRedisKeys(`${RUN}:`)
    await dropTables(`${RUN}_`)
  })

  it('memoryAdapter (after 20,000 warm-up cycles: RSS rises until then, then stays flat)', () =>
    cycles('memory', 10_000, 20_000))
  it('memoryAdapter never closed, its unnamed state freed with it by the GC', () =>
    cycles('memory-dropped', 10_000, 20_000))
  // RSS rises in steps over the first ~40,000 cycles, then levels off (one
  // run: 84, 102, 125, 130, 132, 132 MiB after each 10,000; the same with
  // MALLOC_ARENA_MAX=2): measured after that warm-up, where 500 left the
  // bound to chance (CI measured 32.3 MiB).
  it('redisAdapter (connects in the background on creation; after 40,000 warm-up cycles)', () =>
    cycles('redis', 10_000, 40_000))
  it('postgresAdapter (connects on first use)', () => cycles('postgres'))
}, 120_000)
