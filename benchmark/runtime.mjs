// The memory cases inside Bun or Deno, spawned by benchmark/run.mjs for its
// per-runtime sections: this package's stores, on the road the runtime
// takes (lib/ffi.js), against Stoma's memory stores bundled for it, in the
// same process. Arguments: the bundle's path, then the case filters.
// Progress goes to stderr; the rows to stdout as one line `ROWS [json]`.
import { createRequire } from 'node:module'
import process from 'node:process'
import { pathToFileURL } from 'node:url'
import memoryCases from './cases/memory.mjs'
import slidingCases from './cases/sliding.mjs'
import { measure } from './harness.mjs'

const [bundle, ...filters] = process.argv.slice(2)
const stoma = await import(pathToFileURL(bundle).href)
const ffi = createRequire(import.meta.url)('../lib/ffi.js')
const road = ffi ? { bun: 'bun:ffi', deno: 'Deno.dlopen' }[ffi.runtime] : 'N-API'

const rows = []
for (const benchCase of [...memoryCases({ stoma }), ...slidingCases()]) {
  if (filters.length > 0 && !filters.some((f) => benchCase.name.includes(f))) continue
  process.stderr.write(`${benchCase.name} `)
  const result = await measure(benchCase, { stoma }, { log: (s) => process.stderr.write(s) })
  process.stderr.write('\n')
  const detail = [road, benchCase.detail].filter(Boolean).join('; ')
  rows.push({ name: benchCase.name, target: benchCase.runtimeTarget ?? benchCase.target, detail, ...result })
}
console.log(`ROWS ${JSON.stringify(rows)}`)
