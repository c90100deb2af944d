// Writes what a full `npm run bench` measured: BENCHMARKS.md (every case,
// the machine, the date), benchmark/chart.svg (ratios as bars on a log
// scale) and the table between the bench markers in README.md.
import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { formatLatency, formatRate } from './harness.mjs'

const root = new URL('../', import.meta.url)

/** The runtimes the bench runs in, in this order; Bun and Deno are the devDependencies' binaries. */
export const RUNTIMES = ['node', 'bun', 'deno']
const RUNTIME_NAMES = { node: 'Node', bun: 'Bun', deno: 'Deno' }

/** `[command, args before the script]` that runs a script in `runtime` (Bun or Deno) from the checkout at `dir`. */
export function runtimeCommand(runtime, dir, denoImportMap) {
  if (runtime === 'bun') return [`${dir}node_modules/.bin/bun`, []]
  // The addon needs --allow-ffi for N-API as for Deno.dlopen; the CommonJS entry needs --unstable-detect-cjs.
  const permissions = ['--allow-read', '--allow-env', '--allow-ffi', '--allow-sys']
  return [
    `${dir}node_modules/.bin/deno`,
    ['run', ...permissions, '--unstable-detect-cjs', `--import-map=${denoImportMap()}`],
  ]
}

function versionOf(command, args, pattern) {
  try {
    return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).match(pattern)?.[1]
  } catch {
    return undefined
  }
}

export function machine() {
  return {
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model?.trim(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()} ${process.arch}`,
    node: process.version,
    bun: versionOf(new URL('node_modules/.bin/bun', root).pathname, ['--version'], /^(\S+)/),
    deno: versionOf(new URL('node_modules/.bin/deno', root).pathname, ['--version'], /deno (\S+)/),
    redis: versionOf('redis-server', ['--version'], /v=(\S+)/),
    postgres: versionOf('psql', ['--version'], /(\d+\.\d+)/),
  }
}

const ratioText = (r) => `${r >= 10 ? r.toFixed(0) : r.toFixed(2)}×`
const targetText = (row) =>
  row.target === undefined ? '' : `≥ ${row.target}× ${row.ratio >= row.target ? '✓' : '✗ missed'}`

const cell = (row, rate) =>
  row.unit === 'req' ? `${formatRate(rate).replace('/s', ' req/s')}` : `${formatRate(rate)} (${formatLatency(rate)}/op)`

const runtimeName = (row) => RUNTIME_NAMES[row.runtime ?? 'node']

export function table(rows) {
  const lines = [
    '| case | runtime | stoma-native | Stoma (JS) | ratio | target | notes |',
    '|---|---|---|---|---|---|---|',
  ]
  for (const row of rows) {
    lines.push(
      `| ${row.name} | ${runtimeName(row)} | ${cell(row, row.ours)} | ${cell(row, row.theirs)} | **${ratioText(row.ratio)}** | ${targetText(row)} | ${row.detail ?? ''} |`,
    )
  }
  return lines.join('\n')
}

/** A row's label in the chart: its name, and the runtime unless Node. */
const chartLabel = (row) => (row.runtime && row.runtime !== 'node' ? `${row.name} · ${runtimeName(row)}` : row.name)

function escapeXml(text) {
  return text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c])
}

/** A horizontal bar per case: log10 of the ratio, a rule at 1× (parity). */
export function chart(rows, date) {
  const label = 330
  const width = 900
  const plot = width - label - 90
  const barHeight = 22
  const top = 50
  const height = top + rows.length * (barHeight + 8) + 40
  const maxLog = Math.max(1, ...rows.map((r) => Math.log10(Math.max(r.ratio, r.target ?? 0))))
  const minLog = Math.min(-0.5, ...rows.map((r) => Math.log10(r.ratio)))
  const x = (ratio) => label + ((Math.log10(ratio) - minLog) / (maxLog - minLog)) * plot
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="system-ui, sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">stoma-native ÷ Stoma JS stores — throughput ratio (log scale; right of 1× is faster)</text>`,
  ]
  rows.forEach((row, i) => {
    const y = top + i * (barHeight + 8)
    const fill = row.target !== undefined && row.ratio < row.target ? '#d9822b' : row.ratio >= 1 ? '#2b8a3e' : '#868e96'
    const x0 = x(1)
    const x1 = x(row.ratio)
    parts.push(`<text x="${label - 8}" y="${y + 15}" text-anchor="end">${escapeXml(chartLabel(row))}</text>`)
    parts.push(
      `<rect x="${Math.min(x0, x1)}" y="${y}" width="${Math.max(1, Math.abs(x1 - x0))}" height="${barHeight}" fill="${fill}"/>`,
    )
    const labelAt = row.ratio >= 1 ? `x="${x1 + 6}"` : `x="${x1 - 6}" text-anchor="end"`
    parts.push(`<text ${labelAt} y="${y + 15}">${ratioText(row.ratio)}</text>`)
    if (row.target !== undefined) {
      parts.push(
        `<line x1="${x(row.target)}" x2="${x(row.target)}" y1="${y - 2}" y2="${y + barHeight + 2}" stroke="#000" stroke-dasharray="3,2"/>`,
      )
    }
  })
  const bottom = top + rows.length * (barHeight + 8)
  for (const tick of [0.5, 1, 2, 10, 100, 1000, 10000]) {
    if (Math.log10(tick) < minLog || Math.log10(tick) > maxLog) continue
    const stroke = tick === 1 ? 'stroke="#000"' : 'stroke="#ccc" stroke-dasharray="1,3"'
    parts.push(`<line x1="${x(tick)}" x2="${x(tick)}" y1="${top - 6}" y2="${bottom}" ${stroke}/>`)
    parts.push(`<text x="${x(tick)}" y="${bottom + 16}" text-anchor="middle" fill="#444">${tick}×</text>`)
  }
  parts.push(
    `<text x="${width - 10}" y="${height - 10}" text-anchor="end" fill="#666">dashed: target · ${escapeXml(date)}</text>`,
  )
  parts.push('</svg>')
  return `${parts.join('\n')}\n`
}

export function writeReport(rows) {
  const date = new Date().toISOString().slice(0, 10)
  const info = machine()
  const machineLine = `${info.cores} cores (${info.cpu}), ${info.memoryGiB} GiB, ${info.os}; Node ${info.node}, Bun ${info.bun ?? '?'}, Deno ${info.deno ?? '?'}, Redis ${info.redis ?? '?'}, PostgreSQL ${info.postgres ?? '?'}`
  const body = `${table(rows)}\n\nMeasured ${date} on ${machineLine}. Medians of alternating samples; ratio = stoma-native ÷ Stoma throughput. Bun and Deno run the memory cases in a process of their own, against Stoma's memory stores in the same process; notes name the road their calls take.`
  writeFileSync(
    new URL('BENCHMARKS.md', root),
    `# Benchmarks\n\nWritten by \`npm run bench\` (benchmark/run.mjs): each case runs this package's store and Stoma's own JS store (\`@homegrower-club/stoma\` 0.1.0-rc.5) in one process against the same servers; the memory cases run in Node, Bun and Deno (\`npm run bench -- --runtime bun\` runs one runtime's section).\n\n![ratios](benchmark/chart.svg)\n\n${body}\n`,
  )
  writeFileSync(new URL('benchmark/chart.svg', root), chart(rows, date))
  const readmeUrl = new URL('README.md', root)
  const readme = readFileSync(readmeUrl, 'utf8')
  const marked = /<!-- bench:start -->[\s\S]*<!-- bench:end -->/
  if (marked.test(readme)) {
    writeFileSync(readmeUrl, readme.replace(marked, `<!-- bench:start -->\n${body}\n<!-- bench:end -->`))
  }
}
