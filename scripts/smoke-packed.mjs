// The packed tarballs as a user gets them, on this machine: CI's test job runs
// this on every OS and Node version (.github/workflows/CI.yml), and it runs by
// hand after `npm run package`:
//
//   node scripts/smoke-packed.mjs --platform linux-x64-gnu [--runtimes node,bun,deno]
//
// 1. Into an empty project, `npm install` pkg/stoma-native-<v>.tgz and
//    pkg/stoma-native-<platform>-<v>.tgz, then run __test__/runtimes/smoke.mjs
//    (ESM) and smoke.cjs (CommonJS) there in each runtime listed (node, the
//    default, is the Node running this script; bun and deno are installed
//    from npm at the versions package.json's devDependencies pin). Each run
//    must print its SMOKE line naming the runtime, the addon from
//    stoma-native-<platform>, and every check.
// 2. Into a second empty project, the main tarball alone (--omit=optional):
//    requiring it must fail with an error that names stoma-native-<platform>
//    before any other package, the loader's error as its cause.
//
// Redis: REDIS_URL (redis://127.0.0.1:6379 by default) must answer, unless
// STOMA_SMOKE_REDIS=skip (the smoke script then reports the check skipped).
// Temporary projects are removed at the end; exits 1 on the first failure.
import { execFileSync, spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const root = fileURLToPath(new URL('..', import.meta.url))
const made = [] // temporary directories, removed on the way out
const { values: args } = parseArgs({
  options: {
    platform: { type: 'string' },
    runtimes: { type: 'string', default: 'node' },
  },
})
if (!args.platform) fail('--platform <napi platform, e.g. linux-x64-gnu> is required')
const wanted = args.runtimes.split(',').filter(Boolean)
if (wanted.length === 0 || wanted.some((name) => !['node', 'bun', 'deno'].includes(name)))
  fail(`--runtimes takes a comma-separated list of node, bun and deno, got ${JSON.stringify(args.runtimes)}`)
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const platformPackage = `${manifest.name}-${args.platform}`
const tarballs = {
  main: join(root, 'pkg', `${manifest.name}-${manifest.version}.tgz`),
  platform: join(root, 'pkg', `${platformPackage}-${manifest.version}.tgz`),
}
for (const tarball of Object.values(tarballs))
  if (!existsSync(tarball)) fail(`${tarball} is missing; pack with npm run package first`)

const windows = process.platform === 'win32'
const npm = windows ? 'npm.cmd' : 'npm'

function fail(message) {
  console.error(`smoke-packed: ${message}`)
  for (const dir of made) rmSync(dir, { recursive: true, force: true })
  process.exit(1)
}

/** A new empty directory holding a private package.json. */
function emptyProject(name, extra = {}) {
  const dir = mkdtempSync(join(tmpdir(), `${name}-`))
  made.push(dir)
  writeFileSync(join(dir, 'package.json'), `${JSON.stringify({ name, private: true, ...extra }, null, 2)}\n`)
  return dir
}

// npm's own npm_* variables (when run through npm) stay out of the nested installs.
const baseEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)))

function npmInstall(cwd, specs, flags = []) {
  // npm.cmd is a batch file: Windows runs those only through a shell (the arguments here have no spaces).
  const result = spawnSync(npm, ['install', '--no-audit', '--no-fund', '--no-update-notifier', ...flags, ...specs], {
    cwd,
    env: baseEnv,
    encoding: 'utf8',
    shell: windows,
    timeout: 300_000,
  })
  if (result.status !== 0) fail(`npm install ${specs.join(' ')} failed:\n${result.stdout}\n${result.stderr}`)
}

/** Runs `command args` in `cwd`; returns stdout, or fails with everything it printed. */
function run(command, commandArgs, cwd, env) {
  const result = spawnSync(command, commandArgs, {
    cwd,
    env,
    encoding: 'utf8',
    timeout: 120_000,
    killSignal: 'SIGKILL',
  })
  if (result.status !== 0)
    fail(
      `${command} ${commandArgs.join(' ')} failed (${result.error?.message ?? `exit ${result.status}`}):\n${result.stdout}\n${result.stderr}`,
    )
  return result.stdout
}

// 1. Main and platform package, then the smoke script in every runtime asked for.
const project = emptyProject('stoma-native-smoke')
npmInstall(project, [tarballs.main, tarballs.platform])
for (const file of ['smoke.mjs', 'smoke.cjs']) cpSync(join(root, '__test__', 'runtimes', file), join(project, file))
writeFileSync(join(project, 'deno.json'), `${JSON.stringify({ nodeModulesDir: 'manual' })}\n`)

const runtimes = []
if (wanted.includes('node')) runtimes.push({ name: 'node', command: process.execPath, prefix: [] })
const fromNpm = wanted.filter((name) => name !== 'node')
if (fromNpm.length > 0) {
  // The runtimes' own npm packages, outside the project so it holds only what a user installs.
  const tools = emptyProject('stoma-native-smoke-tools', {
    allowScripts: Object.fromEntries(fromNpm.map((name) => [name, true])),
  })
  npmInstall(
    tools,
    fromNpm.map((name) => `${name}@${manifest.devDependencies[name]}`),
  )
  const exe = windows ? '.exe' : ''
  // the binaries themselves, not npm's .bin shims (.cmd files on Windows)
  if (fromNpm.includes('bun'))
    runtimes.push({ name: 'bun', command: join(tools, 'node_modules', 'bun', 'bin', 'bun.exe'), prefix: [] })
  if (fromNpm.includes('deno')) {
    runtimes.push({
      name: 'deno',
      command: join(tools, 'node_modules', 'deno', `deno${exe}`),
      prefix: ['run', '--allow-read', '--allow-env', '--allow-ffi', '--allow-net', '--allow-sys'],
    })
  }
}

const env = {
  ...baseEnv,
  STOMA_SMOKE_PLATFORM: args.platform,
  STOMA_SMOKE_PREFIX: `stoma-native-smoke:${process.pid}:${Date.now()}:`,
  NO_COLOR: '1',
  DENO_NO_UPDATE_CHECK: '1',
}
for (const { name, command, prefix } of runtimes) {
  for (const [how, script] of [
    ['import', ['smoke.mjs', '--esm']],
    ['require', ['smoke.cjs']],
  ]) {
    const stdout = run(command, [...prefix, ...script], project, env)
    const line = stdout.split('\n').find((l) => l.startsWith('SMOKE '))
    if (!line) fail(`${name} ${script.join(' ')} printed no SMOKE line:\n${stdout}`)
    const result = JSON.parse(line.slice('SMOKE '.length))
    const addonFile = `stoma-native.${args.platform}.node`
    if (result.runtime !== name || result.how !== how || result.checks.length + result.skipped.length !== 6)
      fail(`${name} ${how}: unexpected SMOKE line ${line}`)
    if (result.addon.split(/[\\/]/).slice(-2).join('/') !== `${platformPackage}/${addonFile}`)
      fail(`${name} ${how}: addon ${result.addon} is not ${platformPackage}'s ${addonFile}`)
    console.log(
      `ok ${name} ${result.runtimeVersion} ${how}: ${result.checks.length} checks passed` +
        (result.skipped.length ? `, skipped: ${result.skipped.join(', ')}` : ''),
    )
  }
}

// 2. The main package alone: the error must lead with the platform package this machine needs.
const bare = emptyProject('stoma-native-missing')
npmInstall(bare, [tarballs.main], ['--omit=optional'])
const probe = execFileSync(
  process.execPath,
  [
    '-e',
    "try { require('stoma-native'); console.log('{}') } catch (e) { console.log(JSON.stringify({ message: e.message, cause: e.cause?.message })) }",
  ],
  { cwd: bare, env: baseEnv, encoding: 'utf8' },
)
const { message, cause } = JSON.parse(probe)
const firstPackage = message?.match(/stoma-native-[\w-]+/)?.[0]
if (firstPackage !== platformPackage || !/Cannot find native binding/.test(cause ?? ''))
  fail(`without ${platformPackage}, require('stoma-native') gave ${probe}`)
console.log(`ok main package alone: the error names ${platformPackage} first`)

for (const dir of made) rmSync(dir, { recursive: true, force: true })
