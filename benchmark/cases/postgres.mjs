// PostgreSQL stores: ours (tokio-postgres, pool of 4, prepared, pipelined)
// against Stoma's postgresAdapter on a pg Pool (max 10), same database,
// same tables layout (each side under its own table prefix), both with the
// server's durable commits.
import pg from 'pg'
import { postgresAdapter, postgresSchemaSql } from 'stoma-native'

const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const body64k = new Uint8Array(64 * 1024).map((_, i) => (i * 13) % 256)

/** Fresh tables for both sides; answers the two adapters and a teardown. */
async function adapters(stoma) {
  const prefix = `bench_${process.pid}_${Date.now()}_`
  const pool = new pg.Pool({ connectionString: url, max: 10 })
  for (const side of ['ours_', 'stoma_']) await pool.query(postgresSchemaSql(prefix + side))
  const ours = postgresAdapter({ url, tablePrefix: `${prefix}ours_` })
  const theirs = stoma.postgresAdapter({ client: pool, tablePrefix: `${prefix}stoma_` })
  return {
    ours,
    theirs,
    async teardown() {
      await ours.close()
      for (const side of ['ours_', 'stoma_']) {
        await pool.query(`DROP TABLE ${prefix}${side}rate_limits, ${prefix}${side}circuit_breakers, ${prefix}${side}cache`)
      }
      await pool.end()
    },
  }
}

function incrementCase(name, concurrency, target) {
  return {
    name,
    target,
    concurrency,
    samples: 5,
    async setup({ stoma }) {
      const { ours, theirs, teardown } = await adapters(stoma)
      return {
        ours: (i) => ours.rateLimitStore.increment(`client:${i % 1000}`, 60),
        theirs: (i) => theirs.rateLimitStore.increment(`client:${i % 1000}`, 60),
        teardown,
      }
    },
  }
}

export default function postgresCases() {
  return [
    incrementCase('postgres: rate-limit increment, sequential', 1, 1.5),
    incrementCase('postgres: rate-limit increment, 64 in flight', 64, 3),
    {
      name: 'postgres: cache put+get 64 KiB',
      target: 2,
      samples: 5,
      async setup({ stoma }) {
        const { ours, theirs, teardown } = await adapters(stoma)
        const roundTrip = (store) => async (i) => {
          const key = `page:${i % 16}`
          await store.put(key, new Response(body64k, { headers: { 'content-type': 'application/octet-stream' } }), 60)
          await (await store.get(key)).arrayBuffer()
        }
        return { ours: roundTrip(ours.cacheStore), theirs: roundTrip(theirs.cacheStore), teardown }
      },
    },
  ]
}
