// How the PostgreSQL stores send their statements (issue #13 follow-up), seen
// from the server: a private cluster with pg_stat_statements tracking
// planning, so `plans` against `calls` tells named statements (planned a few
// times per connection, then a cached plan) from unnamed ones (planned on
// every call), and the server's log shows each Bind it refused. Straight to
// the server the statements stay named; behind Debian's PgBouncer (1.18, no
// named statement support) in transaction mode the pool switches to unnamed
// ones for good, with every call answered once and run once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import pg from 'pg'
import { postgresAdapter } from '../index.mjs'
import { startPgbouncer } from '../scripts/pgbouncer.mjs'
import { PG_BIN, startCluster } from './support/postgres-servers.mjs'
import { sleep } from './support/processes.mjs'

const sorted = (numbers) => [...numbers].sort((a, b) => a - b)
const oneTo = (n) => Array.from({ length: n }, (_, i) => i + 1)
// The server's log line for a Bind of one of our statements it does not have.
const REFUSED = /ERROR: {2}prepared statement "stoma_[0-9a-f]{16}_\d+" does not exist/g

describe.skipIf(!PG_BIN)('postgres statements: named straight to the server, unnamed behind a pooler', () => {
  let cluster
  let admin // straight to the cluster
  const adapters = []
  let prefixes = 0

  beforeAll(async () => {
    cluster = await startCluster({
      settings: { shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track_planning': 'on' },
    })
    admin = new pg.Pool({ connectionString: cluster.url, max: 2 })
    await admin.query('CREATE EXTENSION pg_stat_statements')
  }, 60_000)
  afterAll(async () => {
    for (const adapter of adapters) await adapter.close()
    await admin?.end()
    cluster?.stop()
  })

  /** An adapter at `url` on fresh tables, created straight on the server. */
  async function freshAdapter(url, options) {
    const tablePrefix = `s${++prefixes}_`
    const setup = postgresAdapter({ url: cluster.url, tablePrefix })
    await setup.ensureSchema()
    await setup.close()
    const adapter = postgresAdapter({ url, tablePrefix, ...options })
    adapters.push(adapter)
    return { adapter, tablePrefix }
  }

  /** How often the server ran and planned the statement starting with `text` so far. */
  async function runs(text) {
    const { rows } = await admin.query(
      'SELECT sum(calls)::int AS calls, sum(plans)::int AS plans FROM pg_stat_statements WHERE query LIKE $1',
      [`${text}%`],
    )
    return { calls: rows[0].calls ?? 0, plans: rows[0].plans ?? 0 }
  }

  /** How often the server ran and planned `tablePrefix`'s increment so far. */
  const increments = (tablePrefix) => runs(`INSERT INTO ${tablePrefix}rate_limits AS r `)

  /** The count each key's row holds. */
  async function counts(tablePrefix) {
    const { rows } = await admin.query(`SELECT key, count FROM ${tablePrefix}rate_limits ORDER BY key`)
    return Object.fromEntries(rows.map((row) => [row.key, row.count]))
  }

  const refusals = () => cluster.log().match(REFUSED)?.length ?? 0

  it('straight to the server: one plan per connection for a handful of calls, then none, alone or in groups', async () => {
    const { adapter, tablePrefix } = await freshAdapter(cluster.url)
    const hits = await Promise.all(Array.from({ length: 400 }, () => adapter.rateLimitStore.increment('k', 60)))
    expect(sorted(hits.map((hit) => hit.count))).toEqual(oneTo(400))
    for (let i = 0; i < 100; i++) await adapter.rateLimitStore.increment('k', 60)
    const { calls, plans } = await increments(tablePrefix)
    expect(calls).toBe(500)
    // PostgreSQL plans a named statement for its first five runs, then once
    // more for a generic plan it keeps: at most 6 per connection (4 here).
    // Unnamed, every call is planned: 500.
    expect(plans).toBeLessThanOrEqual(4 * 6)
    expect(refusals()).toBe(0)
    expect(adapter.stats().pool.behindPooler).toBe(false)
  })

  describe('through PgBouncer 1.18 in transaction mode', () => {
    let bouncer
    beforeAll(async () => {
      // Round robin: a client's next transaction takes another of the five
      // server connections, so one that prepared a statement soon binds it
      // where it does not exist.
      bouncer = await startPgbouncer({
        databaseUrl: cluster.url,
        poolSize: 5,
        settings: { server_round_robin: 1 },
      })
      // PgBouncer opens server connections only as clients need them: five
      // transactions open at once make it open all five.
      const clients = Array.from({ length: 5 }, () => new pg.Client({ connectionString: bouncer.url }))
      await Promise.all(clients.map((client) => client.connect()))
      await Promise.all(clients.map((client) => client.query('BEGIN')))
      await Promise.all(clients.map((client) => client.query('COMMIT')))
      await Promise.all(clients.map((client) => client.end()))
    }, 180_000)
    afterAll(() => bouncer?.stop())

    it('500 concurrent increments from a fresh adapter count 1..500, each run once; then every statement goes unnamed', async () => {
      const refusedBefore = refusals()
      const { adapter, tablePrefix } = await freshAdapter(bouncer.url)
      const settled = await Promise.allSettled(
        Array.from({ length: 500 }, () => adapter.rateLimitStore.increment('k', 60)),
      )
      expect(settled.filter((s) => s.status === 'rejected').map((s) => s.reason.message)).toEqual([])
      expect(sorted(settled.map((s) => s.value.count))).toEqual(oneTo(500))
      expect(await counts(tablePrefix)).toEqual({ k: 500 })
      // The server refused at least one Bind of our named statement (it ran
      // nothing), and ran the increment 500 times: none lost, none twice.
      expect(refusals()).toBeGreaterThan(refusedBefore)
      const after = await increments(tablePrefix)
      expect(after.calls).toBe(500)

      // Switched for good: each later call is planned, i.e. unnamed.
      for (let i = 0; i < 50; i++) await adapter.rateLimitStore.increment('k', 60)
      const later = await increments(tablePrefix)
      expect(later.calls - after.calls).toBe(50)
      expect(later.plans - after.plans).toBe(50)
      // …and stats() tells the operator why.
      expect(adapter.stats().pool.behindPooler).toBe(true)
    })

    it('a group whose named statement is gone is rolled back, and each of its writes sent again on its own, once', async () => {
      // One server connection behind the pooler and one of ours: statements
      // prepared there work until that server connection dies.
      const single = await startPgbouncer({ databaseUrl: cluster.url, poolSize: 1 })
      try {
        const { adapter, tablePrefix } = await freshAdapter(single.url, { poolSize: 1, statementTimeoutMs: 5000 })
        const put = (key) => adapter.cacheStore.put(key, new Response(key), 60)
        for (let i = 0; i < 10; i++) await put('warm')
        const warm = await runs(`INSERT INTO ${tablePrefix}cache AS c `)
        expect(warm.calls).toBe(10)
        expect(warm.plans).toBeLessThanOrEqual(6) // named, behind the pooler too

        // That server connection goes, our cache statement with it; PgBouncer
        // opens another for the next transaction.
        const { rows: ended } = await admin.query(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'stoma-native'",
        )
        expect(ended.length).toBeGreaterThan(0)
        await sleep(200)

        // Our only connection waits in a delete for a row lock (its statement
        // prepared on the new server connection first), so what follows
        // queues and goes as groups of writes: increments, whose statement is
        // prepared on the new server connection then, and cache puts, whose
        // statement is gone. Sorted by table, the increments run first in the
        // group's transaction and are rolled back when the first put's Bind
        // is refused: acknowledging them then would lose them.
        const holder = await admin.connect()
        try {
          await admin.query(`INSERT INTO ${tablePrefix}cache (key, status) VALUES ('held', 200)`)
          await holder.query('BEGIN')
          await holder.query(`SELECT 1 FROM ${tablePrefix}cache WHERE key = 'held' FOR UPDATE`)
          const deleted = adapter.cacheStore.delete('held')
          for (let i = 0; i < 100 && !(await waitingForLock()); i++) await sleep(10)
          expect(await waitingForLock()).toBe(true)
          const refusedBefore = refusals()
          const queued = Array.from({ length: 100 }, (_, i) =>
            i % 5 < 3 ? adapter.rateLimitStore.increment(`g${i % 4}`, 60) : put(`p${i % 4}`),
          )
          await sleep(200) // all queued behind the delete
          await holder.query('COMMIT')
          expect(await deleted).toBe(true)
          const settled = await Promise.allSettled(queued)
          expect(settled.filter((s) => s.status === 'rejected').map((s) => s.reason.message)).toEqual([])
          expect(refusals()).toBeGreaterThan(refusedBefore)
          for (let k = 0; k < 4; k++) {
            const mine = settled.filter((_, i) => i % 5 < 3 && i % 4 === k).map((s) => s.value.count)
            expect(sorted(mine)).toEqual(oneTo(mine.length))
          }
        } finally {
          await holder.query('ROLLBACK').catch(() => {})
          holder.release()
        }
        expect(await counts(tablePrefix)).toEqual({ g0: 15, g1: 15, g2: 15, g3: 15 })
        const { rows } = await admin.query(`SELECT key FROM ${tablePrefix}cache ORDER BY key`)
        expect(rows.map((row) => row.key)).toEqual(['p0', 'p1', 'p2', 'p3', 'warm'])

        // Unnamed from then on: each call planned.
        const before = await runs(`INSERT INTO ${tablePrefix}cache AS c `)
        for (let i = 0; i < 20; i++) await put('warm')
        const after = await runs(`INSERT INTO ${tablePrefix}cache AS c `)
        expect(after.calls - before.calls).toBe(20)
        expect(after.plans - before.plans).toBe(20)
      } finally {
        await single.stop()
      }

      /** Whether a statement of the cluster waits for a row lock. */
      async function waitingForLock() {
        const { rows } = await admin.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        return rows[0].n > 0
      }
    })
  })
})
