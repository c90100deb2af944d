// Drop-in from Stoma: `redisAdapter({ client })` with the clients Stoma's
// users hold — ioredis Redis / Cluster (and its sentinels), node-redis
// createClient / createCluster v4, v5 and v6 — connected or not, reading
// where each points and opening our own connections there: the data lands
// in the client's database, cluster or sentinel primary (checked there),
// TLS client certificates included. Also Stoma's store constructor shapes
// and misspelt options.
import { rmSync } from 'node:fs'
import { redisAdapter as stomaRedisAdapter } from '@homegrower-club/stoma/adapters/redis'
import Redis from 'ioredis'
import { createClient as createClient6, createCluster as createCluster6, createSentinel } from 'redis'
import { createClient as createClient4, createCluster as createCluster4 } from 'redis4'
import { createClient as createClient5, createCluster as createCluster5 } from 'redis5'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RedisCacheStore, RedisCircuitBreakerStore, RedisRateLimitStore, redisAdapter } from '../index.mjs'
import { makeCertificates, startCluster, startRedis, startSentinels } from './support/redis-servers.mjs'

const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379'
let prefixes = 0
const newPrefix = () => `stoma-native-client-test:${process.pid}:${++prefixes}:`

/** A plain client on database `db` of the local server, to see what landed there. */
const onDb = (db) => new Redis(`${url}/${db}`, { maxRetriesPerRequest: 1 })

describe('redisAdapter({ client }) on a plain server', () => {
  const created = []
  afterAll(async () => {
    for (const client of created) await client.quit?.().catch(() => client.disconnect?.())
  })

  const clients = {
    'ioredis Redis (db 5)': () => ({ client: new Redis(`${url}/5`, { lazyConnect: true }), db: 5 }),
    'ioredis Redis, connected (db 6)': async () => {
      const client = new Redis(`${url}/6`)
      created.push(client)
      await client.ping()
      return { client, db: 6 }
    },
    'node-redis v4 createClient (url, db 5)': () => ({ client: createClient4({ url: `${url}/5` }), db: 5 }),
    'node-redis v4 createClient, connected (socket, database 6)': async () => {
      const { hostname, port } = new URL(url)
      const client = createClient4({ socket: { host: hostname, port: Number(port || 6379) }, database: 6 })
      await client.connect()
      created.push(client)
      return { client, db: 6 }
    },
    'node-redis v5 createClient (db 5)': () => ({ client: createClient5({ url: `${url}/5` }), db: 5 }),
    'node-redis v6 createClient, connected (db 6)': async () => {
      const client = createClient6({ url: `${url}/6` })
      await client.connect()
      created.push(client)
      return { client, db: 6 }
    },
  }

  for (const [name, make] of Object.entries(clients)) {
    it(`${name}: the data lands in the client's database, not 0`, async () => {
      const { client, db } = await make()
      const prefix = newPrefix()
      const adapter = redisAdapter({ client, prefix, setWithTTL: () => {} })
      const there = onDb(db)
      const zero = onDb(0)
      try {
        expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
        expect((await adapter.circuitBreakerStore.recordFailure('c')).failureCount).toBe(1)
        await adapter.cacheStore.put('r', new Response('body'), 60)
        expect(await there.get(`${prefix}rl:k`)).toBe('1')
        expect(JSON.parse(await there.get(`${prefix}cb:c`)).failureCount).toBe(1)
        expect(await there.exists(`${prefix}cache:r`)).toBe(1)
        expect(await zero.exists(`${prefix}rl:k`, `${prefix}cb:c`, `${prefix}cache:r`)).toBe(0)
      } finally {
        await adapter.close()
        await there.del(`${prefix}rl:k`, `${prefix}cb:c`, `${prefix}cache:r`)
        there.disconnect()
        zero.disconnect()
      }
    })
  }

  it("an ioredis keyPrefix goes before the prefix, as the client puts it before Stoma's keys: one count", async () => {
    const client = new Redis(`${url}/5`, { keyPrefix: 'app:' })
    created.push(client)
    const prefix = newPrefix()
    const ours = redisAdapter({ client, prefix })
    const stomas = stomaRedisAdapter({ client, prefix })
    const there = onDb(5)
    try {
      const counts = []
      for (const adapter of [ours, stomas, ours, stomas])
        counts.push((await adapter.rateLimitStore.increment('k', 60)).count)
      expect(counts).toEqual([1, 2, 3, 4])
      expect(await there.get(`app:${prefix}rl:k`)).toBe('4')
      expect(await there.exists(`${prefix}rl:k`)).toBe(0)
    } finally {
      await ours.close()
      await there.del(`app:${prefix}rl:k`)
      there.disconnect()
    }
    const natted = new Redis.Cluster([{ host: '127.0.0.1', port: 7000 }], {
      natMap: { '10.0.0.1:7000': { host: '127.0.0.1', port: 7000 } },
      lazyConnect: true,
    })
    expect(() => redisAdapter({ client: natted })).toThrow(/^redisAdapter: the client's natMap cannot be honoured/)
  })

  it('a client pointing at a server that is down: calls reject, nothing falls back to the default', async () => {
    for (const client of [
      new Redis('redis://127.0.0.1:1/5', { lazyConnect: true }),
      createClient5({ url: 'redis://127.0.0.1:1/5' }),
    ]) {
      const adapter = redisAdapter({ client, commandTimeoutMs: 300, connectTimeoutMs: 300 })
      try {
        await expect(adapter.rateLimitStore.increment('k', 60)).rejects.toThrow(
          /^RedisRateLimitStore: cannot connect to Redis at 127\.0\.0\.1:1: /,
        )
      } finally {
        await adapter.close()
      }
    }
  })

  it("accepts Stoma's store constructors (client, prefix, setWithTTL) and writes under that prefix", async () => {
    const client = new Redis(`${url}/5`, { lazyConnect: true })
    const prefix = newPrefix()
    const stores = [
      new RedisRateLimitStore(client, prefix),
      new RedisCircuitBreakerStore(client, prefix, () => {}),
      new RedisCacheStore(client, prefix, () => {}),
    ]
    const there = onDb(5)
    try {
      await stores[0].increment('k', 60)
      await stores[1].recordFailure('c')
      await stores[2].put('r', new Response('x'), 60)
      expect(await there.exists(`${prefix}rl:k`, `${prefix}cb:c`, `${prefix}cache:r`)).toBe(3)
    } finally {
      for (const store of stores) store.destroy()
      await there.del(`${prefix}rl:k`, `${prefix}cb:c`, `${prefix}cache:r`)
      there.disconnect()
    }
  })

  it('refuses what it cannot read, and clients beside url or credentials, with a TypeError saying what to pass', () => {
    expect(() => redisAdapter({ client: { get() {}, set() {}, del() {}, eval() {} } })).toThrow(
      /redisAdapter: client must be an ioredis Redis or Cluster, or a node-redis client or cluster.*pass url, cluster: \{ nodes \} or sentinel/,
    )
    expect(() => redisAdapter({ client: createCluster4({ rootNodes: [{ url }] }) })).toThrow(
      /node-redis v4 cluster .* before it is connected; await client.connect\(\) first, or pass cluster: \{ nodes/,
    )
    const sentinel = createSentinel({ name: 'primary', sentinelRootNodes: [{ host: '127.0.0.1', port: 26379 }] })
    expect(() => redisAdapter({ client: sentinel })).toThrow(TypeError)
    expect(() => redisAdapter({ client: sentinel })).toThrow(
      /^redisAdapter: a node-redis sentinel client \(createSentinel\) keeps its settings private.*; pass sentinel: \{ name, nodes: \['redis:\/\/host:26379', …\] \} instead of client$/,
    )
    const client = new Redis(url, { lazyConnect: true })
    expect(() => redisAdapter({ client, url })).toThrow(/client already says where Redis is; pass either client or url/)
    expect(() => redisAdapter({ client, password: 'x' })).toThrow(/pass either client or password/)
    expect(() => redisAdapter({ client, setWithTTL: 'EX' })).toThrow(/setWithTTL must be a function/)
    expect(() => new RedisRateLimitStore({ url }, 'prefix:')).toThrow(
      /takes an options object .* or Stoma's \(client, prefix\)/,
    )
  })

  it('refuses misspelt options, naming the key and listing the accepted ones', () => {
    expect(() => redisAdapter({ prefx: 'x:' })).toThrow(
      /^redisAdapter: unknown option prefx; the options are url, cluster, sentinel, client, setWithTTL, .*, whenUnavailable, stores, waitUntil, rateLimit$/,
    )
    expect(() => redisAdapter({ stores: { ratelimit: false } })).toThrow(
      /redisAdapter: unknown option stores.ratelimit; the options are rateLimit, circuitBreaker, cache/,
    )
    expect(() => redisAdapter({ tls: { ca: 'x', servrname: 'h' } })).toThrow(/unknown option tls.servrname/)
    for (const Store of [RedisRateLimitStore, RedisCircuitBreakerStore, RedisCacheStore]) {
      expect(() => new Store({ url, prefx: 'x' })).toThrow(new RegExp(`^${Store.name}: unknown option prefx`))
      expect(() => new Store({ url, stores: {} })).toThrow(/unknown option stores/)
    }
  })
})

describe('redisAdapter({ client }) on a Redis Cluster', () => {
  let cluster
  beforeAll(async () => {
    cluster = await startCluster()
  }, 60_000)
  afterAll(async () => {
    await cluster?.stop()
  })

  it('ioredis Cluster and node-redis createCluster (v5, v6; v4 once connected) reach every primary', async () => {
    const seed = cluster.nodes[0].port
    const connectedV4 = createCluster4({ rootNodes: [{ url: cluster.url(seed) }] })
    await connectedV4.connect()
    const clients = {
      'ioredis Cluster': new Redis.Cluster([{ host: '127.0.0.1', port: seed }], { lazyConnect: true }),
      'ioredis Cluster (string nodes)': new Redis.Cluster([`127.0.0.1:${seed}`], { lazyConnect: true }),
      'node-redis v5 createCluster': createCluster5({ rootNodes: [{ url: cluster.url(seed) }] }),
      'node-redis v6 createCluster': createCluster6({ rootNodes: [{ socket: { host: '127.0.0.1', port: seed } }] }),
      'node-redis v4 createCluster, connected': connectedV4,
    }
    try {
      for (const [name, client] of Object.entries(clients)) {
        const prefix = newPrefix()
        const adapter = redisAdapter({ client, prefix })
        try {
          const keys = Array.from({ length: 30 }, (_, i) => `k${i}`)
          const hits = await Promise.all(keys.map((key) => adapter.rateLimitStore.increment(key, 60)))
          expect(
            hits.every((hit) => hit.count === 1),
            name,
          ).toBe(true)
          const ports = new Set(await Promise.all(keys.map((key) => cluster.portOf(`${prefix}rl:${key}`))))
          expect(ports.size, name).toBe(3)
          for (const key of keys.slice(0, 5)) {
            const port = await cluster.portOf(`${prefix}rl:${key}`)
            expect((await cluster.cli(port, ['GET', `${prefix}rl:${key}`])).trim(), name).toBe('1')
          }
        } finally {
          await adapter.close()
        }
      }
    } finally {
      await connectedV4.disconnect()
    }
  })
})

describe('redisAdapter({ client }) of an ioredis client with sentinels', () => {
  let deployment
  beforeAll(async () => {
    deployment = await startSentinels({ password: 'data-secret' })
  }, 60_000)
  afterAll(async () => {
    await deployment?.stop()
  })

  it('follows the sentinels to the primary, with the data password and database', async () => {
    const client = new Redis({
      sentinels: deployment.watchers.map((s) => ({ host: '127.0.0.1', port: s.port })),
      name: 'mymaster',
      password: 'data-secret',
      db: 4,
      lazyConnect: true,
    })
    const prefix = newPrefix()
    const adapter = redisAdapter({ client, prefix })
    try {
      expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
      const primary = await deployment.primaryPort()
      expect((await deployment.cli(primary, ['-n', '4', 'GET', `${prefix}rl:k`])).trim()).toBe('1')
    } finally {
      await adapter.close()
    }
  })
})

describe('redisAdapter({ client }) of an ioredis client with sentinels over TLS', () => {
  let deployment
  let dataTls
  let sentinelTls
  beforeAll(async () => {
    // Each side has its own CA and name, so one side's settings fail on the other.
    dataTls = makeCertificates(['DNS:redis.test', 'IP:127.0.0.1'])
    sentinelTls = makeCertificates(['DNS:sentinel.test', 'IP:127.0.0.1'])
    deployment = await startSentinels({ tls: dataTls, sentinelTls })
  }, 60_000)
  afterAll(async () => {
    await deployment?.stop()
    for (const tls of [dataTls, sentinelTls]) if (tls) rmSync(tls.dir, { recursive: true, force: true })
  })

  const clientOptions = (extra = {}) => ({
    sentinels: deployment.watchers.map((s) => ({ host: '127.0.0.1', port: s.port })),
    name: 'mymaster',
    sentinelTLS: { ca: sentinelTls.ca, servername: 'sentinel.test' },
    enableTLSForSentinelMode: true,
    tls: { ca: dataTls.ca, servername: 'redis.test' },
    lazyConnect: true,
    ...extra,
  })

  it('reads sentinelTLS for the sentinels and tls for the primary, as ioredis does', async () => {
    // ioredis itself reaches the primary with these settings…
    const client = new Redis(clientOptions())
    await client.connect()
    expect(await client.ping()).toBe('PONG')
    await client.quit()
    // …and so do we, through the same client's settings.
    const prefix = newPrefix()
    const adapter = redisAdapter({ client: new Redis(clientOptions()), prefix })
    try {
      expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
      const primary = await deployment.primaryPort()
      expect((await deployment.cli(primary, ['GET', `${prefix}rl:k`])).trim()).toBe('1')
    } finally {
      await adapter.close()
    }
    // The data servers' settings do not fit the sentinels: sentinel.tls is needed.
    const withoutOwn = redisAdapter({
      sentinel: { name: 'mymaster', nodes: deployment.sentinelUrls().map((url) => url.replace('redis:', 'rediss:')) },
      tls: { ca: dataTls.ca, servername: 'redis.test' },
      connectTimeoutMs: 500,
    })
    try {
      await expect(withoutOwn.rateLimitStore.increment('k', 60)).rejects.toThrow(/no sentinel named the primary/)
    } finally {
      await withoutOwn.close()
    }
  })

  it('refuses sentinelTLS that turns certificate checking off, and a misspelt sentinel.tls key', () => {
    const client = new Redis(clientOptions({ sentinelTLS: { ca: sentinelTls.ca, rejectUnauthorized: false } }))
    expect(() => redisAdapter({ client })).toThrow(
      /^redisAdapter: the client's sentinelTLS\.rejectUnauthorized is false, which turns certificate checking off/,
    )
    expect(() =>
      redisAdapter({ sentinel: { name: 'mymaster', nodes: ['redis://h:1'], tls: { ca: 'x', caa: 'y' } } }),
    ).toThrow(/^redisAdapter: unknown option sentinel\.tls\.caa; the options are ca, cert, key, servername$/)
  })
})

describe('redisAdapter({ client }) over TLS with a client certificate', () => {
  let server
  let tls
  beforeAll(async () => {
    tls = makeCertificates(['DNS:redis.test', 'IP:127.0.0.1'])
    server = await startRedis({ tls, clientAuth: true })
  }, 30_000)
  afterAll(async () => {
    await server?.stop()
    rmSync(tls.dir, { recursive: true, force: true })
  })

  it('presents the client certificate the client carries (ca, cert, key, servername)', async () => {
    const withCertificate = {
      ioredis: new Redis({
        host: '127.0.0.1',
        port: server.port,
        tls: { ca: tls.ca, cert: tls.clientCert, key: tls.clientKey, servername: 'redis.test' },
        lazyConnect: true,
      }),
      'node-redis v6': createClient6({
        socket: {
          host: '127.0.0.1',
          port: server.port,
          tls: true,
          ca: tls.ca,
          cert: tls.clientCert,
          key: tls.clientKey,
          servername: 'redis.test',
        },
      }),
    }
    for (const [name, client] of Object.entries(withCertificate)) {
      const prefix = newPrefix()
      const adapter = redisAdapter({ client, prefix })
      try {
        expect((await adapter.rateLimitStore.increment('k', 60)).count, name).toBe(1)
        expect((await server.cli(['GET', `${prefix}rl:k`])).trim(), name).toBe('1')
      } finally {
        await adapter.close()
      }
    }
    // Without the certificate, the server refuses the connection; with a
    // servername the certificate does not carry, the check fails.
    const anonymous = redisAdapter({ url: server.url, tls: { ca: tls.ca }, commandTimeoutMs: 500 })
    const wrongName = redisAdapter({
      url: server.url,
      tls: { ca: tls.ca, cert: tls.clientCert, key: tls.clientKey, servername: 'other.test' },
      commandTimeoutMs: 500,
    })
    try {
      await expect(anonymous.rateLimitStore.increment('k', 60)).rejects.toThrow(/^RedisRateLimitStore: /)
      await expect(wrongName.rateLimitStore.increment('k', 60)).rejects.toThrow(/NotValidForName|not valid for/i)
    } finally {
      await anonymous.close()
      await wrongName.close()
    }
  })
  it("refuses a client's certificate checking turned off, unless tls is given beside it", async () => {
    const off = {
      ioredis: new Redis({
        host: '127.0.0.1',
        port: server.port,
        tls: { rejectUnauthorized: false },
        lazyConnect: true,
      }),
      'ioredis cluster': new Redis.Cluster([{ host: '127.0.0.1', port: server.port }], {
        redisOptions: { tls: { rejectUnauthorized: false } },
        lazyConnect: true,
      }),
      'node-redis v6': createClient6({
        socket: { host: '127.0.0.1', port: server.port, tls: true, rejectUnauthorized: false },
      }),
    }
    for (const [name, client] of Object.entries(off)) {
      expect(() => redisAdapter({ client }), name).toThrow(TypeError)
      expect(() => redisAdapter({ client }), name).toThrow(
        /^redisAdapter: the client's (tls|redisOptions\.tls|socket)\.rejectUnauthorized is false, which turns certificate checking off; .*pass the server's CA as tls: \{ ca \}/,
      )
      expect(() => new RedisRateLimitStore(client, 'p:'), name).toThrow(/^RedisRateLimitStore: the client's/)
    }
    // tls beside client replaces the client's settings, which are then not read.
    const prefix = newPrefix()
    const adapter = redisAdapter({
      client: off.ioredis,
      prefix,
      tls: { ca: tls.ca, cert: tls.clientCert, key: tls.clientKey, servername: 'redis.test' },
    })
    try {
      expect((await adapter.rateLimitStore.increment('k', 60)).count).toBe(1)
    } finally {
      await adapter.close()
    }
    const identity = new Redis({ port: server.port, tls: { checkServerIdentity: () => undefined }, lazyConnect: true })
    expect(() => redisAdapter({ client: identity })).toThrow(/tls.checkServerIdentity cannot be honoured/)
  })
})
