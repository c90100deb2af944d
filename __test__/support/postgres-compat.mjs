// Our PostgreSQL stores and Stoma's postgresAdapter on the same tables, each
// reading what the other wrote: the tests shared by the direct and the
// pooled (PgBouncer) suites.
import { randomBytes } from 'node:crypto'
import { expect, it } from 'vitest'

/**
 * Registers the tests in the current describe; `sides()` answers `{ ours,
 * stoma, direct, prefix }` (the two adapters on tables named `prefix`, and
 * a pg Pool straight to PostgreSQL) once its beforeAll has run.
 */
export function readEachOther(sides) {
  it('rate limit: each continues the window the other opened', async () => {
    const { ours, stoma } = sides()
    const first = await stoma.rateLimitStore.increment('rl:stoma-first', 60)
    expect(await ours.rateLimitStore.increment('rl:stoma-first', 60)).toEqual({ count: 2, resetAt: first.resetAt })
    expect(await stoma.rateLimitStore.increment('rl:stoma-first', 60)).toEqual({ count: 3, resetAt: first.resetAt })

    const mine = await ours.rateLimitStore.increment('rl:ours-first', 60)
    expect(await stoma.rateLimitStore.increment('rl:ours-first', 60)).toEqual({ count: 2, resetAt: mine.resetAt })
  })

  it('circuit breaker: snapshots written by either read the same through both', async () => {
    const { ours, stoma } = sides()
    await stoma.circuitBreakerStore.recordFailure('cb:stoma')
    await stoma.circuitBreakerStore.recordFailure('cb:stoma')
    await stoma.circuitBreakerStore.recordSuccess('cb:stoma')
    const theirs = await stoma.circuitBreakerStore.getState('cb:stoma')
    expect(theirs).toMatchObject({ state: 'closed', failureCount: 2, successCount: 1 })
    expect(await ours.circuitBreakerStore.getState('cb:stoma')).toEqual(theirs)
    expect(await ours.circuitBreakerStore.recordFailure('cb:stoma')).toMatchObject({ failureCount: 3, successCount: 1 })

    await ours.circuitBreakerStore.recordFailure('cb:ours')
    await ours.circuitBreakerStore.recordSuccess('cb:ours')
    const opened = await ours.circuitBreakerStore.transition('cb:ours', 'open')
    expect(await stoma.circuitBreakerStore.getState('cb:ours')).toEqual(opened)
    expect(await stoma.circuitBreakerStore.recordFailure('cb:ours')).toMatchObject({ state: 'open', failureCount: 2 })
    const halfOpen = await ours.circuitBreakerStore.transition('cb:ours', 'half-open')
    expect(halfOpen).toMatchObject({ state: 'half-open', failureCount: 2, successCount: 0 })
    expect(await stoma.circuitBreakerStore.getState('cb:ours')).toEqual(halfOpen)

    await stoma.circuitBreakerStore.reset('cb:ours')
    expect(await ours.circuitBreakerStore.getState('cb:ours')).toMatchObject({ state: 'closed', failureCount: 0 })
  })

  it('cache: binary bodies and headers round-trip byte for byte in both directions', async () => {
    const { ours, stoma, direct, prefix } = sides()
    const headers = [
      ['content-type', 'application/octet-stream'],
      ['set-cookie', 'a=1'],
      ['set-cookie', 'b=2'],
      ['x-unicode', 'caf\u00e9'],
    ]
    for (const [writer, reader] of [
      [stoma, ours],
      [ours, stoma],
    ]) {
      const body = randomBytes(64 * 1024 + 3)
      await writer.cacheStore.put('c:binary', new Response(body, { status: 203, headers }), 60)
      const hit = await reader.cacheStore.get('c:binary')
      expect(hit.status).toBe(203)
      expect([...hit.headers]).toEqual([...new Headers(headers)])
      expect(Buffer.from(await hit.arrayBuffer()).equals(body)).toBe(true)

      await writer.cacheStore.put('c:204', new Response(null, { status: 204, headers: { etag: '"e"' } }), 60)
      const empty = await reader.cacheStore.get('c:204')
      expect(empty.status).toBe(204)
      expect(empty.body).toBeNull()
      expect(empty.headers.get('etag')).toBe('"e"')

      expect(await reader.cacheStore.delete('c:binary')).toBe(true)
      expect(await writer.cacheStore.get('c:binary')).toBeNull()
    }
    // The same row text, whoever wrote it.
    await stoma.cacheStore.put('c:same', new Response('same', { headers: { 'x-a': '1' } }), 60)
    const {
      rows: [theirs],
    } = await direct.query(`SELECT status, headers, body FROM ${prefix}cache WHERE key = 'c:same'`)
    await ours.cacheStore.put('c:same', new Response('same', { headers: { 'x-a': '1' } }), 60)
    const {
      rows: [mine],
    } = await direct.query(`SELECT status, headers, body FROM ${prefix}cache WHERE key = 'c:same'`)
    expect(mine).toEqual(theirs)
  })
}
