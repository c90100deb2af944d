// The one smoke script every runtime runs against the installed tarballs
// (copied into a temporary project by __test__/runtimes.spec.mjs):
//   node smoke.mjs            ESM: import 'stoma-native'
//   node smoke.cjs            CommonJS: require('stoma-native'), then run() below
//   bun smoke.mjs / deno run … smoke.mjs
// It prints one line `SMOKE {json}` listing the checks that passed (and any
// skipped), or the failure on stderr with exit code 1.
// STOMA_SMOKE_PLATFORM names the platform package expected to hold the addon
// (linux-x64-gnu unless set; CI's test job sets it on every OS), and
// STOMA_SMOKE_REDIS=skip skips the Redis check where there is no Redis.
import { createRequire } from 'node:module'
import process from 'node:process'

const require = createRequire(import.meta.url)
const platform = process.env.STOMA_SMOKE_PLATFORM || 'linux-x64-gnu'
const skipRedis = process.env.STOMA_SMOKE_REDIS === 'skip'
const runtime = typeof globalThis.Bun !== 'undefined' ? 'bun' : typeof globalThis.Deno !== 'undefined' ? 'deno' : 'node'
const runtimeVersion = {
  bun: () => globalThis.Bun.version,
  deno: () => globalThis.Deno.version.deno,
  node: () => process.versions.node,
}[runtime]()

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`)
}

/** `api` is the package's exports as `how` ('import' or 'require') loaded them. */
export async function run(api, how) {
  const checks = []
  const skipped = []
  const check = async (name, fn) => {
    try {
      await fn()
    } catch (error) {
      error.message = `${name}: ${error.message}`
      throw error
    }
    checks.push(name)
  }

  await check('import and require give the same objects', async () => {
    const other = how === 'import' ? require('stoma-native') : await import('stoma-native')
    for (const name of [
      'memoryAdapter',
      'nodeAdapter',
      'bunAdapter',
      'denoAdapter',
      'TestAdapter',
      'redisAdapter',
      'MemoryCacheStore',
    ]) {
      assert(typeof api[name] === 'function', `${name} is exported`)
      assert(other[name] === api[name], `${name} is the same through import and require`)
    }
  })

  let addon
  await check('addon from the platform package', () => {
    const platformPackage = require.resolve(`stoma-native-${platform}`)
    const [dir, file] = platformPackage.split(/[\\/]/).slice(-2)
    assert(
      /[\\/]node_modules[\\/]/.test(platformPackage) &&
        dir === `stoma-native-${platform}` &&
        file === `stoma-native.${platform}.node`,
      platformPackage,
    )
    addon = platformPackage
  })

  await check(`${runtime}Adapter stores`, async () => {
    const adapter = api[`${runtime}Adapter`]()
    const first = await adapter.rateLimitStore.increment('k', 60)
    const second = await adapter.rateLimitStore.increment('k', 60)
    assert(
      first.count === 1 && second.count === 2 && second.resetAt === first.resetAt,
      `counts ${JSON.stringify([first, second])}`,
    )
    await adapter.circuitBreakerStore.recordFailure('up')
    assert((await adapter.circuitBreakerStore.recordFailure('up')).failureCount === 2, 'two failures')
    assert((await adapter.circuitBreakerStore.transition('up', 'open')).state === 'open', 'circuit opens')
    await adapter.cacheStore.put('page', new Response('hello', { status: 201, headers: { 'x-a': '1' } }), 60)
    const hit = await adapter.cacheStore.get('page')
    assert(
      hit instanceof Response && hit.status === 201 && hit.headers.get('x-a') === '1' && (await hit.text()) === 'hello',
      'cache round trip',
    )
    const fresh = api[`${runtime}Adapter`]()
    assert((await fresh.rateLimitStore.increment('k', 60)).count === 1, 'new stores per call')
  })

  await check('memory stores: named state, binary bodies, bad input', async () => {
    const name = `smoke-${runtime}-${how}`
    const a = api.memoryAdapter({ name })
    const b = api.memoryAdapter({ name })
    await a.rateLimitStore.increment('shared', 60)
    assert((await b.rateLimitStore.increment('shared', 60)).count === 2, 'one named state')
    const cache = new api.MemoryCacheStore({ maxEntries: 2 })
    const body = new Uint8Array(4096).map((_, i) => (i * 7) & 255)
    await cache.put('bin', new Response(body), 60)
    const bytes = new Uint8Array(await (await cache.get('bin')).arrayBuffer())
    assert(bytes.length === body.length && bytes.every((v, i) => v === body[i]), 'binary body byte for byte')
    let rejected
    await a.rateLimitStore.increment(42, 60).catch((error) => {
      rejected = error
    })
    assert(
      rejected instanceof TypeError && /key/.test(rejected.message),
      `bad key rejects with TypeError, got ${rejected}`,
    )
  })

  const redisCheck = skipRedis ? (name) => skipped.push(name) : check
  await redisCheck('redis increment', async () => {
    const prefix = `${process.env.STOMA_SMOKE_PREFIX ?? 'stoma-native-smoke:'}${runtime}:${how}:`
    const adapter = api.redisAdapter({ url: process.env.REDIS_URL || 'redis://127.0.0.1:6379', prefix })
    try {
      const first = await adapter.rateLimitStore.increment('hits', 30)
      const second = await adapter.rateLimitStore.increment('hits', 30)
      assert(
        first.count === 1 && second.count === 2 && second.resetAt === first.resetAt,
        `redis counts ${JSON.stringify([first, second])}`,
      )
      await adapter.cacheStore.put('page', new Response('cached', { headers: { 'x-b': '2' } }), 30)
      const hit = await adapter.cacheStore.get('page')
      assert((await hit.text()) === 'cached' && hit.headers.get('x-b') === '2', 'redis cache round trip')
    } finally {
      await adapter.close()
    }
  })

  await check('TestAdapter waitAll', async () => {
    const adapter = new api.TestAdapter()
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
    adapter.waitUntil(
      sleep(20).then(async () => {
        await adapter.rateLimitStore.increment('bg', 60)
        // queued while waitAll() is already waiting
        adapter.waitUntil(sleep(20).then(() => adapter.rateLimitStore.increment('bg', 60)))
      }),
    )
    await adapter.waitAll()
    assert(
      (await adapter.rateLimitStore.increment('bg', 60)).count === 3,
      'waitAll awaited background work, including work queued while waiting',
    )
    adapter.waitUntil(sleep(5).then(() => Promise.reject(new Error('boom'))))
    let failure
    await adapter.waitAll().catch((error) => {
      failure = error
    })
    assert(failure?.message === 'boom', 'waitAll rejects with the failure')
  })

  assert(checks.length + skipped.length === 6, 'every check ran or was skipped')
  console.log(`SMOKE ${JSON.stringify({ runtime, runtimeVersion, how, checks, skipped, addon })}`)
}

if (process.argv.includes('--esm')) {
  try {
    await run(await import('stoma-native'), 'import')
  } catch (error) {
    console.error(error)
    process.exit(1)
  }
}
