// Cross-process exactness: 2 Node processes × 5,000 calls on one key, on
// Redis and on PostgreSQL, must leave exactly 10,000: recordFailure leaves
// failureCount 10,000, and increments in one window reach count 10,000 with
// every count from 1 to 10,000 handed out exactly once.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { afterAll, describe, expect, it } from 'vitest'
import { postgresAdapter, redisAdapter } from '../../index.mjs'
import { DATABASE_URL, REDIS_URL, entry } from '../support/processes.mjs'
import { deleteRedisKeys, dropTables } from '../../scripts/cleanup.mjs'

const RUN = `xproc${process.pid}_${Date.now().toString(36)}`
const PER_PROCESS = 5_000

const WORKER = `
import { createRequire } from 'node:module'
const { redisAdapter, postgresAdapter } = createRequire(import.meta.url)(process.env.STOMA_NATIVE)
const [backend, op] = process.argv.slice(-2)
const adapter = backend === 'redis'
  ? redisAdapter({ url: process.env.REDIS_URL, prefix: process.env.PREFIX })
  : postgresAdapter({ url: process.env.DATABASE_URL, tablePrefix: process.env.PREFIX })
const counts = []
let next = 0
await Promise.all(Array.from({ length: 32 }, async () => {
  while (next < ${PER_PROCESS}) {
    next++
    if (op === 'failure') await adapter.circuitBreakerStore.recordFailure('shared')
    else counts.push((await adapter.rateLimitStore.increment('shared', 600)).count)
  }
}))
await adapter.close()
console.log(JSON.stringify(counts))
`

async function twoProcesses(backend, op) {
  const env = {
    ...process.env,
    STOMA_NATIVE: entry,
    REDIS_URL,
    DATABASE_URL,
    PREFIX: backend === 'redis' ? `${RUN}:` : `${RUN}_`,
  }
  const children = [0, 1].map(() => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', WORKER, backend, op], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c) => (stdout += c))
    child.stderr.on('data', (c) => (stderr += c))
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    return once(child, 'exit').then(([code]) => {
      clearTimeout(timer)
      expect(code, stderr).toBe(0)
      return JSON.parse(stdout.trim())
    })
  })
  return (await Promise.all(children)).flat()
}

afterAll(async () => {
  await deleteRedisKeys(`${RUN}:`)
  await dropTables(`${RUN}_`)
})

const backends = {
  redis: () => redisAdapter({ url: REDIS_URL, prefix: `${RUN}:` }),
  postgres: async () => {
    const adapter = postgresAdapter({ url: DATABASE_URL, tablePrefix: `${RUN}_` })
    await adapter.ensureSchema()
    return adapter
  },
}

for (const [backend, create] of Object.entries(backends)) {
  describe(`reliability: 2 processes × ${PER_PROCESS} calls on one key, ${backend}`, () => {
    it('recordFailure leaves failureCount 10,000', async () => {
      const adapter = await create()
      await adapter.circuitBreakerStore.reset('shared')
      await twoProcesses(backend, 'failure')
      expect((await adapter.circuitBreakerStore.getState('shared')).failureCount).toBe(2 * PER_PROCESS)
      await adapter.close()
    })

    it('increments in one window hand out 1..10,000, each once', async () => {
      const adapter = await create()
      const counts = await twoProcesses(backend, 'increment')
      expect(counts).toHaveLength(2 * PER_PROCESS)
      expect(new Set(counts).size).toBe(2 * PER_PROCESS)
      expect(Math.min(...counts)).toBe(1)
      expect(Math.max(...counts)).toBe(2 * PER_PROCESS)
      expect((await adapter.rateLimitStore.increment('shared', 600)).count).toBe(2 * PER_PROCESS + 1)
      await adapter.close()
    })
  })
}
