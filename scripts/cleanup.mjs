// Removing what a test or benchmark run wrote to the shared servers: every
// Redis key under a prefix, and a table prefix's three PostgreSQL tables.
import Redis from 'ioredis'
import pg from 'pg'

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

/** Deletes every key under `prefix`, using `client` (ioredis) or a short-lived one. */
export async function deleteRedisKeys(prefix, client) {
  const redis = client ?? new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  try {
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      if (keys.length > 0) await redis.del(...keys)
      cursor = next
    } while (cursor !== '0')
  } finally {
    if (!client) redis.disconnect()
  }
}

/** Drops `<tablePrefix>rate_limits`, `…sliding_windows`, `…circuit_breakers` and `…cache`, using `queryable` (pg Pool/Client) or a short-lived client. */
export async function dropTables(tablePrefix, queryable) {
  const sql = `DROP TABLE IF EXISTS ${tablePrefix}rate_limits, ${tablePrefix}sliding_windows, ${tablePrefix}circuit_breakers, ${tablePrefix}cache`
  if (queryable) return void (await queryable.query(sql))
  const client = new pg.Client({ connectionString: DATABASE_URL })
  await client.connect()
  try {
    await client.query(sql)
  } finally {
    await client.end()
  }
}
