import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

// @homegrower-club/stoma 0.1.0-rc.5 ships `exports` pointing at ./src/*.ts,
// which the tarball lacks; point the specifiers at the shipped dist files
// and let vitest transform them (they import siblings without extensions).
const stomaDist = fileURLToPath(new URL('./node_modules/@homegrower-club/stoma/dist/', import.meta.url))

export default defineConfig({
  resolve: {
    alias: [
      { find: /^@homegrower-club\/stoma$/, replacement: `${stomaDist}index.js` },
      { find: /^@homegrower-club\/stoma\/sdk$/, replacement: `${stomaDist}policies/sdk/index.js` },
      { find: /^@homegrower-club\/stoma\/(policies|adapters|config)$/, replacement: `${stomaDist}$1/index.js` },
      { find: /^@homegrower-club\/stoma\/adapters\/(.+)$/, replacement: `${stomaDist}adapters/$1.js` },
    ],
  },
  test: {
    include: ['__test__/**/*.spec.{ts,mjs}'],
    server: { deps: { inline: [/@homegrower-club\/stoma/] } },
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
})
