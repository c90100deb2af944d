// A Stoma gateway on localhost whose rate-limit and cache policies run on
// stoma-native's memory stores. It serves on a free port, makes a few
// requests against itself, prints what came back, and exits.
//
//   npm ci && npm run demo        (PORT=8787 npm run demo -- --serve keeps it running)
import { serve } from '@hono/node-server'
import { memoryAdapter } from 'stoma-native'
import { loadStoma } from '../scripts/load-stoma.mjs'

const { createGateway, rateLimit, cache } = await loadStoma('index.js')
const adapter = memoryAdapter()

const gateway = createGateway({
  name: 'stoma-native-demo',
  adapter,
  routes: [
    {
      path: '/limited',
      pipeline: {
        policies: [rateLimit({ max: 3, windowSeconds: 60, store: adapter.rateLimitStore, keyBy: () => 'demo-client' })],
        upstream: { type: 'handler', handler: () => Response.json({ ok: true }) },
      },
    },
    {
      path: '/cached',
      methods: ['GET'],
      pipeline: {
        policies: [cache({ ttlSeconds: 30, store: adapter.cacheStore })],
        upstream: {
          type: 'handler',
          handler: () => Response.json({ renderedAt: new Date().toISOString() }),
        },
      },
    },
  ],
})

const keepServing = process.argv.includes('--serve')
const server = serve({ fetch: gateway.app.fetch, port: Number(process.env.PORT ?? 0), hostname: '127.0.0.1' })
await new Promise((resolve) => server.once('listening', resolve))
const base = `http://127.0.0.1:${server.address().port}`
console.log(`Stoma gateway with stoma-native memoryAdapter() on ${base}\n`)

for (let i = 1; i <= 4; i++) {
  const res = await fetch(`${base}/limited`)
  console.log(`GET /limited #${i} -> ${res.status} ${res.status === 429 ? '(rate limited after 3)' : await res.text()}`)
}
for (let i = 1; i <= 2; i++) {
  const res = await fetch(`${base}/cached`)
  console.log(`GET /cached  #${i} -> ${res.status} x-cache: ${res.headers.get('x-cache')} ${await res.text()}`)
}

if (keepServing) {
  console.log(`\nServing on ${base} (Ctrl-C to stop)`)
} else {
  server.close()
}
