// npm run bench [-- <filter>…]: every case (or those whose name contains a
// filter) for this package and Stoma's JS stores in one process; prints a
// table of medians and ratios and writes benchmark/results.json.
import { loadStoma } from '../scripts/load-stoma.mjs'
import memoryCases from './cases/memory.mjs'
import { formatLatency, formatRate, measure } from './harness.mjs'
import { writeReport } from './report.mjs'

const filters = process.argv.slice(2)
const stoma = {
  ...(await loadStoma('adapters/index.js')),
  ...(await loadStoma('policies/index.js')),
}
const context = { stoma }
const cases = [...memoryCases(context)].filter((c) => filters.length === 0 || filters.some((f) => c.name.includes(f)))

const rows = []
for (const benchCase of cases) {
  process.stderr.write(`${benchCase.name} `)
  const result = await measure(benchCase, { log: (s) => process.stderr.write(s) })
  process.stderr.write('\n')
  rows.push({ name: benchCase.name, target: benchCase.target, ...result })
}

const pad = (s, n) => String(s).padEnd(n)
const met = (row) => (row.target === undefined ? '' : row.ratio >= row.target ? 'met' : 'MISSED')
console.log(
  `\n${pad('case', 46)}${pad('stoma-native', 24)}${pad('Stoma (JS)', 24)}${pad('ratio', 10)}target`,
)
for (const row of rows) {
  console.log(
    pad(row.name, 46) +
      pad(`${formatRate(row.ours)} (${formatLatency(row.ours)})`, 24) +
      pad(`${formatRate(row.theirs)} (${formatLatency(row.theirs)})`, 24) +
      pad(`${row.ratio >= 10 ? row.ratio.toFixed(0) : row.ratio.toFixed(2)}×`, 10) +
      (row.target === undefined ? '' : `≥ ${row.target}× ${met(row)}`),
  )
}

// Only a full run rewrites BENCHMARKS.md, the chart and the README table.
if (filters.length === 0) writeReport(rows)
