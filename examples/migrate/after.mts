// After: the same gateway on stoma-native's — only the import line differs.
// Run it with tsx: npx tsx --tsconfig examples/migrate/tsconfig.run.json
// examples/migrate/after.mts. That config's `paths` point Stoma's specifiers at
// the dist files its package ships (its `exports` name sources it does not);
// tsconfig.json does the same with the .d.ts files, for tsc.
import { createGateway, rateLimit } from '@homegrower-club/stoma'
import { redisAdapter } from 'stoma-native/adapters/redis'
import Redis from 'ioredis'

const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
const adapter = redisAdapter({ client: redis, prefix: process.env.PREFIX ?? 'migrate-example:' })

const gateway = createGateway({
  adapter,
  routes: [
    {
      path: '/api',
      pipeline: {
        policies: [rateLimit({ max: 5, windowSeconds: 60, store: adapter.rateLimitStore, keyBy: () => 'one-client' })],
        upstream: { type: 'handler', handler: () => new Response('ok') },
      },
    },
  ],
})

const statuses = []
for (let i = 0; i < 3; i++) statuses.push((await gateway.app.request('/api')).status)
console.log(statuses.join(' '))
redis.disconnect()
