// Stoma's real gateway running in workerd on our Cloudflare adapter, built
// afresh for every request as Stoma's README shows. Rate limits and circuits
// live in Durable Objects, so they hold across those per-request gateways.
// BACKEND answers .../down with 500s, which should open the circuit;
// /stoma/down uses the circuit store of Stoma's own adapter, for contrast.
import { cache, circuitBreaker, createGateway, rateLimit } from '@homegrower-club/stoma'
import { cloudflareAdapter as stomaCloudflareAdapter } from '@homegrower-club/stoma/adapters/cloudflare'
import { CircuitBreakerDO, RateLimiterDO, cloudflareAdapter } from 'stoma-native/adapters/cloudflare'

export { CircuitBreakerDO, RateLimiterDO }

// Counts upstream renders in this isolate, to tell cache hits from misses.
let renders = 0

export default {
  fetch(request, env, ctx) {
    const adapter = cloudflareAdapter({
      rateLimitDo: env.RATE_LIMITER,
      circuitBreakerDo: env.CIRCUITS,
      executionCtx: ctx,
      env,
    })
    const stomaOwn = stomaCloudflareAdapter({ env })
    const gateway = createGateway({
      name: 'edge',
      adapter,
      routes: [
        {
          path: '/limited',
          pipeline: {
            policies: [
              rateLimit({ max: 2, windowSeconds: 60, keyBy: () => 'everyone', store: adapter.rateLimitStore }),
            ],
            upstream: { type: 'handler', handler: () => new Response('ok') },
          },
        },
        {
          path: '/cached',
          pipeline: {
            policies: [cache({ ttlSeconds: 60, store: adapter.cacheStore })],
            upstream: { type: 'handler', handler: () => new Response(`render ${++renders}`) },
          },
        },
        {
          path: '/down',
          pipeline: {
            policies: [
              circuitBreaker({ failureThreshold: 2, resetTimeoutMs: 60_000, store: adapter.circuitBreakerStore }),
            ],
            upstream: { type: 'service-binding', service: 'BACKEND' },
          },
        },
        {
          path: '/stoma/down',
          pipeline: {
            policies: [
              circuitBreaker({ failureThreshold: 2, resetTimeoutMs: 60_000, store: stomaOwn.circuitBreakerStore }),
            ],
            upstream: { type: 'service-binding', service: 'BACKEND' },
          },
        },
      ],
    })
    return gateway.app.fetch(request, env, ctx)
  },
}
