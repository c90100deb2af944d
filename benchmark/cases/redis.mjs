// Redis stores: ours (redis-rs on tokio, one multiplexed pipelined
// connection, EVALSHA, envelope in Rust) against Stoma's redisAdapter on
// ioredis, same server, each side under its own key prefix.
import Redis from 'ioredis'
import { redisAdapter } from 'stoma-native'

const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

async function adapters(stoma) {
  const prefix = `bench:${process.pid}:${Date.now()}:`
  const client = new Redis(url)
  const ours = redisAdapter({ url, prefix: `${prefix}ours:` })
  const theirs = stoma.redisAdapter({ client, prefix: `${prefix}stoma:` })
  return {
    ours,
    theirs,
    async teardown() {
      await ours.close()
      const keys = await client.keys(`${prefix}*`)
      if (keys.length > 0) await client.del(...keys)
      client.disconnect()
    },
  }
}

function incrementCase(name, concurrency, target) {
  return {
    name,
    target,
    concurrency,
    async setup({ stoma }) {
      const { ours, theirs, teardown } = await adapters(stoma)
      return {
        ours: (i) => ours.rateLimitStore.increment(`client:${i % 1000}`, 60),
        theirs: (i) => theirs.rateLimitStore.increment(`client:${i % 1000}`, 60),
        teardown,
      }
    },
  }
}

function cacheCase(name, bytes, target) {
  const body = new Uint8Array(bytes).map((_, i) => (i * 7) % 256)
  return {
    name,
    target,
    samples: 5,
    async setup({ stoma }) {
      const { ours, theirs, teardown } = await adapters(stoma)
      const roundTrip = (store) => async (i) => {
        const key = `page:${i % 8}`
        await store.put(key, new Response(body, { headers: { 'content-type': 'application/octet-stream' } }), 60)
        await (await store.get(key)).arrayBuffer()
      }
      return { ours: roundTrip(ours.cacheStore), theirs: roundTrip(theirs.cacheStore), teardown }
    },
  }
}

export default function redisCases() {
  return [
    incrementCase('redis: rate-limit increment, sequential', 1, 1.5),
    incrementCase('redis: rate-limit increment, 64 in flight', 64, 2.5),
    {
      name: 'redis: circuit recordFailure, 64 in flight',
      concurrency: 64,
      async setup({ stoma }) {
        const { ours, theirs, teardown } = await adapters(stoma)
        return {
          ours: (i) => ours.circuitBreakerStore.recordFailure(`upstream:${i % 16}`),
          theirs: (i) => theirs.circuitBreakerStore.recordFailure(`upstream:${i % 16}`),
          teardown,
        }
      },
    },
    cacheCase('redis: cache put+get 64 KiB', 64 * 1024, 10),
    cacheCase('redis: cache put+get 1 MiB', 1024 * 1024, 30),
  ]
}
