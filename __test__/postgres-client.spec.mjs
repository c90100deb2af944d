// Drop-in from Stoma, PostgreSQL side (issue #14): `postgresAdapter({ client })`
// with the clients Stoma's users hold — node-postgres Pool and Client, and
// postgres.js — connected or not, reading where each points and opening our
// own connections there: the data lands in the client's database (a second
// one this file creates and drops), never in DATABASE_URL's. Also Stoma's
// store constructor shapes, misspelt options, and TLS with a client
// certificate and a server name on a private cluster that asks for one.
import { rmSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import postgres from 'postgres'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PostgresCacheStore, PostgresCircuitBreakerStore, PostgresRateLimitStore, postgresAdapter } from '../index.mjs'
import { PG_BIN, startCluster } from './support/postgres-servers.mjs'
import { makeCertificates } from './support/redis-servers.mjs'

const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres'
const server = new URL(DATABASE_URL)
const login = {
  host: server.hostname,
  port: Number(server.port || 5432),
  user: decodeURIComponent(server.username || 'postgres'),
}
const RUN = `c${process.pid}_${Date.now().toString(36)}`
// A private CA, a server certificate valid for db.test only and a client
// certificate (see the TLS tests at the end).
const certificates = makeCertificates(['DNS:db.test'])
const SECOND = `stoma_client_${RUN}` // the database the clients point at
const SCHEMA = 'elsewhere' // a schema in it, for clients that set search_path
let prefixes = 0
const newPrefix = () => `${RUN}_${++prefixes}_`

/** DATABASE_URL for database `name`. */
function urlOf(name) {
  const url = new URL(DATABASE_URL)
  url.pathname = `/${name}`
  return url.href
}

let admin // DATABASE_URL's database
let second // the clients' database
const ended = [] // clients to end after the tests
beforeAll(async () => {
  admin = new pg.Pool({ connectionString: DATABASE_URL, max: 2 })
  await admin.query(`CREATE DATABASE ${SECOND}`)
  second = new pg.Pool({ connectionString: urlOf(SECOND), max: 2 })
  await second.query(`CREATE SCHEMA ${SCHEMA}`)
})
afterAll(async () => {
  for (const client of ended) await client.end()
  await second?.end()
  // pg's Pool.end() resolves before its connections have closed, and one
  // that DROP … WITH (FORCE) terminates then throws an error nobody can
  // listen to: wait (up to 5 s) until the server has seen them go.
  for (let i = 0; admin && i < 250 && (await connectionsTo(SECOND)) > 0; i++) await sleep(20)
  await admin?.query(`DROP DATABASE IF EXISTS ${SECOND} WITH (FORCE)`)
  await admin?.end()
  rmSync(certificates.dir, { recursive: true, force: true })
})

/** How many client connections the server has to database `name` (autovacuum workers aside). */
async function connectionsTo(name) {
  const { rows } = await admin.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
    [name],
  )
  return rows[0].n
}

/** Where `prefix`'s rate-limit table is in `pool`'s database: its schema, or null. */
async function schemaOf(pool, prefix) {
  const { rows } = await pool.query('SELECT schemaname FROM pg_tables WHERE tablename = $1', [`${prefix}rate_limits`])
  return rows[0]?.schemaname ?? null
}

describe('postgresAdapter({ client }) reads where the client points', () => {
  const clients = {
    'pg Pool with a connectionString': () => new pg.Pool({ connectionString: urlOf(SECOND) }),
    'pg Pool with host, port, user and database': () => new pg.Pool({ ...login, database: SECOND }),
    'pg Client, not connected': () => new pg.Client({ ...login, database: SECOND }),
    'pg Client, connected': async () => {
      const client = new pg.Client({ connectionString: urlOf(SECOND) })
      await client.connect()
      ended.push(client)
      return client
    },
    'postgres.js postgres(url)': () => postgres(urlOf(SECOND)),
    'postgres.js with two hosts, the first down': () =>
      postgres({ host: ['127.0.0.1', login.host], port: [1, login.port], username: login.user, database: SECOND }),
    'postgres.js postgres({ … }), connected': async () => {
      const sql = postgres({ host: login.host, port: login.port, username: login.user, database: SECOND })
      await sql`SELECT 1`
      ended.push(sql)
      return sql
    },
  }

  for (const [name, make] of Object.entries(clients)) {
    it(`${name}: the data lands in its database, not DATABASE_URL's`, async () => {
      const client = await make()
      const prefix = newPrefix()
      const adapter = postgresAdapter({ client, tablePrefix: prefix })
      try {
        await adapter.ensureSchema()
        expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
        expect((await adapter.circuitBreakerStore.recordFailure('c')).failureCount).toBe(1)
        await adapter.cacheStore.put('r', new Response('body'), 60)
        const row = async (table) => (await second.query(`SELECT * FROM ${prefix}${table}`)).rows
        expect(await row('rate_limits')).toMatchObject([{ key: 'k', count: 1 }])
        expect(await row('circuit_breakers')).toMatchObject([{ key: 'c', failure_count: 1 }])
        expect(await row('cache')).toMatchObject([{ key: 'r', status: 200 }])
        expect(await schemaOf(second, prefix)).toBe('public')
        expect(await schemaOf(admin, prefix)).toBeNull()
      } finally {
        await adapter.close()
      }
    })
  }

  it("the client's startup options (pg options, postgres.js connection) travel too: search_path decides the schema", async () => {
    const shapes = [
      new pg.Pool({ connectionString: urlOf(SECOND), options: `-c search_path=${SCHEMA}` }),
      postgres(urlOf(SECOND), { connection: { search_path: SCHEMA } }),
    ]
    for (const client of shapes) {
      const prefix = newPrefix()
      const adapter = postgresAdapter({ client, tablePrefix: prefix })
      try {
        await adapter.ensureSchema()
        await adapter.rateLimitStore.increment('k', 60)
        expect(await schemaOf(second, prefix)).toBe(SCHEMA)
      } finally {
        await adapter.close()
      }
    }
  })

  it('a client pointing at a server that is down: calls reject naming it, nothing falls back to DATABASE_URL', async () => {
    for (const client of [
      new pg.Pool({ host: '127.0.0.1', port: 1, user: login.user, database: SECOND }),
      postgres(`postgres://${login.user}@127.0.0.1:1/${SECOND}`),
    ]) {
      const adapter = postgresAdapter({ client, connectTimeoutMs: 500 })
      try {
        const started = Date.now()
        await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(
          /^PostgresRateLimitStore: could not connect to PostgreSQL at 127\.0\.0\.1:1: /,
        )
        expect(Date.now() - started).toBeLessThan(2000)
      } finally {
        await adapter.close()
      }
    }
  })

  it("accepts Stoma's store constructors (client, '<prefix><table>') and writes to those tables", async () => {
    const client = new pg.Pool({ connectionString: urlOf(SECOND) })
    const prefix = newPrefix()
    const setup = postgresAdapter({ client, tablePrefix: prefix })
    await setup.ensureSchema()
    await setup.close()
    const sql = postgres(urlOf(SECOND))
    const stores = [
      new PostgresRateLimitStore(client, `${prefix}rate_limits`),
      new PostgresCircuitBreakerStore(sql, `${prefix}circuit_breakers`),
      new PostgresCacheStore(client, `${prefix}cache`),
    ]
    try {
      await stores[0].increment('k', 60)
      await stores[1].recordFailure('c')
      await stores[2].put('r', new Response('x'), 60)
      const { rows } = await second.query(
        `SELECT (SELECT count(*) FROM ${prefix}rate_limits) + (SELECT count(*) FROM ${prefix}circuit_breakers)
           + (SELECT count(*) FROM ${prefix}cache) AS n`,
      )
      expect(Number(rows[0].n)).toBe(3)
    } finally {
      for (const store of stores) await store.close()
    }
    // Without a table, Stoma's default names (stoma_…): the same database.
    const defaults = new PostgresRateLimitStore(client)
    await expect(defaults.increment('k', 60)).rejects.toThrow(/table stoma_rate_limits does not exist in the database/)
    await defaults.close()
  })

  it("refuses a table that is not the store's, showing the shapes it takes", () => {
    const client = new pg.Pool({ connectionString: urlOf(SECOND) })
    expect(() => new PostgresRateLimitStore(client, 'stoma_cache')).toThrow(TypeError)
    expect(() => new PostgresRateLimitStore(client, 'stoma_cache')).toThrow(
      /^PostgresRateLimitStore: the table must be named <tablePrefix>rate_limits, got "stoma_cache"; pass new PostgresRateLimitStore\(client, 'stoma_rate_limits'\) or new PostgresRateLimitStore\(\{ client, tablePrefix: 'stoma_' \}\)$/,
    )
    expect(() => new PostgresCacheStore(client, 42)).toThrow(
      /PostgresCacheStore: the table must be named <tablePrefix>cache/,
    )
    expect(() => new PostgresCircuitBreakerStore(client, 'circuit_breakers')).toThrow(RangeError)
    expect(() => new PostgresCircuitBreakerStore(client, 'x-y_circuit_breakers')).toThrow(/tablePrefix matching/)
    expect(() => new PostgresRateLimitStore({ url: DATABASE_URL }, 'stoma_rate_limits')).toThrow(
      /takes an options object .* or Stoma's \(client, table\)/,
    )
  })

  it('refuses what it cannot read with a TypeError saying to pass url, never using the default server', () => {
    const unreadable = [
      [{ query() {} }, /client must be a pg Pool or Client, or a postgres.js sql .* pass url/],
      [new pg.Pool({ ...login, password: async () => 'secret' }), /password is a function.* pass url/],
      [postgres({ ...login, pass: () => 'secret' }), /password is a function.* pass url/],
      [new pg.Pool({ ...login, stream: () => null }), /its own stream.* pass url/],
      [postgres({ ...login, socket: () => null }), /its own socket.* pass url/],
      [
        postgres({ ...login, target_session_attrs: 'standby' }),
        /target_session_attrs is "standby", but the stores write/,
      ],
      [new pg.Pool({ ...login, ssl: { pfx: 'x' } }), /ssl.pfx cannot be read/],
    ]
    for (const [client, message] of unreadable) {
      expect(() => postgresAdapter({ client })).toThrow(TypeError)
      expect(() => postgresAdapter({ client })).toThrow(message)
    }
    const client = new pg.Pool({ connectionString: urlOf(SECOND) })
    expect(() => postgresAdapter({ client, url: DATABASE_URL })).toThrow(
      /^postgresAdapter: client already says where PostgreSQL is; pass either client or url$/,
    )
    expect(() => new PostgresCacheStore({ client: 'postgres://h/db' })).toThrow(/PostgresCacheStore: client must be/)
  })

  it("refuses certificate checking turned off, saying to pass the server's CA as tls: { ca }", () => {
    const off = [
      new pg.Pool({ ...login, ssl: { rejectUnauthorized: false } }),
      new pg.Pool({ connectionString: `${urlOf(SECOND)}?sslmode=no-verify` }),
      postgres({ ...login, ssl: { rejectUnauthorized: false } }),
    ]
    for (const client of off) {
      expect(() => postgresAdapter({ client })).toThrow(TypeError)
      expect(() => postgresAdapter({ client })).toThrow(
        /ssl.rejectUnauthorized is false, which turns certificate checking off; .* pass the server's CA as tls: \{ ca \}/,
      )
      // With tls given, the client's ssl settings are not read at all.
      expect(() => postgresAdapter({ client, tls: { ca: certificates.ca } }).close()).not.toThrow()
    }
    expect(() =>
      postgresAdapter({ client: new pg.Pool({ ...login, ssl: { checkServerIdentity: () => {} } }) }),
    ).toThrow(/checkServerIdentity cannot be honoured/)
  })
})

describe('postgres options: misspelt keys are TypeErrors naming the key and listing the accepted ones', () => {
  it('postgresAdapter, stores and tls', () => {
    expect(() => postgresAdapter({ tablePrefx: 'x_' })).toThrow(TypeError)
    expect(() => postgresAdapter({ tablePrefx: 'x_' })).toThrow(
      /^postgresAdapter: unknown option tablePrefx; the options are url, client, tls, tablePrefix, poolSize, connectTimeoutMs, statementTimeoutMs, synchronousCommit, cleanupIntervalMs, whenUnavailable, stores, waitUntil, rateLimit$/,
    )
    expect(() => postgresAdapter({ stores: { ratelimit: false } })).toThrow(
      /^postgresAdapter: unknown option stores.ratelimit; the options are rateLimit, circuitBreaker, cache$/,
    )
    expect(() => postgresAdapter({ stores: { cache: 'no' } })).toThrow(/stores.cache must be a boolean/)
    expect(() => postgresAdapter({ tls: { ca: certificates.ca, cafile: 'x' } })).toThrow(
      /^postgresAdapter: unknown option tls.cafile; the options are ca, cert, key, servername$/,
    )
  })

  it('each store class', () => {
    for (const Store of [PostgresRateLimitStore, PostgresCircuitBreakerStore, PostgresCacheStore]) {
      expect(() => new Store({ tablePrefx: 'x_' })).toThrow(TypeError)
      expect(() => new Store({ tablePrefx: 'x_' })).toThrow(
        new RegExp(
          `^${Store.name}: unknown option tablePrefx; the options are url, client, tls, tablePrefix, .*, cleanupIntervalMs, whenUnavailable${Store === PostgresRateLimitStore ? ', algorithm' : ''}$`,
        ),
      )
      expect(() => new Store({ stores: {} })).toThrow(/unknown option stores/)
      expect(() => new Store({ tls: { key: 'x', servrname: 'h' } })).toThrow(/unknown option tls.servrname/)
    }
  })
})

// A cluster of our own whose pg_hba.conf takes only TLS connections that
// present a client certificate from our CA, with a server certificate valid
// for the name db.test only (not for 127.0.0.1, where it listens).
describe.skipIf(!PG_BIN)('postgres over TLS with a client certificate and a server name', () => {
  let cluster
  let tls
  beforeAll(async () => {
    tls = certificates
    cluster = await startCluster({
      files: { 'server.pem': tls.certFile, 'server.key': tls.keyFile, 'ca.pem': tls.caFile },
      settings: { ssl: 'on', ssl_cert_file: 'server.pem', ssl_key_file: 'server.key', ssl_ca_file: 'ca.pem' },
      hba: ['local all all trust', 'hostssl all all 127.0.0.1/32 trust clientcert=verify-ca'],
    })
  }, 60_000)
  afterAll(() => cluster?.stop())

  /** The client certificate's subject the server saw on connections named `applicationName`. */
  async function clientCertificates(applicationName) {
    const client = new pg.Client({
      connectionString: cluster.url,
      ssl: { ca: tls.ca, cert: tls.clientCert, key: tls.clientKey, servername: 'db.test' },
    })
    await client.connect()
    try {
      const { rows } = await client.query(
        'SELECT s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1',
        [applicationName],
      )
      return rows.map((row) => row.client_dn)
    } finally {
      await client.end()
    }
  }

  it('presents tls.cert and tls.key and checks the certificate against tls.servername', async () => {
    const name = `${RUN}_mtls`
    const adapter = postgresAdapter({
      url: `${cluster.url}?application_name=${name}`,
      tls: { ca: tls.ca, cert: tls.clientCert, key: tls.clientKey, servername: 'db.test' },
      tablePrefix: 'mtls_',
    })
    try {
      await adapter.ensureSchema()
      expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
      expect(await clientCertificates(name)).toContain('/CN=stoma-native client')
    } finally {
      await adapter.close()
    }
  })

  it('without the client certificate the server refuses; without the servername the name check fails', async () => {
    const anonymous = postgresAdapter({ url: cluster.url, tls: { ca: tls.ca, servername: 'db.test' } })
    const unnamed = postgresAdapter({ url: cluster.url, tls: { ca: tls.ca, cert: tls.clientCert, key: tls.clientKey } })
    try {
      await expect(anonymous.rateLimitStore.increment('k', 60)).rejects.toThrow(
        /^PostgresRateLimitStore: could not connect to PostgreSQL at 127\.0\.0\.1:\d+: .*certificate/i,
      )
      await expect(unnamed.rateLimitStore.increment('k', 60)).rejects.toThrow(/not valid for name "127\.0\.0\.1"/)
    } finally {
      await anonymous.close()
      await unnamed.close()
    }
  })

  it("a pg Pool's and a postgres.js sql's ssl (ca, cert, key, servername) are read and used", async () => {
    const ssl = { ca: tls.ca, cert: tls.clientCert, key: tls.clientKey, servername: 'db.test' }
    const target = { host: '127.0.0.1', port: cluster.port, database: 'postgres' }
    for (const client of [
      new pg.Pool({ ...target, user: 'postgres', ssl }),
      postgres({ ...target, username: 'postgres', ssl }),
    ]) {
      const adapter = postgresAdapter({ client, tablePrefix: 'mtls_' })
      try {
        await adapter.ensureSchema()
        expect((await adapter.rateLimitStore.increment('client', 60)).count).toBeGreaterThanOrEqual(1)
      } finally {
        await adapter.close()
      }
    }
  })

  it('a tls.key or tls.servername that cannot be used is a TypeError naming it, at construction', () => {
    const bad = (extra) => () =>
      postgresAdapter({ url: cluster.url, tls: { ca: tls.ca, cert: tls.clientCert, ...extra } })
    expect(bad({ key: 'not a key' })).toThrow(TypeError)
    expect(bad({ key: 'not a key' })).toThrow(/^postgresAdapter: tls.key is not a PEM private key/)
    expect(bad({})).toThrow(/^postgresAdapter: tls.cert needs tls.key/)
    expect(bad({ key: tls.clientKey, servername: 'not a name!' })).toThrow(/^postgresAdapter: tls.servername: /)
  })
})
