// One Stoma gateway served over HTTP by @hono/node-server, its rateLimit and
// cache policies on Redis through either this package's stores ("ours", or
// "ours-near" with the near cache), Stoma's own redisAdapter on ioredis
// ("stoma"), or stores that do nothing ("none"). Run as a child process by
// benchmark/cases/e2e.mjs so the load generator does not share its thread.
//
//   node benchmark/e2e-server.mjs <ours|ours-near|stoma|none> <prefix>   → prints {"port":N}
import { serve } from '@hono/node-server'
import Redis from 'ioredis'
import { redisAdapter } from 'stoma-native'
import { loadStoma } from '../scripts/load-stoma.mjs'

const [which, prefix] = process.argv.slice(2)
const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const { createGateway, rateLimit, cache } = await loadStoma('index.js')

// "none": stores that do nothing, for the ceiling — what the gateway, Hono
// and Node's HTTP server cost a request with no store to ask.
const nothing = {
  rateLimitStore: {
    increment: async (_key, windowSeconds) => ({ count: 1, resetAt: Date.now() + windowSeconds * 1000 }),
  },
  cacheStore: { get: async () => null, put: async () => {}, delete: async () => false },
}

let adapter
if (which === 'ours') {
  adapter = redisAdapter({ url, prefix })
} else if (which === 'ours-near') {
  adapter = redisAdapter({ url, prefix, nearCache: true })
} else if (which === 'none') {
  adapter = nothing
} else {
  const stomaAdapters = await loadStoma('adapters/index.js')
  adapter = stomaAdapters.redisAdapter({ client: new Redis(url), prefix })
}

const page64k = new Uint8Array(64 * 1024).map((_, i) => (i * 31) % 256)
const gateway = createGateway({
  adapter,
  routes: [
    {
      path: '/limited',
      pipeline: {
        policies: [
          rateLimit({
            max: 1e12,
            windowSeconds: 60,
            store: adapter.rateLimitStore,
            keyBy: (c) => c.req.header('x-client') ?? 'anon',
          }),
        ],
        upstream: { type: 'handler', handler: () => Response.json({ ok: true }) },
      },
    },
    {
      path: '/cached',
      methods: ['GET'],
      pipeline: {
        policies: [cache({ ttlSeconds: 300, store: adapter.cacheStore })],
        upstream: {
          type: 'handler',
          handler: () => new Response(page64k, { headers: { 'content-type': 'application/octet-stream' } }),
        },
      },
    },
  ],
})

const server = serve({ fetch: gateway.app.fetch, port: 0, hostname: '127.0.0.1' })
server.once('listening', () => console.log(JSON.stringify({ port: server.address().port })))
process.on('SIGTERM', () => server.close(() => process.exit(0)))
