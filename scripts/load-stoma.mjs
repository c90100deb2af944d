// Loads @homegrower-club/stoma in plain Node. Its 0.1.0-rc.5 tarball points
// `exports` at ./src/*.ts, which it does not ship, and its dist files import
// siblings without extensions; so bundle the shipped dist entry once with
// esbuild (hono and zod stay external) into node_modules/.cache and import it.
import { existsSync, statSync } from 'node:fs'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { build } from 'esbuild'

const root = fileURLToPath(new URL('..', import.meta.url))
const dist = `${root}node_modules/@homegrower-club/stoma/dist/`
const cache = `${root}node_modules/.cache/stoma-native/`

/** `entry` is a path under Stoma's dist/, e.g. "index.js" or "adapters/index.js". */
export async function loadStoma(entry = 'index.js') {
  const source = dist + entry
  const bundle = `${cache}stoma-${entry.replaceAll('/', '-').replace(/\.js$/, '')}.mjs`
  if (!existsSync(bundle) || statSync(bundle).mtimeMs < statSync(source).mtimeMs) {
    await build({
      entryPoints: [source],
      bundle: true,
      platform: 'node',
      format: 'esm',
      external: ['hono', 'hono/*', 'zod'],
      outfile: bundle,
      logLevel: 'warning',
    })
  }
  return import(pathToFileURL(bundle).href)
}
