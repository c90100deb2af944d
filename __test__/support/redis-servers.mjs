// Private Redis deployments for the tests: lone servers, a Redis Cluster
// (`redis-server --cluster-enabled yes` + `redis-cli --cluster create`) and
// a primary with replicas watched by sentinels (`redis-server --sentinel`),
// each on spare loopback ports in a fresh temporary directory. Every process
// is stopped by its pid — by `stop()`, and when the test process exits even
// if a test failed — never by name.
import { execFile, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Every server started here, so none outlives the test process.
const started = new Set()
process.on('exit', () => {
  for (const child of started) child.kill('SIGKILL')
})

/**
 * A free loopback port for a test server. Each test process hands out
 * ports from its own block below the kernel's ephemeral range (32768 and
 * up here), so neither a port another test file picks nor the local port
 * of an outgoing connection can take it between picking and binding. A
 * port something already listens on is skipped.
 */
export async function sparePort() {
  for (;;) {
    const port = PORTS.first + (PORTS.next++ % PORTS.size)
    if (await bindable(port)) return port
  }
}

// vitest numbers its workers 1, 2, …; a script run alone has no number.
// STOMA_TEST_PORT_BLOCK shifts the blocks, for two checkouts testing at once.
const PORT_BLOCKS = 20
const BLOCK = (Number(process.env.VITEST_POOL_ID) || process.pid) + (Number(process.env.STOMA_TEST_PORT_BLOCK) || 0)
const PORTS = {
  first: 12_000 + (BLOCK % PORT_BLOCKS) * 500,
  size: 500,
  // Where a worker's next test file starts, so it does not reuse at once
  // the ports of the file before.
  next: Math.floor(Math.random() * 500),
}

/** Whether a server can listen on `port` of 127.0.0.1 now. */
async function bindable(port) {
  const probe = net.createServer()
  try {
    probe.listen(port, '127.0.0.1')
    await once(probe, 'listening')
    return true
  } catch {
    return false
  } finally {
    await new Promise((resolve) => probe.close(() => resolve()))
  }
}

/**
 * A private CA and a server certificate it signed for `names` (subject
 * alternative names, e.g. `DNS:localhost`, `IP:127.0.0.1`), made with
 * openssl in a temporary directory.
 */
export function makeCertificates(names = ['DNS:localhost']) {
  const dir = mkdtempSync(join(tmpdir(), 'stoma-native-tls-'))
  const file = (name) => join(dir, name)
  const openssl = (...args) => execFileSync('openssl', args, { stdio: 'ignore' })
  const ecKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  openssl(
    'req',
    '-x509',
    ...ecKey,
    '-keyout',
    file('ca.key'),
    '-out',
    file('ca.pem'),
    '-days',
    '2',
    '-subj',
    '/CN=stoma-native test CA',
  )
  // A key and a certificate the CA signs for `name` with `extensions`.
  const issue = (name, subject, extensions) => {
    openssl('req', ...ecKey, '-keyout', file(`${name}.key`), '-out', file(`${name}.csr`), '-subj', subject)
    writeFileSync(file(`${name}.cnf`), `${extensions}\n`)
    const ca = ['-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial']
    const out = ['-out', file(`${name}.pem`), '-days', '2', '-extfile', file(`${name}.cnf`)]
    openssl('x509', '-req', '-in', file(`${name}.csr`), ...ca, ...out)
  }
  issue('server', '/CN=localhost', `subjectAltName=${names.join(',')}`)
  // And one for the client side, for servers that ask for one.
  issue('client', '/CN=stoma-native client', 'extendedKeyUsage=clientAuth')
  return {
    dir,
    ca: readFileSync(file('ca.pem'), 'utf8'),
    caFile: file('ca.pem'),
    certFile: file('server.pem'),
    keyFile: file('server.key'),
    clientCert: readFileSync(file('client.pem'), 'utf8'),
    clientKey: readFileSync(file('client.key'), 'utf8'),
  }
}

/** redis-server arguments for a test server: loopback only, nothing written to disk. */
const PRIVATE = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']

/** The redis-server arguments to listen on `port`, over TLS with `tls`. */
function listenArgs(port, tls) {
  if (!tls) return ['--port', String(port)]
  return [
    '--port',
    '0',
    '--tls-port',
    String(port),
    '--tls-cert-file',
    tls.certFile,
    '--tls-key-file',
    tls.keyFile,
    '--tls-ca-cert-file',
    tls.caFile,
  ]
}

/** redis-cli's arguments to reach a server started with `tls` and `password`. */
function cliArgs({ tls, password }) {
  const certificate = tls?.client ? ['--cert', join(tls.dir, 'client.pem'), '--key', join(tls.dir, 'client.key')] : []
  return [
    ...(tls ? ['--tls', '--cacert', tls.caFile, ...certificate] : []),
    ...(password ? ['-a', password, '--no-auth-warning'] : []),
  ]
}

/** Runs redis-cli against `port`; resolves with its output. */
export async function cli(port, args, options = {}) {
  const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...cliArgs(options), ...args], {
    timeout: 10_000,
  })
  return stdout
}

/** Starts one redis-server with `args` and resolves once it answers PING. */
async function startServer(port, args, options = {}) {
  const child = spawn('redis-server', args, { stdio: 'ignore' })
  started.add(child)
  child.once('exit', () => started.delete(child))
  for (let i = 0; i < 400; i++) {
    if (child.exitCode !== null) throw new Error(`redis-server on port ${port} exited (${child.exitCode})`)
    try {
      // The server answering must be this child, not one that took the port first.
      const info = await cli(port, ['INFO', 'server'], options)
      if (Number(/process_id:(\d+)/.exec(info)?.[1]) === child.pid) return child
    } catch {}
    await sleep(25)
  }
  child.kill('SIGKILL')
  throw new Error(`redis-server on port ${port} did not answer`)
}

/**
 * A lone, persistence-free redis-server on a spare port (over TLS with `tls`,
 * asking clients for certificates with `clientAuth`). Answers `{ port, url,
 * stop }`.
 */
export async function startRedis({ tls, clientAuth = false, password } = {}) {
  const port = await sparePort()
  const options = { tls: tls && { ...tls, client: clientAuth }, password }
  const child = await startRedisAt(port, { tls, clientAuth, password })
  return {
    port,
    url: `${tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
    cli: (cliArgs) => cli(port, cliArgs, options),
    stop: () => kill(child),
  }
}

/**
 * A lone, persistence-free redis-server on `port` (as `startRedis` takes
 * its options), to kill and start again on the same port; resolves with its
 * process once it answers.
 */
export function startRedisAt(port, { tls, clientAuth = false, password } = {}) {
  const args = [
    ...listenArgs(port, tls),
    ...(tls ? ['--tls-auth-clients', clientAuth ? 'yes' : 'no'] : []),
    ...PRIVATE,
    ...(password ? ['--requirepass', password] : []),
  ]
  return startServer(port, args, { tls: tls && { ...tls, client: clientAuth }, password })
}

/** Kills `child` by its pid and waits for it to exit. */
export async function kill(child, signal = 'SIGKILL') {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill(signal)
  await exited
}

/**
 * A Redis Cluster of `primaries` primaries with `replicas` replicas each,
 * on spare ports, optionally with a `password` (requirepass + masterauth)
 * and `tls` (see makeCertificates; the certificate must name 127.0.0.1).
 * Resolves once every node sees the cluster as ok.
 */
export async function startCluster({ primaries = 3, replicas = 1, password, tls, nodeTimeoutMs = 1000 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'stoma-native-cluster-'))
  const options = { tls, password }
  const count = primaries * (1 + replicas)
  const nodes = []
  for (let i = 0; i < count; i++) {
    const port = await sparePort()
    // The bus port is chosen too: port + 10000 may not exist.
    const busPort = await sparePort()
    nodes.push({ port, busPort })
  }
  const nodeArgs = (node) => [
    ...listenArgs(node.port, tls),
    ...(tls ? ['--tls-cluster', 'yes', '--tls-replication', 'yes', '--tls-auth-clients', 'no'] : []),
    '--cluster-enabled',
    'yes',
    '--cluster-port',
    String(node.busPort),
    '--cluster-config-file',
    join(dir, `nodes-${node.port}.conf`),
    '--cluster-node-timeout',
    String(nodeTimeoutMs),
    '--dir',
    dir,
    ...PRIVATE,
    ...(password ? ['--requirepass', password, '--masterauth', password] : []),
  ]
  const cluster = {
    dir,
    nodes,
    options,
    scheme: tls ? 'rediss' : 'redis',
    /** The url of the node on `port` (with the password, if any). */
    url(port) {
      return `${this.scheme}://${password ? `:${password}@` : ''}127.0.0.1:${port}`
    },
    /** Runs redis-cli against the node on `port`. */
    cli: (port, args) => cli(port, args, options),
    /** The node ids, roles and slot ranges, as CLUSTER NODES tells them. */
    async layout(port = nodes.find((n) => n.child.exitCode === null).port) {
      const lines = (await cli(port, ['CLUSTER', 'NODES'], options)).trim().split('\n')
      return lines.map((line) => {
        const [id, address, flags, primaryId, , , , link, ...slots] = line.split(' ')
        return {
          id,
          port: Number(address.split('@')[0].split(':')[1]),
          primary: flags.includes('master'),
          failed: flags.includes('fail'),
          primaryId: primaryId === '-' ? null : primaryId,
          link,
          slots,
        }
      })
    },
    /** The ports of the primaries serving slots. */
    async primaryPorts() {
      return (await this.layout()).filter((n) => n.primary && !n.failed && n.slots.length > 0).map((n) => n.port)
    },
    /** The port of the primary serving `key`. */
    async portOf(key) {
      const slot = Number((await cli(nodes[0].port, ['CLUSTER', 'KEYSLOT', key], options)).trim())
      for (const node of await this.layout()) {
        if (!node.primary || node.failed) continue
        for (const range of node.slots) {
          if (range.startsWith('[')) continue // a migration in progress
          const [first, last = first] = range.split('-').map(Number)
          if (slot >= first && slot <= last) return node.port
        }
      }
      throw new Error(`no primary serves slot ${slot}`)
    },
    /** Waits until every live node reports cluster_state:ok. */
    async settled(limitMs = 20_000) {
      const deadline = Date.now() + limitMs
      for (;;) {
        const live = nodes.filter((n) => n.child.exitCode === null && n.child.signalCode === null)
        const states = await Promise.all(live.map((n) => cli(n.port, ['CLUSTER', 'INFO'], options).catch(() => '')))
        if (states.every((s) => s.includes('cluster_state:ok'))) return
        if (Date.now() > deadline) throw new Error(`the cluster did not settle: ${states.join(' | ')}`)
        await sleep(100)
      }
    },
    /** SIGKILLs the node on `port`. */
    async kill(port) {
      await kill(nodes.find((n) => n.port === port).child)
    },
    /** Stops every node by pid and removes the directory. */
    async stop() {
      await Promise.all(nodes.map((n) => n.child && kill(n.child)))
      rmSync(dir, { recursive: true, force: true })
    },
  }
  try {
    for (const node of nodes) node.child = await startServer(node.port, nodeArgs(node), options)
    await run(
      'redis-cli',
      [
        ...cliArgs(options),
        '--cluster',
        'create',
        ...nodes.map((n) => `127.0.0.1:${n.port}`),
        '--cluster-replicas',
        String(replicas),
        '--cluster-yes',
      ],
      { timeout: 30_000 },
    )
    await cluster.settled()
    // Replicas attach asynchronously; a failover test needs them in sync.
    const deadline = Date.now() + 20_000
    while ((await cluster.layout()).some((n) => n.link !== 'connected') && Date.now() < deadline) await sleep(100)
    return cluster
  } catch (error) {
    await cluster.stop()
    throw error
  }
}

/**
 * A primary, `replicas` replicas and `sentinels` sentinels
 * (`redis-server --sentinel`) monitoring it as `name`, with
 * down-after-milliseconds `downAfterMs`; optionally a `password` on the data
 * servers and `sentinelPassword` on the sentinels, and TLS on both, each
 * with its own certificates (`tls` and `sentinelTls`, see makeCertificates). Resolves once every
 * sentinel knows the primary and its replicas.
 */
export async function startSentinels({
  name = 'mymaster',
  replicas = 1,
  sentinels = 3,
  password,
  sentinelPassword,
  downAfterMs = 1000,
  tls,
  sentinelTls,
} = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'stoma-native-sentinel-'))
  const dataOptions = { password, tls }
  const sentinelOptions = { password: sentinelPassword, tls: sentinelTls }
  // A sentinel's outgoing connections are all TLS or none.
  if (Boolean(tls) !== Boolean(sentinelTls))
    throw new Error('startSentinels: pass both tls and sentinelTls, or neither')
  const bothCas = join(dir, 'both-cas.pem')
  if (tls) writeFileSync(bothCas, `${tls.ca}\n${sentinelTls.ca}`)
  const data = []
  for (let i = 0; i <= replicas; i++) data.push({ port: await sparePort() })
  const watchers = []
  for (let i = 0; i < sentinels; i++) watchers.push({ port: await sparePort() })
  const primary = data[0]
  const dataArgs = (node) => [
    ...listenArgs(node.port, tls),
    ...(tls ? ['--tls-replication', 'yes', '--tls-auth-clients', 'no'] : []),
    ...PRIVATE,
    '--dir',
    dir,
    ...(password ? ['--requirepass', password, '--masterauth', password] : []),
    ...(node === primary ? [] : ['--replicaof', '127.0.0.1', String(primary.port)]),
  ]
  const deployment = {
    dir,
    name,
    data,
    watchers,
    /** The sentinels' urls. */
    sentinelUrls: () => watchers.map((s) => `redis://127.0.0.1:${s.port}`),
    /** Runs redis-cli against the data server on `port`. */
    cli: (port, args) => cli(port, args, dataOptions),
    /** The port of the primary, as the sentinels tell it. */
    async primaryPort() {
      const live = watchers.find((s) => s.child.exitCode === null)
      const answer = await cli(live.port, ['SENTINEL', 'get-master-addr-by-name', name], sentinelOptions)
      return Number(answer.trim().split('\n')[1])
    },
    /** The role (`master` / `slave`) of the data server on `port`. */
    async role(port) {
      return (await cli(port, ['ROLE'], dataOptions)).trim().split('\n')[0]
    },
    /** Waits until the data server on `port` has `role`. */
    async until(port, role, limitMs = 15_000) {
      const deadline = Date.now() + limitMs
      while ((await this.role(port).catch(() => '')) !== role) {
        if (Date.now() > deadline) throw new Error(`the server on port ${port} is not a ${role}`)
        await sleep(50)
      }
    },
    /** Waits until every replica of the primary on `port` is online and less than a second behind. */
    async replicated(port, limitMs = 15_000) {
      const deadline = Date.now() + limitMs
      for (;;) {
        const info = await cli(port, ['INFO', 'replication'], dataOptions)
        const lags = [...info.matchAll(/state=online,offset=\d+,lag=(\d+)/g)].map((m) => Number(m[1]))
        if (lags.length === replicas && lags.every((lag) => lag <= 1)) return
        if (Date.now() > deadline) throw new Error(`the replicas of port ${port} did not catch up: ${info}`)
        await sleep(50)
      }
    },
    /** SIGKILLs the data server on `port`. */
    async kill(port) {
      await kill(data.find((n) => n.port === port).child)
    },
    /** Starts the data server on `port` again (as it was started first). */
    async restart(port) {
      const node = data.find((n) => n.port === port)
      node.child = await startServer(port, dataArgs(node), dataOptions)
    },
    /** Stops every server and sentinel by pid and removes the directory. */
    async stop() {
      await Promise.all([...data, ...watchers].map((n) => n.child && kill(n.child)))
      rmSync(dir, { recursive: true, force: true })
    },
  }
  try {
    for (const node of data) node.child = await startServer(node.port, dataArgs(node), dataOptions)
    for (const [index, sentinel] of watchers.entries()) {
      // A sentinel rewrites its configuration file, so each has its own.
      const file = join(dir, `sentinel-${index}.conf`)
      writeFileSync(
        file,
        [
          ...(sentinelTls
            ? [
                'port 0',
                `tls-port ${sentinel.port}`,
                `tls-cert-file ${sentinelTls.certFile}`,
                `tls-key-file ${sentinelTls.keyFile}`,
                'tls-auth-clients no',
                // Outgoing connections, to the data servers and to each
                // other, speak TLS too, trusting both CAs.
                'tls-replication yes',
                `tls-ca-cert-file ${bothCas}`,
              ]
            : [`port ${sentinel.port}`]),
          'bind 127.0.0.1',
          `dir ${dir}`,
          `sentinel monitor ${name} 127.0.0.1 ${primary.port} ${Math.floor(sentinels / 2) + 1}`,
          `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
          `sentinel failover-timeout ${name} 10000`,
          `sentinel parallel-syncs ${name} 1`,
          ...(password ? [`sentinel auth-pass ${name} ${password}`] : []),
          ...(sentinelPassword ? [`requirepass ${sentinelPassword}`] : []),
          '',
        ].join('\n'),
      )
      sentinel.child = await startServer(sentinel.port, [file, '--sentinel'], sentinelOptions)
    }
    // Every sentinel must know the replicas (and each other) before a
    // failover can be voted.
    const deadline = Date.now() + 20_000
    for (;;) {
      const views = await Promise.all(
        watchers.map((s) => cli(s.port, ['SENTINEL', 'master', name], sentinelOptions).catch(() => '')),
      )
      const field = (view, key) => {
        const lines = view.trim().split('\n')
        return Number(lines[lines.indexOf(key) + 1])
      }
      const ready = views.every(
        (view) => field(view, 'num-slaves') === replicas && field(view, 'num-other-sentinels') === sentinels - 1,
      )
      if (ready) break
      if (Date.now() > deadline) throw new Error(`the sentinels did not settle: ${views.join(' | ')}`)
      await sleep(100)
    }
    return deployment
  } catch (error) {
    await deployment.stop()
    throw error
  }
}
