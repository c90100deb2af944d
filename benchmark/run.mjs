// npm run bench [-- <filter>…]: every case (or those whose name contains a
// filter) for this package and Stoma's JS stores in one process; prints a
// table of medians and ratios; a full run also rewrites BENCHMARKS.md,
// benchmark/chart.svg and the table in README.md. Progress goes to stderr.
import { loadStoma } from '../scripts/load-stoma.mjs'
import e2eCases from './cases/e2e.mjs'
import memoryCases from './cases/memory.mjs'
import postgresCases from './cases/postgres.mjs'
import redisClusterCases from './cases/redis-cluster.mjs'
import redisCases from './cases/redis.mjs'
import { measure } from './harness.mjs'
import { table, writeReport } from './report.mjs'

const filters = process.argv.slice(2)
const stoma = {
  ...(await loadStoma('adapters/index.js')),
  ...(await loadStoma('policies/index.js')),
}
const context = { stoma }
const cases = [
  ...memoryCases(context),
  ...redisCases(context),
  ...redisClusterCases(context),
  ...postgresCases(context),
  ...e2eCases(context),
].filter((c) => filters.length === 0 || filters.some((f) => c.name.includes(f)))

const rows = []
for (const benchCase of cases) {
  process.stderr.write(`${benchCase.name} `)
  const result = benchCase.run
    ? await benchCase.run()
    : await measure(benchCase, context, { log: (s) => process.stderr.write(s) })
  process.stderr.write('\n')
  rows.push({ name: benchCase.name, target: benchCase.target, ...result })
}

console.log(`\n${table(rows)}`)

// Only a full run rewrites BENCHMARKS.md, the chart and the README table.
if (filters.length === 0) writeReport(rows)
