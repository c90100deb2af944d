// The Worker the Cloudflare tests run inside workerd (through miniflare).
// It imports the adapter by its package name, so bundling it exercises the
// package.json `workerd` export condition, and it builds a new adapter for
// every request, as Workers usually do.
import { CircuitBreakerDO, RateLimiterDO, cloudflareAdapter } from 'stoma-native/adapters/cloudflare'
import { decode, encode } from './cloudflare-codec.mjs'

export { CircuitBreakerDO, RateLimiterDO }
// Stoma's own class, which counts a fixed window whatever it is asked.
export { RateLimiterDO as StomaRateLimiterDO } from '@homegrower-club/stoma/adapters/durable-object'

// Named adapter configurations the tests pick from.
async function bindingsFor(profile, env, ctx) {
  switch (profile) {
    case 'durable':
      return { rateLimitDo: env.RATE_LIMITER, circuitBreakerDo: env.CIRCUITS, executionCtx: ctx, env }
    case 'isolate':
      return {
        rateLimitDo: env.RATE_LIMITER,
        cache: await caches.open('isolate'),
        cacheOrigin: 'https://isolate.example',
      }
    case 'kv':
      return { rateLimitKv: env.RATE_LIMIT_KV }
    case 'both':
      return { rateLimitKv: env.RATE_LIMIT_KV, rateLimitDo: env.RATE_LIMITER }
    case 'sliding':
      return { rateLimitDo: env.RATE_LIMITER, rateLimit: { algorithm: 'sliding-window' } }
    case 'sliding-on-stoma-do':
      return { rateLimitDo: env.STOMA_RATE_LIMITER, rateLimit: { algorithm: 'sliding-window' } }
    case 'sliding-kv':
      return { rateLimitKv: env.RATE_LIMIT_KV, rateLimit: { algorithm: 'sliding-window' } }
    default:
      throw new Error(`unknown profile ${profile}`)
  }
}

async function callStore(request, env, ctx) {
  const { profile, store, method, args } = decode(await request.json())
  try {
    // Inside the try: a refused option comes back as the error it is.
    const adapter = cloudflareAdapter(await bindingsFor(profile, env, ctx))
    return Response.json({ result: await encode(await adapter[store][method](...args)) })
  } catch (error) {
    return Response.json({ error: await encode(error) })
  }
}

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url)
    const profile = url.searchParams.get('profile') ?? 'durable'
    switch (url.pathname) {
      case '/store':
        return callStore(request, env, ctx)

      case '/kinds': {
        const adapter = cloudflareAdapter(await bindingsFor(profile, env, ctx))
        const kinds = {}
        for (const [name, value] of Object.entries(adapter))
          kinds[name] = typeof value === 'function' ? 'function' : value.constructor.name
        return Response.json(kinds)
      }

      case '/dispatch': {
        const adapter = cloudflareAdapter({ env })
        const outgoing = new Request('https://backend.internal/hello', { headers: { 'x-test': 'via-binding' } })
        try {
          return await adapter.dispatchBinding(url.searchParams.get('service'), outgoing)
        } catch (error) {
          return new Response(error.message, { status: 502 })
        }
      }

      case '/background': {
        // The response goes out at once; the KV write happens later and
        // only survives because waitUntil keeps the request's work alive.
        const adapter = cloudflareAdapter({ executionCtx: ctx })
        const key = url.searchParams.get('key')
        adapter.waitUntil(
          (async () => {
            await new Promise((resolve) => setTimeout(resolve, 300))
            await env.RATE_LIMIT_KV.put(key, 'done')
          })(),
        )
        return new Response('accepted', { status: 202 })
      }

      default:
        return new Response('not found', { status: 404 })
    }
  },
}
