// PostgreSQL stores: ours (tokio-postgres, pool of 4, prepared, pipelined)
// against Stoma's postgresAdapter on a pg Pool (max 10), same database,
// same tables layout (each side under its own table prefix), both with the
// server's durable commits.
import pg from 'pg'
import { postgresAdapter, postgresSchemaSql } from 'stoma-native'
import { cacheCase, incrementCase } from './network.mjs'
import { dropTables } from '../../scripts/cleanup.mjs'

const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

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
      for (const side of ['ours_', 'stoma_']) await dropTables(prefix + side, pool)
      await pool.end()
    },
  }
}

export default function postgresCases() {
  return [
    incrementCase('postgres: rate-limit increment, sequential', { adapters, concurrency: 1, target: 1.5 }),
    incrementCase('postgres: rate-limit increment, 64 in flight', { adapters, concurrency: 64, target: 3 }),
    cacheCase('postgres: cache put+get 64 KiB', { adapters, bytes: 64 * 1024, target: 2 }),
  ]
}
