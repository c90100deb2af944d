// PostgreSQL stores: ours (tokio-postgres, pool of 4, named statements,
// pipelined; behind PgBouncer 1.18 they switch to unnamed ones) against
// Stoma's postgresAdapter on a pg Pool (max 10), same database, same tables
// layout (each side under its own table prefix), both
// with the server's durable commits: straight to the server, and both through
// one PgBouncer in transaction pooling mode that the cases start and stop.
import pg from 'pg'
import { postgresAdapter, postgresSchemaSql } from 'stoma-native'
import { dropTables } from '../../scripts/cleanup.mjs'
import { startPgbouncer } from '../../scripts/pgbouncer.mjs'
import { cacheCase, incrementCase, slidingCase } from './network.mjs'

const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

/** Fresh tables for both sides, reached at `via`; answers the two adapters and a teardown. */
async function adaptersVia(stoma, via) {
  const prefix = `bench_${process.pid}_${Date.now()}_`
  const direct = new pg.Pool({ connectionString: url, max: 2 })
  for (const side of ['ours_', 'stoma_']) await direct.query(postgresSchemaSql(prefix + side))
  const pool = new pg.Pool({ connectionString: via, max: 10 })
  const ours = postgresAdapter({ url: via, tablePrefix: `${prefix}ours_` })
  const theirs = stoma.postgresAdapter({ client: pool, tablePrefix: `${prefix}stoma_` })
  return {
    ours,
    theirs,
    async teardown() {
      await ours.close()
      await pool.end()
      for (const side of ['ours_', 'stoma_']) await dropTables(prefix + side, direct)
      await direct.end()
    },
  }
}

const adapters = (stoma) => adaptersVia(stoma, url)

/** Both sides through one PgBouncer (transaction mode, 10 server connections). */
async function pooledAdapters(stoma) {
  const bouncer = await startPgbouncer({ poolSize: 10 })
  try {
    const { teardown, ...sides } = await adaptersVia(stoma, bouncer.url)
    return {
      ...sides,
      async teardown() {
        await teardown()
        await bouncer.stop()
      },
    }
  } catch (error) {
    await bouncer.stop()
    throw error
  }
}

/** Our two rate-limit algorithms on fresh tables of one prefix (made by ensureSchema()). */
async function slidingAndFixed() {
  const tablePrefix = `bench_${process.pid}_${Date.now()}_sw_`
  const sliding = postgresAdapter({ url, tablePrefix, rateLimit: { algorithm: 'sliding-window' } })
  await sliding.ensureSchema()
  const fixed = postgresAdapter({ url, tablePrefix })
  return {
    sliding,
    fixed,
    async teardown() {
      await sliding.close()
      await fixed.close()
      await dropTables(tablePrefix)
    },
  }
}

export default function postgresCases() {
  return [
    incrementCase('postgres: rate-limit increment, sequential', { adapters, concurrency: 1, target: 1.5 }),
    incrementCase('postgres: rate-limit increment, 64 in flight', { adapters, concurrency: 64, target: 3 }),
    cacheCase('postgres: cache put+get 64 KiB', { adapters, bytes: 64 * 1024, target: 2 }),
    // One call at a time, each side waits for a WAL flush per write: no target.
    incrementCase('postgres via pgbouncer: rate-limit increment, sequential', {
      adapters: pooledAdapters,
      concurrency: 1,
    }),
    incrementCase('postgres via pgbouncer: rate-limit increment, 64 in flight', {
      adapters: pooledAdapters,
      concurrency: 64,
      target: 2,
    }),
    slidingCase('postgres: sliding ÷ fixed window (both ours), sequential', { open: slidingAndFixed, concurrency: 1 }),
    slidingCase('postgres: sliding ÷ fixed window (both ours), 64 in flight', {
      open: slidingAndFixed,
      concurrency: 64,
    }),
  ]
}
