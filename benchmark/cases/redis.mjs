// Redis stores: ours (one pipelined connection written and read from the
// JS thread, EVALSHA, calls of one key in one flush merged, envelope in
// Rust) against Stoma's redisAdapter on ioredis, same server, each side
// under its own key prefix.
import Redis from 'ioredis'
import { redisAdapter } from 'stoma-native'
import { cacheCase, circuitCase, incrementCase, slidingCase } from './network.mjs'
import { deleteRedisKeys } from '../../scripts/cleanup.mjs'

const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

async function adapters(stoma, options = {}) {
  const prefix = `bench:${process.pid}:${Date.now()}:`
  const client = new Redis(url)
  const ours = redisAdapter({ url, prefix: `${prefix}ours:`, ...options })
  const theirs = stoma.redisAdapter({ client, prefix: `${prefix}stoma:` })
  return {
    ours,
    theirs,
    async teardown() {
      await ours.close()
      await deleteRedisKeys(prefix, client)
      client.disconnect()
    },
  }
}

/** Our two rate-limit algorithms on one server, under one prefix (their keys differ: rl: and rls:). */
async function slidingAndFixed() {
  const prefix = `bench:${process.pid}:${Date.now()}:`
  const sliding = redisAdapter({ url, prefix, rateLimit: { algorithm: 'sliding-window' } })
  const fixed = redisAdapter({ url, prefix })
  return {
    sliding,
    fixed,
    async teardown() {
      await sliding.close()
      await fixed.close()
      await deleteRedisKeys(prefix)
    },
  }
}

export default function redisCases() {
  return [
    incrementCase('redis: rate-limit increment, sequential', { adapters, concurrency: 1, target: 1.5 }),
    incrementCase('redis: rate-limit increment, 64 in flight', { adapters, concurrency: 64, target: 2.5 }),
    {
      name: 'redis: rate-limit increment, one hot key, 64 in flight',
      target: 4,
      concurrency: 64,
      async setup({ stoma }) {
        const { ours, theirs, teardown } = await adapters(stoma)
        return {
          ours: () => ours.rateLimitStore.increment('one-api-key', 60),
          theirs: () => theirs.rateLimitStore.increment('one-api-key', 60),
          teardown,
        }
      },
    },
    circuitCase('redis: circuit recordFailure, 64 in flight', { adapters, concurrency: 64 }),
    cacheCase('redis: cache put+get 64 KiB', { adapters, bytes: 64 * 1024, target: 10 }),
    {
      name: 'redis: cache get hit 64 KiB, nearCache',
      target: 20,
      samples: 5,
      async setup({ stoma }) {
        const { ours, theirs, teardown } = await adapters(stoma, { nearCache: true })
        const body = new Uint8Array(64 * 1024).map((_, i) => (i * 7) % 256)
        for (const store of [ours.cacheStore, theirs.cacheStore]) await store.put('page', new Response(body), 300)
        const read = (store) => async () => {
          await (await store.get('page')).arrayBuffer()
        }
        return { ours: read(ours.cacheStore), theirs: read(theirs.cacheStore), teardown }
      },
    },
    cacheCase('redis: cache put+get 1 MiB', { adapters, bytes: 1024 * 1024, target: 30 }),
    slidingCase('redis: sliding ÷ fixed window (both ours), sequential', { open: slidingAndFixed, concurrency: 1 }),
    slidingCase('redis: sliding ÷ fixed window (both ours), 64 in flight', { open: slidingAndFixed, concurrency: 64 }),
  ]
}
