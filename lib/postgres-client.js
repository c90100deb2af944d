'use strict'
// Where a PostgreSQL client from npm points, as postgresAdapter options: a
// node-postgres (`pg`) Pool or Client, or a postgres.js `sql` (`postgres(url)`
// / `postgres({ … })`), connected or not. A Stoma user passes
// `postgresAdapter({ client })`; we open our own connections to the same
// server, database and user, with the same TLS settings, and never send a
// query through the client itself. What cannot be read is a TypeError that
// says to pass `url`: never a silent fall back to DATABASE_URL or the
// default server.

const { describe } = require('./validate.js')
const { clientTls } = require('./client-tls.js')

const PASS_URL = 'pass url (postgres://user:password@host:port/database) instead of client'

/** A libpq `key=value` connection string (our url's other form), every value quoted. */
function conninfo(settings) {
  return Object.entries(settings)
    .filter(([, value]) => value !== undefined && value !== null && value !== '')
    .map(([key, value]) => `${key}='${String(value).replace(/[\\']/g, '\\$&')}'`)
    .join(' ')
}

/** A client's password, refused when it is a function (called only at connect time). */
function password(who, value) {
  if (typeof value === 'function') {
    throw new TypeError(
      `${who}: the client's password is a function, which cannot be read ahead of a connection; ${PASS_URL}`,
    )
  }
  return value
}

/** A host, port, user or database read from a client: present and plain. */
function required(who, value, name, check) {
  if (!check(value))
    throw new TypeError(`${who}: cannot read the client's ${name} (got ${describe(value)}); ${PASS_URL}`)
  return value
}

const isText = (value) => typeof value === 'string' && value !== ''
const isPort = (value) => Number.isInteger(Number(value)) && Number(value) > 0 && Number(value) < 65536

/**
 * node-postgres: a Client's `connectionParameters` say where it connects —
 * its connectionString parsed, then PG* environment variables and
 * pg.defaults for what is missing. A Pool works them out only when it makes
 * a client, so one is made here by the pool's own Client class, exactly as
 * the pool would, and never connected.
 */
function pgParameters(who, client) {
  if (client.connectionParameters) return client.connectionParameters
  if (client.options.stream !== undefined) {
    throw new TypeError(
      `${who}: the client connects through its own stream, so where it leads cannot be read; ${PASS_URL}`,
    )
  }
  return new client.Client(client.options).connectionParameters
}

/** Our options for a pg Pool or Client. */
function pgOptions(who, client, readTls) {
  const params = pgParameters(who, client)
  const url = conninfo({
    host: required(who, params.host, 'host', isText),
    port: required(who, params.port, 'port', isPort),
    user: required(who, params.user, 'user', isText),
    password: password(who, params.password),
    dbname: required(who, params.database, 'database', isText),
    // e.g. `-c search_path=…`, which decides where unqualified tables are.
    options: params.options,
  })
  if (!readTls || !params.ssl) return { url }
  // pg treats any other truthy ssl (true, 'true', {}) as TLS with the checks on.
  return { url, tls: typeof params.ssl === 'object' ? clientTls(who, params.ssl, 'ssl') : true }
}

/**
 * postgres.js's startup `connection` parameters as `options` (`-c name=value`,
 * spaces and backslashes escaped as the server reads them); its own
 * application_name is left out, ours is used.
 */
function startupOptions(connection) {
  const escaped = (text) => String(text).replace(/[\\ ]/g, '\\$&')
  const parts = []
  for (const [name, value] of Object.entries(connection ?? {})) {
    if (name === 'application_name' || value === undefined || value === null) continue
    parts.push(name === 'options' ? String(value) : `-c ${escaped(name)}=${escaped(value)}`)
  }
  return parts.join(' ')
}

/** postgres.js `target_session_attrs`: the stores write, so only the primary will do. */
function sessionAttrs(who, value) {
  if (!value) return undefined
  if (value === 'read-write' || value === 'primary') return 'read-write'
  throw new TypeError(
    `${who}: the client's target_session_attrs is ${describe(value)}, but the stores write: point the client at the primary, or ${PASS_URL}`,
  )
}

/** Our options for a postgres.js `sql`: its `options`, already resolved (url, env, defaults). */
function postgresJsOptions(who, o, readTls) {
  if (o.socket) {
    throw new TypeError(
      `${who}: the client connects through its own socket, so where it leads cannot be read; ${PASS_URL}`,
    )
  }
  let host
  let port
  if (o.path) {
    // A unix socket: `<directory>/.s.PGSQL.<port>`.
    const socket = /^(.+)\/\.s\.PGSQL\.(\d+)$/.exec(o.path)
    if (!socket) throw new TypeError(`${who}: cannot read the client's socket path ${describe(o.path)}; ${PASS_URL}`)
    ;[, host, port] = socket
  } else {
    const hosts = required(who, o.host, 'host', (h) => Array.isArray(h) && h.length > 0 && h.every(isText))
    const ports = required(who, o.port, 'port', (p) => Array.isArray(p) && p.length === hosts.length && p.every(isPort))
    host = hosts.join(',')
    port = ports.join(',')
  }
  const ssl = readTls ? o.ssl : false
  const url = conninfo({
    host,
    port,
    user: required(who, o.user, 'user', isText),
    password: password(who, o.pass),
    dbname: required(who, o.database, 'database', isText),
    options: startupOptions(o.connection),
    target_session_attrs: sessionAttrs(who, o.target_session_attrs),
    // postgres.js's 'prefer' falls back to plaintext when the server has no
    // TLS; when it has, ours checks the certificate.
    sslmode: ssl === 'prefer' ? 'prefer' : undefined,
  })
  if (!ssl || ssl === 'disable' || ssl === 'prefer') return { url }
  // 'require', 'allow', 'verify-ca', 'verify-full', true: TLS, which here
  // always checks the certificate and the name (postgres.js checks neither
  // for 'require' and 'allow': pass the server's CA as tls: { ca } if it is
  // not publicly trusted).
  return { url, tls: typeof ssl === 'object' ? clientTls(who, ssl, 'ssl') : true }
}

const isPostgresJs = (client) =>
  typeof client === 'function' && typeof client.unsafe === 'function' && typeof client.options === 'object'
const isPgClient = (client) => typeof client.query === 'function' && typeof client.connectionParameters === 'object'
const isPgPool = (client) =>
  typeof client.query === 'function' && typeof client.Client === 'function' && typeof client.options === 'object'

/**
 * Our `url` (and `tls`, unless `readTls` is false because the caller gave
 * its own) for `client`, or a TypeError saying what to pass instead when it
 * is not a client we can read.
 */
function clientOptions(who, client, { readTls = true } = {}) {
  if (isPostgresJs(client)) return postgresJsOptions(who, client.options, readTls)
  if (client !== null && typeof client === 'object' && (isPgClient(client) || isPgPool(client))) {
    return pgOptions(who, client, readTls)
  }
  throw new TypeError(
    `${who}: client must be a pg Pool or Client, or a postgres.js sql (postgres(…)), whose settings can be read, ` +
      `got ${describe(client)}; ${PASS_URL}`,
  )
}

/**
 * Whether a store's first argument is a client (Stoma's `(client, table)`)
 * rather than our options object: a function (postgres.js) or an object
 * made by a class.
 */
function isClient(value) {
  if (typeof value === 'function') return true
  if (value === null || typeof value !== 'object') return false
  const proto = Object.getPrototypeOf(value)
  return proto !== Object.prototype && proto !== null
}

module.exports = { clientOptions, isClient }
