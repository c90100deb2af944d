'use strict'
// Where a Redis client from npm points, as redisAdapter options: ioredis
// `Redis` (one server, or sentinels) and `Redis.Cluster`, node-redis
// `createClient` and `createCluster` (v4 to v6), connected or not (not
// node-redis `createSentinel`, whose settings are private). A Stoma
// user passes `redisAdapter({ client })`; we open our own connections to the
// same place with the same credentials, database and TLS settings, and never
// send a command through the client itself.

const { describe } = require('./validate.js')
const { clientTls } = require('./client-tls.js')

/** `redis://host:port` (`rediss://` with `tls`), an IPv6 host in brackets. */
function hostUrl(host, port, tls) {
  const name = host.includes(':') ? `[${host}]` : host
  return `${tls ? 'rediss' : 'redis'}://${name}:${port}`
}

/** A unix socket's url (the database travels in the `db` option). */
const socketUrl = (path) => `unix://${path}`

/**
 * A client's TLS settings as our `tls` option: undefined without TLS, or
 * when the caller gave its own `tls` (`read.tls` false), which replaces them.
 */
function tlsOf(read, settings, field) {
  if (!settings || !read.tls) return undefined
  return settings === true ? true : clientTls(read.who, settings, field)
}

/** Drops the undefined fields, so they do not count as options given. */
function defined(options) {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined && value !== null))
}

/** The empty string ioredis and node-redis keep for "no password" is none. */
const credential = (value) => (value === '' || value === null ? undefined : value)

/** ioredis `new Redis(…)`: one server, a unix socket, or sentinels and a name. */
function ioredisOptions(read, o) {
  const login = {
    username: credential(o.username),
    password: credential(o.password),
    db: o.db || undefined,
    // ioredis puts it before every key, Stoma's included.
    keyPrefix: o.keyPrefix || undefined,
  }
  if (Array.isArray(o.sentinels) && o.sentinels.length > 0) {
    // As ioredis reads them: the sentinels speak TLS with `sentinelTLS`'s
    // settings when it is given; the primary with `tls`'s only when
    // `enableTLSForSentinelMode` says so.
    // (A `tls` beside client replaces the primary's settings, not these.)
    const sentinelTls = tlsOf({ ...read, tls: true }, o.sentinelTLS, 'sentinelTLS')
    return defined({
      sentinel: defined({
        name: o.name,
        nodes: o.sentinels.map((s) => hostUrl(s.host ?? 'localhost', s.port ?? 26379, Boolean(o.sentinelTLS))),
        username: credential(o.sentinelUsername),
        password: credential(o.sentinelPassword),
        tls: sentinelTls,
      }),
      ...login,
      tls: o.enableTLSForSentinelMode ? tlsOf(read, o.tls, 'tls') : undefined,
    })
  }
  if (o.path) return defined({ url: socketUrl(o.path), ...login })
  return defined({
    url: hostUrl(o.host ?? 'localhost', o.port ?? 6379, false),
    ...login,
    tls: tlsOf(read, o.tls, 'tls'),
  })
}

/** ioredis `new Redis.Cluster(startupNodes, { redisOptions })`. */
function ioredisClusterOptions(read, client) {
  const redisOptions = client.options?.redisOptions ?? {}
  if (client.options.natMap && Object.keys(client.options.natMap).length > 0) {
    throw new TypeError(
      `${read.who}: the client's natMap cannot be honoured: stoma-native connects to the addresses the cluster ` +
        'announces (cluster-announce-ip / cluster-announce-port on the nodes); pass cluster: { nodes } instead of client',
    )
  }
  const tls = tlsOf(read, redisOptions.tls, 'redisOptions.tls')
  const nodes = client.startupNodes.map((node) => {
    if (typeof node === 'number') return hostUrl('localhost', node, false)
    if (typeof node === 'string') return node.includes('://') ? node : `redis://${node}`
    return hostUrl(node.host ?? 'localhost', node.port ?? 6379, false)
  })
  return defined({
    cluster: { nodes },
    username: credential(redisOptions.username),
    password: credential(redisOptions.password),
    tls,
    keyPrefix: client.options.keyPrefix || redisOptions.keyPrefix || undefined,
  })
}

/** node-redis `createClient({ url, socket, username, password, database })`. */
function nodeRedisOptions(read, o) {
  const socket = o.socket ?? {}
  const login = { username: credential(o.username), password: credential(o.password), db: o.database || undefined }
  if (socket.path) return defined({ url: socketUrl(socket.path), ...login })
  return defined({
    url: hostUrl(socket.host ?? 'localhost', socket.port ?? 6379, false),
    ...login,
    tls: socket.tls ? tlsOf(read, socket, 'socket') : undefined,
  })
}

/**
 * node-redis `createCluster({ rootNodes, defaults })`: v5 and later keep
 * them readable; v4 hides them, so only a connected v4 cluster can be read,
 * through the primaries it found.
 */
function nodeRedisClusterOptions(read, client) {
  // v5 and v6 keep them as `_options`.
  const options = client._options ?? client.options
  if (options?.rootNodes) {
    const defaults = options.defaults ?? {}
    const socket = defaults.socket ?? {}
    const nodes = options.rootNodes.map((node) =>
      node.url ? node.url : hostUrl(node.socket?.host ?? 'localhost', node.socket?.port ?? 6379, false),
    )
    return defined({
      cluster: { nodes },
      username: credential(defaults.username),
      password: credential(defaults.password),
      tls: socket.tls ? tlsOf(read, socket, 'socket') : undefined,
    })
  }
  const primaries = client.masters ?? []
  const first = primaries.find((primary) => primary.client?.options)?.client?.options
  if (primaries.length === 0 || !first) {
    throw new TypeError(
      `${read.who}: cannot read where this node-redis v4 cluster points before it is connected; ` +
        `await client.connect() first, or pass cluster: { nodes: ['redis://host:port', …] } instead of client`,
    )
  }
  const { url: _url, ...login } = nodeRedisOptions(read, first)
  return defined({
    cluster: { nodes: primaries.map((primary) => hostUrl(primary.host, primary.port, false)) },
    ...login,
  })
}

/**
 * Our options for `client` (its `tls` too, unless `readTls` is false because
 * the caller gave its own), or a TypeError saying what to pass instead when
 * it is not a client we can read.
 */
function clientOptions(who, client, { readTls = true } = {}) {
  const read = { who, tls: readTls }
  if (client !== null && typeof client === 'object') {
    if (Array.isArray(client.startupNodes) && client.options) return ioredisClusterOptions(read, client)
    if (client.options && 'lazyConnect' in client.options && 'retryStrategy' in client.options) {
      return ioredisOptions(read, client.options)
    }
    if ('masters' in client && 'nodeByAddress' in client) {
      return nodeRedisClusterOptions(read, client)
    }
    if (typeof client.getSentinelNode === 'function' && typeof client.getMasterNode === 'function') {
      // node-redis v5+ `createSentinel` keeps its name and nodes in private fields.
      throw new TypeError(
        `${who}: a node-redis sentinel client (createSentinel) keeps its settings private, so where it points ` +
          `cannot be read; pass sentinel: { name, nodes: ['redis://host:26379', …] } instead of client`,
      )
    }
    if (
      client.options &&
      ('socket' in client.options || 'url' in client.options) &&
      typeof client.connect === 'function'
    ) {
      return nodeRedisOptions(read, client.options)
    }
  }
  throw new TypeError(
    `${who}: client must be an ioredis Redis or Cluster, or a node-redis client or cluster, whose settings can be read, ` +
      `got ${describe(client)}; pass url, cluster: { nodes } or sentinel: { name, nodes } instead`,
  )
}

/** Whether `value` looks like a Redis client (rather than an options object). */
function isClient(value) {
  return value !== null && typeof value === 'object' && Object.getPrototypeOf(value) !== Object.prototype
}

module.exports = { clientOptions, isClient }
