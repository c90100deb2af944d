// The Redis stores on a private Redis Cluster (3 primaries, 3 replicas,
// cluster-node-timeout 1000 ms) the test starts on loopback and stops by pid:
// the store contract through one seed node, exact counts on every shard with
// the data checked on the node that serves it, atomic circuits, both-way
// data sharing with Stoma's adapter on ioredis.Cluster, a lost script cache,
// slots resharded under load, and a primary killed under load.
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { rmSync } from 'node:fs'
import { promisify } from 'node:util'
import { redisAdapter as stomaRedisAdapter } from '@homegrower-club/stoma/adapters/redis'
import Redis from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { redisAdapter } from '../index.mjs'
import { load } from './support/load.mjs'
import { runNode } from './support/processes.mjs'
import { storeContract } from './support/store-contract.mjs'
import { makeCertificates, sleep, startCluster } from './support/redis-servers.mjs'

const run = promisify(execFile)

let prefixes = 0
const newPrefix = () => `stoma-native-cluster-test:${process.pid}:${++prefixes}:`

describe('redis cluster', () => {
  let cluster
  let seed
  let io // Stoma's client of choice, for its adapter and to read what landed where
  const ioOptions = () => ({ redisOptions: { maxRetriesPerRequest: 2 } })

  beforeAll(async () => {
    cluster = await startCluster()
    seed = cluster.url(cluster.nodes[0].port)
    io = new Redis.Cluster([{ host: '127.0.0.1', port: cluster.nodes[0].port }], ioOptions())
  }, 60_000)
  afterAll(async () => {
    io?.disconnect()
    await cluster?.stop()
  })

  /** A node's own client, to see what that node holds. */
  const direct = (port) => new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 1, lazyConnect: true })

  /** `count` keys (`<stem><i>`) grouped by the port of the primary serving each. */
  async function keysByPrimary(stem, count) {
    const byPort = new Map()
    for (let i = 0; i < count; i++) {
      const key = `${stem}${i}`
      const port = await cluster.portOf(key)
      if (!byPort.has(port)) byPort.set(port, [])
      byPort.get(port).push(key)
    }
    return byPort
  }

  storeContract('redis cluster', {
    createStores: () => redisAdapter({ cluster: { nodes: [seed] }, prefix: newPrefix() }),
    close: (adapter) => adapter.close(),
  })

  it('counts exactly on keys spread over every primary, from one seed, and each counter is on its primary', async () => {
    const prefix = newPrefix()
    const adapter = redisAdapter({ cluster: { nodes: [seed] }, prefix })
    try {
      const keys = Array.from({ length: 60 }, (_, i) => `k${i}`)
      const answers = await Promise.all(
        keys.flatMap((key) => Array.from({ length: 5 }, () => adapter.rateLimitStore.increment(key, 60))),
      )
      for (const [i] of keys.entries()) {
        const counts = answers.slice(i * 5, i * 5 + 5).map((a) => a.count)
        expect(counts.sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5])
      }
      const byPort = await keysByPrimary(`${prefix}rl:k`, 60)
      expect([...byPort.keys()].sort()).toEqual((await cluster.primaryPorts()).sort())
      for (const [port, held] of byPort) {
        const node = direct(port)
        try {
          for (const key of held) expect(await node.get(key)).toBe('5')
        } finally {
          node.disconnect()
        }
      }
    } finally {
      await adapter.close()
    }
  })

  it('1,000 concurrent recordFailure on one circuit count 1,000; binary bodies round-trip on every shard', async () => {
    const prefix = newPrefix()
    const adapter = redisAdapter({ cluster: { nodes: [seed] }, prefix })
    try {
      await Promise.all(Array.from({ length: 1000 }, () => adapter.circuitBreakerStore.recordFailure('hot')))
      expect((await adapter.circuitBreakerStore.getState('hot')).failureCount).toBe(1000)

      const byPort = await keysByPrimary(`${prefix}cache:body`, 30)
      expect(byPort.size).toBe(3)
      for (const held of byPort.values()) {
        const key = held[0].slice(`${prefix}cache:`.length)
        const body = randomBytes(70_000)
        await adapter.cacheStore.put(key, new Response(body, { status: 201, headers: { 'x-k': key } }), 60)
        const hit = await adapter.cacheStore.get(key)
        expect(hit.status).toBe(201)
        expect(hit.headers.get('x-k')).toBe(key)
        expect(Buffer.from(await hit.arrayBuffer()).equals(body)).toBe(true)
      }
    } finally {
      await adapter.close()
    }
  })

  it('shares data both ways with Stoma’s redisAdapter on ioredis.Cluster', async () => {
    const prefix = newPrefix()
    const ours = redisAdapter({ cluster: { nodes: [seed] }, prefix })
    const stoma = stomaRedisAdapter({ client: io, prefix })
    try {
      for (const key of ['a', 'b', 'c', 'd', 'e', 'f']) {
        await stoma.rateLimitStore.increment(key, 60)
        expect((await ours.rateLimitStore.increment(key, 60)).count).toBe(2)
        expect((await stoma.rateLimitStore.increment(key, 60)).count).toBe(3)
        expect(await io.get(`${prefix}rl:${key}`)).toBe('3')
      }
      await stoma.circuitBreakerStore.recordFailure('cb')
      const opened = await stoma.circuitBreakerStore.transition('cb', 'open')
      expect(await ours.circuitBreakerStore.getState('cb')).toEqual(opened)
      const halfOpen = await ours.circuitBreakerStore.transition('cb', 'half-open')
      expect(await stoma.circuitBreakerStore.getState('cb')).toEqual(halfOpen)
      expect(await io.get(`${prefix}cb:cb`)).toBe(JSON.stringify(halfOpen))

      const body = randomBytes(1000)
      await stoma.cacheStore.put('theirs', new Response(body, { headers: { 'x-side': 'stoma' } }), 60)
      const theirs = await ours.cacheStore.get('theirs')
      expect(theirs.headers.get('x-side')).toBe('stoma')
      expect(Buffer.from(await theirs.arrayBuffer()).equals(body)).toBe(true)
      await ours.cacheStore.put('ours', new Response(body, { headers: { 'x-side': 'ours' } }), 60)
      const mine = await stoma.cacheStore.get('ours')
      expect(mine.headers.get('x-side')).toBe('ours')
      expect(Buffer.from(await mine.arrayBuffer()).equals(body)).toBe(true)
    } finally {
      await ours.close()
    }
  })

  it('keeps answering after a node loses its script cache (SCRIPT FLUSH)', async () => {
    const adapter = redisAdapter({ cluster: { nodes: [seed] }, prefix: newPrefix() })
    try {
      const keys = Array.from({ length: 30 }, (_, i) => `s${i}`)
      await Promise.all(keys.map((key) => adapter.rateLimitStore.increment(key, 60)))
      for (const port of await cluster.primaryPorts()) await cluster.cli(port, ['SCRIPT', 'FLUSH'])
      const counts = await Promise.all(keys.map((key) => adapter.rateLimitStore.increment(key, 60)))
      expect(counts.every((c) => c.count === 2)).toBe(true)
      const circuits = await Promise.all(keys.map((key) => adapter.circuitBreakerStore.recordFailure(key)))
      expect(circuits.every((c) => c.failureCount === 1)).toBe(true)
    } finally {
      await adapter.close()
    }
  })

  it('keeps a near cache per node connection: copies answered locally, invalidations from every shard', async () => {
    const prefix = newPrefix()
    const adapter = redisAdapter({ cluster: { nodes: [seed] }, prefix, nearCache: true })
    const stoma = stomaRedisAdapter({ client: io, prefix })
    try {
      const keys = ['a', 'b', 'c', 'd', 'e', 'f']
      for (const key of keys) await adapter.circuitBreakerStore.recordFailure(key)
      for (let i = 0; i < 20; i++) {
        const states = await Promise.all(keys.map((key) => adapter.circuitBreakerStore.getState(key)))
        expect(states.every((s) => s.failureCount === 1)).toBe(true)
      }
      expect(adapter.nearCacheSize().entries).toBe(keys.length)
      // Stoma's adapter on ioredis.Cluster changes every circuit: each node
      // tells our connection to it, and the next reads see the change.
      for (const key of keys) await stoma.circuitBreakerStore.transition(key, 'open')
      const started = Date.now()
      let states = []
      while (Date.now() - started < 1000) {
        states = await Promise.all(keys.map((key) => adapter.circuitBreakerStore.getState(key)))
        if (states.every((s) => s.state === 'open')) break
        await sleep(5)
      }
      expect(states.map((s) => s.state)).toEqual(keys.map(() => 'open'))
      expect(Date.now() - started).toBeLessThan(100)
    } finally {
      await adapter.close()
    }
  })

  it('refuses a url that names a cluster node, saying to pass cluster: { nodes }', async () => {
    const adapter = redisAdapter({ url: seed, prefix: newPrefix(), connectTimeoutMs: 1000 })
    try {
      for (const key of ['a', 'b', 'c']) {
        await expect(adapter.rateLimitStore.increment(key, 60)).rejects.toThrow(
          /RedisRateLimitStore: cannot connect to Redis at 127\.0\.0\.1:\d+: this is a Redis Cluster node: pass cluster: \{ nodes: \['redis:\/\/127\.0\.0\.1:\d+'\] \} instead of url/,
        )
      }
    } finally {
      await adapter.close()
    }
  })

  it('refuses bad cluster options with a TypeError naming the option', () => {
    expect(() => redisAdapter({ url: seed, cluster: { nodes: [seed] } })).toThrow(
      /pass one of url .*, cluster .* or sentinel .*, not url and cluster/,
    )
    expect(() => redisAdapter({ cluster: { nodes: [] } })).toThrow(/cluster.nodes must be a non-empty array/)
    expect(() => redisAdapter({ cluster: seed })).toThrow(TypeError)
    expect(() => redisAdapter({ cluster: { nodes: [seed, 7] } })).toThrow(/cluster.nodes\[1\] must be a string/)
    expect(() => redisAdapter({ cluster: { nodes: [seed], node: [] } })).toThrow(/unknown option cluster.node/)
    expect(() => redisAdapter({ cluster: { nodes: [seed] }, db: 2 })).toThrow(/db: a Redis Cluster has only database 0/)
    expect(() => redisAdapter({ cluster: { nodes: ['redis://:secret@127.0.0.1:1/3'] } })).toThrow(
      /cluster.nodes\[0\] "redis:\/\/:\*\*\*@127.0.0.1:1\/3": a Redis Cluster has only database 0/,
    )
    expect(() => redisAdapter({ cluster: { nodes: [seed, 'http://x'] } })).toThrow(/cluster.nodes\[1\] "http:\/\/x"/)
  })

  it('close() closes the connection to every node, and a process holding an adapter exits by itself', async () => {
    const primaries = await cluster.primaryPorts()
    const clients = () =>
      Promise.all(
        primaries.map(async (port) => /connected_clients:(\d+)/.exec(await cluster.cli(port, ['INFO', 'clients']))[1]),
      )
    const before = await clients()
    const adapter = redisAdapter({ cluster: { nodes: [seed] }, prefix: newPrefix() })
    await Promise.all(Array.from({ length: 30 }, (_, i) => adapter.rateLimitStore.increment(`c${i}`, 60)))
    expect((await clients()).every((n, i) => Number(n) > Number(before[i]))).toBe(true)
    await adapter.close()
    await sleep(100)
    expect(await clients()).toEqual(before)
    await expect(adapter.rateLimitStore.increment('c0', 60)).rejects.toThrow(/closed/)

    const { code, stdout, stderr } = await runNode(
      `
      const { createRequire } = await import('node:module')
      const { redisAdapter } = createRequire(import.meta.url)(process.env.STOMA_NATIVE)
      const adapter = redisAdapter({ cluster: { nodes: [${JSON.stringify(seed)}] }, prefix: ${JSON.stringify(newPrefix())} })
      const hits = await Promise.all(['a', 'b', 'c', 'd', 'e', 'f'].map((key) => adapter.rateLimitStore.increment(key, 60)))
      console.log(hits.map((hit) => hit.count).join(','))
    `,
      { limitMs: 15_000 },
    )
    expect({ code, out: stdout.trim(), stderr }).toEqual({ code: 0, out: '1,1,1,1,1,1', stderr: '' })
  })

  it('hands out every count exactly once while slots are resharded under 32-way load', async () => {
    const prefix = newPrefix()
    const adapter = redisAdapter({ cluster: { nodes: [seed] }, prefix })
    try {
      const keys = Array.from({ length: 400 }, (_, i) => `r${i}`)
      const work = load((n) => adapter.rateLimitStore.increment(keys[n % keys.length], 120), { pauseMs: 2 })
      await sleep(300)
      const layout = await cluster.layout()
      const [from, to] = layout.filter((n) => n.primary && n.slots.length > 0)
      await run(
        'redis-cli',
        [
          '--cluster',
          'reshard',
          `127.0.0.1:${cluster.nodes[0].port}`,
          '--cluster-from',
          from.id,
          '--cluster-to',
          to.id,
          '--cluster-slots',
          '1500',
          '--cluster-yes',
        ],
        { timeout: 60_000 },
      )
      await sleep(300)
      await work.done()
      await cluster.settled()

      const failed = work.outcomes.filter((o) => !o.ok)
      const byKey = new Map(keys.map((key) => [key, []]))
      for (const o of work.outcomes) if (o.ok) byKey.get(keys[o.n % keys.length]).push(o.value.count)
      const stored = await Promise.all(keys.map((key) => io.get(`${prefix}rl:${key}`)))
      console.log(
        `reshard: ${work.outcomes.length} calls, ${failed.length} failed (${[...new Set(failed.map((f) => f.message))].slice(0, 3).join(' | ')})`,
      )
      expect(work.outcomes.length).toBeGreaterThan(2000)
      expect(failed.length).toBeLessThan(work.outcomes.length / 100)
      for (const [i, key] of keys.entries()) {
        const counts = byKey.get(key).sort((a, b) => a - b)
        // Never a count handed out twice (doubled), never one more than stored (lost).
        expect(new Set(counts).size).toBe(counts.length)
        expect(Number(stored[i])).toBeGreaterThanOrEqual(counts.length)
        expect(counts.at(-1)).toBeLessThanOrEqual(Number(stored[i]))
      }
      // Where nothing failed, the counts are exactly 1..n and n is stored.
      if (failed.length === 0) {
        for (const [i, key] of keys.entries()) {
          expect(byKey.get(key)).toEqual(Array.from({ length: Number(stored[i]) }, (_, c) => c + 1))
        }
      }
    } finally {
      await adapter.close()
    }
  }, 90_000)

  it('a primary SIGKILLed: its keys answer again within 8 s, the other shards keep succeeding', async () => {
    const prefix = newPrefix()
    const adapter = redisAdapter({ cluster: { nodes: cluster.nodes.map((n) => cluster.url(n.port)) }, prefix })
    try {
      const byPort = await keysByPrimary(`${prefix}rl:f`, 90)
      const [victim, ...others] = [...byPort.keys()]
      const name = (full) => full.slice(`${prefix}rl:`.length)
      const victimKeys = byPort.get(victim).map(name)
      const otherKeys = others.flatMap((port) => byPort.get(port)).map(name)
      const all = [...victimKeys.map((key) => ({ key, victim: true })), ...otherKeys.map((key) => ({ key }))]
      const work = load((n) => adapter.rateLimitStore.increment(all[n % all.length].key, 120), { pauseMs: 2 })
      await sleep(500)
      const killedAt = Date.now()
      await cluster.kill(victim)
      let recoveredAt = null
      while (Date.now() - killedAt < 15_000) {
        if (work.outcomes.some((o) => o.ok && o.at > killedAt + 50 && all[o.n % all.length].victim)) {
          recoveredAt = work.outcomes.find((o) => o.ok && o.at > killedAt + 50 && all[o.n % all.length].victim).at
          break
        }
        await sleep(50)
      }
      await sleep(300)
      await work.done()
      const during = work.outcomes.filter((o) => o.at > killedAt && o.at <= (recoveredAt ?? Date.now()))
      const otherDuring = during.filter((o) => !all[o.n % all.length].victim)
      const rate = otherDuring.filter((o) => o.ok).length / otherDuring.length
      console.log(
        `failover: victim keys back after ${recoveredAt - killedAt} ms; other shards ${otherDuring.length} calls meanwhile, ` +
          `${(rate * 100).toFixed(1)}% ok (${[...new Set(otherDuring.filter((o) => !o.ok).map((o) => o.message))].slice(0, 2).join(' | ')})`,
      )
      expect(recoveredAt).not.toBeNull()
      expect(recoveredAt - killedAt).toBeLessThanOrEqual(8000)
      expect(otherDuring.length).toBeGreaterThan(100)
      expect(rate).toBeGreaterThanOrEqual(0.95)
      // Every failure names the store and the cause.
      expect(work.outcomes.filter((o) => !o.ok).every((o) => /^RedisRateLimitStore: /.test(o.message))).toBe(true)
    } finally {
      await adapter.close()
    }
  }, 60_000)
})

describe('redis cluster over TLS with a password', () => {
  let cluster
  let tls
  beforeAll(async () => {
    tls = makeCertificates(['DNS:localhost', 'IP:127.0.0.1'])
    cluster = await startCluster({ tls, password: 'cluster-secret' })
  }, 60_000)
  afterAll(async () => {
    await cluster?.stop()
    rmSync(tls.dir, { recursive: true, force: true })
  })

  it('discovers every node from a rediss:// seed, checking each certificate against tls.ca', async () => {
    const adapter = redisAdapter({
      cluster: { nodes: [cluster.url(cluster.nodes[0].port)] },
      tls: { ca: tls.ca },
      prefix: newPrefix(),
    })
    try {
      const keys = Array.from({ length: 40 }, (_, i) => `t${i}`)
      const first = await Promise.all(keys.map((key) => adapter.rateLimitStore.increment(key, 60)))
      const second = await Promise.all(keys.map((key) => adapter.rateLimitStore.increment(key, 60)))
      expect(first.every((a) => a.count === 1) && second.every((a) => a.count === 2)).toBe(true)
      expect((await adapter.circuitBreakerStore.recordFailure('c')).failureCount).toBe(1)
    } finally {
      await adapter.close()
    }
    // Without the CA the certificate is refused; with a wrong password AUTH is.
    const untrusted = redisAdapter({ cluster: { nodes: [cluster.url(cluster.nodes[0].port)] }, commandTimeoutMs: 500 })
    const wrong = redisAdapter({
      cluster: { nodes: [`rediss://:wrong@127.0.0.1:${cluster.nodes[0].port}`] },
      tls: { ca: tls.ca },
      commandTimeoutMs: 500,
    })
    try {
      await expect(untrusted.rateLimitStore.increment('x', 60)).rejects.toThrow(/certificate|UnknownIssuer/i)
      await expect(wrong.rateLimitStore.increment('x', 60)).rejects.toThrow(/WRONGPASS|invalid username-password/i)
    } finally {
      await untrusted.close()
      await wrong.close()
    }
  })
})
