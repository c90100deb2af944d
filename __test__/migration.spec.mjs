// Migrating from Stoma by changing one import line: examples/migrate/before.mts
// (Stoma's redisAdapter on an ioredis client) and after.mts (ours, same code)
// differ only in that line; both type-check against Stoma's types and run
// under tsx with the README's tsconfig paths, and the counter the first
// leaves is the one the second goes on with (same Redis data).
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import Redis from 'ioredis'
import { describe, expect, it } from 'vitest'
import { REDIS_URL } from './support/processes.mjs'

const run = promisify(execFile)
const root = fileURLToPath(new URL('..', import.meta.url))
const example = (name) => `${root}examples/migrate/${name}`
const code = (name) =>
  readFileSync(example(name), 'utf8')
    .split('\n')
    .filter((line) => !line.startsWith('//'))

describe('migrating from Stoma by its import line', () => {
  it('before.mts and after.mts differ only in the import of redisAdapter', () => {
    const before = code('before.mts')
    const after = code('after.mts')
    const differing = before.map((line, i) => [line, after[i]]).filter(([a, b]) => a !== b)
    expect(before.length).toBe(after.length)
    expect(differing).toEqual([
      [
        "import { redisAdapter } from '@homegrower-club/stoma/adapters/redis'",
        "import { redisAdapter } from 'stoma-native/adapters/redis'",
      ],
    ])
  })

  it('both type-check against Stoma’s types', async () => {
    await run(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-p', example('tsconfig.json')])
  })

  it('the switched gateway goes on with the counts Stoma’s left in Redis', async () => {
    const prefix = `stoma-native-migration-test:${process.pid}:`
    const tsx = (name) =>
      run(
        process.execPath,
        [`${root}node_modules/tsx/dist/cli.mjs`, '--tsconfig', example('tsconfig.run.json'), example(name)],
        {
          env: { ...process.env, REDIS_URL, PREFIX: prefix },
          cwd: root,
        },
      )
    const redis = new Redis(REDIS_URL)
    try {
      expect((await tsx('before.mts')).stdout.trim()).toBe('200 200 200')
      expect((await tsx('after.mts')).stdout.trim()).toBe('200 200 429')
      expect(await redis.get(`${prefix}rl:one-client`)).toBe('6')
    } finally {
      await redis.del(`${prefix}rl:one-client`)
      redis.disconnect()
    }
  }, 60_000)
})
