// The README's TypeScript examples that stand alone (the gateway under
// "Use", the TestAdapter with Stoma's harness) type-check exactly as shown,
// against this package's types and Stoma's (through the repository's
// tsconfig paths), so the front page cannot drift from the API.
import { execFile } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { expect, it } from 'vitest'

const run = promisify(execFile)
const root = fileURLToPath(new URL('..', import.meta.url))
const readme = readFileSync(`${root}README.md`, 'utf8')
const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1])

const standalone = {
  'the gateway under Use': (code) => code.includes('createGateway') && code.includes('memoryAdapter()'),
  'TestAdapter with Stoma’s harness': (code) => code.includes('createPolicyTestHarness'),
}

for (const [name, pick] of Object.entries(standalone)) {
  it(`README: ${name} type-checks as shown`, async () => {
    const code = blocks.find(pick)
    expect(code).toBeDefined()
    // Inside the package, so `stoma-native` resolves to it by its own name.
    const dir = `${root}node_modules/.cache/stoma-native/readme/`
    mkdirSync(dir, { recursive: true })
    const file = `${dir}${name.replace(/\W+/g, '-')}.ts`
    writeFileSync(file, `${code}\nexport {}\n`)
    writeFileSync(
      `${dir}tsconfig.json`,
      JSON.stringify({
        extends: '../../../../tsconfig.json',
        files: [file],
        compilerOptions: { noUnusedLocals: false },
      }),
    )
    await run(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-p', `${dir}tsconfig.json`])
  }, 60_000)
}
