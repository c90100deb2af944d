// npm run bench [-- --runtime node|bun|deno …] [-- <filter>…]: every case
// (or those whose name contains a filter) for this package and Stoma's JS
// stores in one process; prints a table of medians and ratios. Node runs
// every case; Bun and Deno (the devDependencies' binaries) run the memory
// cases in a child process of their own (benchmark/runtime.mjs). Without
// --runtime all three run, and a full run (no filter either) also rewrites
// BENCHMARKS.md, benchmark/chart.svg and the table in README.md. Progress
// goes to stderr.
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { bundleStomaMemoryStores, loadStoma } from '../scripts/load-stoma.mjs'
import e2eCases from './cases/e2e.mjs'
import memoryCases from './cases/memory.mjs'
import postgresCases from './cases/postgres.mjs'
import redisClusterCases from './cases/redis-cluster.mjs'
import redisCases from './cases/redis.mjs'
import slidingCases from './cases/sliding.mjs'
import { measure } from './harness.mjs'
import { RUNTIMES, runtimeCommand, table, writeReport } from './report.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))
const runtimes = []
const filters = []
const args = process.argv.slice(2)
for (let i = 0; i < args.length; i++) {
  const [flag, value] = args[i].split('=')
  if (flag !== '--runtime') filters.push(args[i])
  else runtimes.push(value ?? args[++i])
}
for (const runtime of runtimes) {
  if (!RUNTIMES.includes(runtime)) throw new Error(`--runtime must be one of ${RUNTIMES.join(', ')}, got ${runtime}`)
}
const selected = runtimes.length > 0 ? runtimes : RUNTIMES
const wanted = (name) => filters.length === 0 || filters.some((f) => name.includes(f))

/** Node: every case, in this process. */
async function inNode() {
  const stoma = {
    ...(await loadStoma('adapters/index.js')),
    ...(await loadStoma('policies/index.js')),
  }
  const context = { stoma }
  const cases = [
    ...memoryCases(context),
    ...slidingCases(context),
    ...redisCases(context),
    ...redisClusterCases(context),
    ...postgresCases(context),
    ...e2eCases(context),
  ].filter((c) => wanted(c.name))
  const rows = []
  for (const benchCase of cases) {
    process.stderr.write(`${benchCase.name} `)
    const result = benchCase.run
      ? await benchCase.run()
      : await measure(benchCase, context, { log: (s) => process.stderr.write(s) })
    process.stderr.write('\n')
    rows.push({ name: benchCase.name, target: benchCase.target, detail: benchCase.detail, ...result })
  }
  return rows
}

/** Deno resolves `stoma-native` (no self-reference there) through an import map. */
function denoImportMap() {
  const file = `${root}node_modules/.cache/stoma-native/deno-import-map.json`
  writeFileSync(file, JSON.stringify({ imports: { 'stoma-native': `${root}index.mjs` } }))
  return file
}

/** Bun or Deno: the memory cases, in a child process of that runtime. */
async function inChild(runtime) {
  if (![...memoryCases({}), ...slidingCases()].some((c) => wanted(c.name))) return []
  const bundle = await bundleStomaMemoryStores()
  const [command, prefix] = runtimeCommand(runtime, root, denoImportMap)
  const child = spawn(command, [...prefix, `${root}benchmark/runtime.mjs`, bundle, ...filters], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let stdout = ''
  child.stdout.on('data', (chunk) => {
    stdout += chunk
  })
  const code = await new Promise((resolve, reject) => child.on('error', reject).on('close', resolve))
  const line = stdout.split('\n').find((l) => l.startsWith('ROWS '))
  if (code !== 0 || !line) throw new Error(`${runtime} benchmark/runtime.mjs failed (exit ${code}):\n${stdout}`)
  return JSON.parse(line.slice('ROWS '.length))
}

const rows = []
for (const runtime of selected) {
  process.stderr.write(`— ${runtime}\n`)
  const section = runtime === 'node' ? await inNode() : await inChild(runtime)
  for (const row of section) rows.push({ runtime, ...row })
}

console.log(`\n${table(rows)}`)

// Only a full run rewrites BENCHMARKS.md, the chart and the README table.
if (filters.length === 0 && runtimes.length === 0) writeReport(rows)
