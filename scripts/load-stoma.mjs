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

/**
 * Stoma's three memory stores bundled whole (hono and zod are not needed
 * by them), for runtimes that resolve no bare specifiers from here (the
 * benchmark's Deno section): answers the bundle's path.
 */
export async function bundleStomaMemoryStores() {
  const bundle = `${cache}stoma-memory-stores.mjs`
  const sources = ['traffic/rate-limit.js', 'resilience/circuit-breaker.js', 'traffic/cache.js'].map(
    (file) => `${dist}policies/${file}`,
  )
  if (!existsSync(bundle) || sources.some((source) => statSync(bundle).mtimeMs < statSync(source).mtimeMs)) {
    await build({
      stdin: {
        contents: [
          `export { InMemoryRateLimitStore } from ${JSON.stringify(sources[0])}`,
          `export { InMemoryCircuitBreakerStore } from ${JSON.stringify(sources[1])}`,
          `export { InMemoryCacheStore } from ${JSON.stringify(sources[2])}`,
        ].join('\n'),
        resolveDir: root,
        loader: 'js',
      },
      bundle: true,
      platform: 'neutral',
      format: 'esm',
      outfile: bundle,
      logLevel: 'warning',
    })
  }
  return bundle
}

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
