// No panic crosses the FFI boundary: hidden hooks (src/testing.rs) panic on
// purpose on each path the stores use, and each panic must come back as a
// thrown Error or a rejected Promise naming the cause, with the process alive
// and the same path working again afterwards.
import { createRequire } from 'node:module'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { memoryAdapter } from '../../index.mjs'
import { runNode } from '../support/processes.mjs'

const native = createRequire(import.meta.url)('../../native.js')
const INTERNAL = /^stoma-native( test hook)?: internal error: boom/

describe('reliability: no panic crosses the FFI boundary', () => {
  let previous
  beforeAll(() => {
    previous = process.env.STOMA_NATIVE_TEST_HOOKS
    process.env.STOMA_NATIVE_TEST_HOOKS = '1'
  })
  afterAll(() => {
    if (previous === undefined) delete process.env.STOMA_NATIVE_TEST_HOOKS
    else process.env.STOMA_NATIVE_TEST_HOOKS = previous
  })

  it('the hooks are off unless STOMA_NATIVE_TEST_HOOKS=1, and index.js does not export them', async () => {
    const out = await runNode(
      `import { createRequire } from 'node:module'
       const native = createRequire(import.meta.url)(process.env.STOMA_NATIVE_BINDING)
       const index = createRequire(import.meta.url)(process.env.STOMA_NATIVE)
       try { native.__forcePanicSync('boom') } catch (e) { console.log(e.message) }
       console.log(Object.keys(index).some((k) => k.startsWith('__')))`,
      { env: { STOMA_NATIVE_TEST_HOOKS: '' } },
    )
    expect(out.code).toBe(0)
    expect(out.stdout.trim().split('\n')).toEqual([
      'stoma-native test hook: disabled (set STOMA_NATIVE_TEST_HOOKS=1 to run it)',
      'false',
    ])
  })

  it('sync napi-rs method (guard): a thrown Error, every time', () => {
    for (let i = 0; i < 20; i++) {
      expect(() => native.__forcePanicSync(`boom ${i}`)).toThrow(
        new RegExp(`^stoma-native test hook: internal error: boom ${i}$`),
      )
    }
  })

  it('raw N-API fast call (the memory stores’ path): a thrown Error, and the function stays usable', () => {
    const { call } = native.__forcePanicFastcall()
    for (let i = 0; i < 20; i++) expect(() => call(`boom ${i}`)).toThrow(INTERNAL)
    expect(() => call('')).toThrow(/^empty message$/)
    expect(() => call(5)).toThrow(TypeError)
  })

  it('async fn on tokio (guard_async): a rejected Promise, many at once', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => native.__forcePanicAsync(`boom ${i}`)),
    )
    expect(results.every((r) => r.status === 'rejected' && INTERNAL.test(r.reason.message))).toBe(true)
  })

  it('Env::spawn_future (PostgreSQL cachePut’s path): a rejected Promise', async () => {
    await expect(native.__forcePanicSpawned('boom')).rejects.toThrow(INTERNAL)
  })

  it('after all of that the process and the stores work normally', async () => {
    const adapter = memoryAdapter()
    expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
    expect((await adapter.circuitBreakerStore.recordFailure('k')).failureCount).toBe(1)
    await adapter.cacheStore.put('k', new Response('ok'), 60)
    expect(await (await adapter.cacheStore.get('k')).text()).toBe('ok')
  })

  it('even an async fn with no guard of ours rejects (napi-rs catches it) rather than aborting', async () => {
    const out = await runNode(
      `import { createRequire } from 'node:module'
       const native = createRequire(import.meta.url)(process.env.STOMA_NATIVE_BINDING)
       const results = await Promise.allSettled([native.__forcePanicAsyncUnguarded('boom'), native.__forcePanicAsyncUnguarded('boom')])
       console.log(JSON.stringify(results.map((r) => r.status + ': ' + (r.reason?.message ?? ''))))`,
      { env: { STOMA_NATIVE_TEST_HOOKS: '1' }, limitMs: 20_000 },
    )
    expect({ code: out.code, stdout: out.stdout.trim() }).toMatchObject({ code: 0 })
    const results = JSON.parse(out.stdout.trim())
    expect(results).toHaveLength(2)
    for (const r of results) expect(r).toMatch(/^rejected: /)
  })
})
