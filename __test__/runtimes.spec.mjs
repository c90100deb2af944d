// The packed package, installed the way a user installs it and run in Node
// (ESM and CommonJS), Bun and Deno.
//
// beforeAll packs pkg/ (scripts/package.mjs, the work of `npm run package`
// minus the build, which `npm test` has just done), installs
// pkg/stoma-native-<v>.tgz and pkg/stoma-native-linux-x64-gnu-<v>.tgz into an
// empty project under os.tmpdir() with no cargo/rustc on PATH, an
// unreachable registry and a private npm cache, and copies in
// __test__/runtimes/ (the smoke script, the contract runner, the Deno vitest
// shim, the type check) and store-contract.mjs. Each runtime then runs there
// under a bounded timeout. A second empty project gets the main tarball alone,
// as a user whose install skipped the platform package has it. Everything is
// removed afterwards, Redis keys too.
import { execFile, spawnSync } from 'node:child_process'
import { accessSync, constants, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { deleteRedisKeys } from '../scripts/cleanup.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))
const bin = (name) => join(root, 'node_modules', '.bin', name)
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379'
const keyPrefix = `stoma-native-runtimes:${process.pid}:${Date.now()}:`
const denoPermissions = ['--allow-read', '--allow-env', '--allow-ffi', '--allow-net', '--allow-sys']
const smokeChecks = [
  'import and require give the same objects',
  'addon from the platform package',
  '<runtime>Adapter stores',
  'memory stores: named state, binary bodies, bad input',
  'redis increment',
  'TestAdapter waitAll',
]

/** Runs a command to completion; rejects with its output on failure or after `timeout` ms (then SIGKILLed). */
function run(command, args, { cwd, env, timeout = 60_000 }) {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { cwd, env, timeout, killSignal: 'SIGKILL', maxBuffer: 16 << 20 },
      (error, stdout, stderr) => {
        if (error) {
          error.message = `${command} ${args.join(' ')} failed (${error.killed ? `killed after ${timeout} ms` : `exit ${error.code}`}):\n${stdout}\n${stderr}`
          reject(error)
        } else resolve({ stdout, stderr })
      },
    )
  })
}

/** PATH without any directory that holds cargo or rustc. */
function pathWithoutRust() {
  const hasRust = (dir) =>
    ['cargo', 'rustc'].some((tool) => {
      try {
        accessSync(join(dir, tool), constants.X_OK)
        return true
      } catch {
        return false
      }
    })
  return process.env.PATH.split(delimiter)
    .filter((dir) => dir && !hasRust(dir))
    .join(delimiter)
}

let project
let bare
let env
let packed

/** `npm install` the given tarballs into `cwd`, with no registry to reach. */
function installTarballs(cwd, tarballs) {
  return run(
    'npm',
    [
      'install',
      '--registry=http://127.0.0.1:9/', // nothing listens there: any registry request fails at once
      '--fetch-retries=0',
      '--no-audit',
      '--no-fund',
      '--no-update-notifier',
      ...tarballs.map((tarball) => join(root, tarball)),
    ],
    { cwd, env, timeout: 120_000 },
  )
}

beforeAll(async () => {
  const { stdout } = await run(process.execPath, [join(root, 'scripts', 'package.mjs')], {
    cwd: root,
    env: process.env,
    timeout: 120_000,
  })
  packed = JSON.parse(stdout)

  project = mkdtempSync(join(tmpdir(), 'stoma-native-runtimes-'))
  // Nothing from an enclosing `npm test` (npm_config_local_prefix, …) leaks into the install.
  const outer = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)))
  env = {
    ...outer,
    PATH: pathWithoutRust(),
    REDIS_URL: redisUrl,
    STOMA_SMOKE_PREFIX: keyPrefix,
    NO_COLOR: '1',
    // caches inside the project, removed with it
    npm_config_cache: join(project, '.npm-cache'),
    DENO_DIR: join(project, '.deno'),
    DENO_NO_UPDATE_CHECK: '1',
    BUN_RUNTIME_TRANSPILER_CACHE_PATH: '0',
    BUN_INSTALL_CACHE_DIR: join(project, '.bun'),
  }
  writeFileSync(
    join(project, 'package.json'),
    `${JSON.stringify({ name: 'stoma-native-smoke', private: true }, null, 2)}\n`,
  )
  await installTarballs(project, [packed.main.tarball, ...packed.platforms.map((p) => p.tarball)])
  for (const file of readdirSync(join(root, '__test__', 'runtimes')))
    cpSync(join(root, '__test__', 'runtimes', file), join(project, file))
  cpSync(join(root, '__test__', 'support', 'store-contract.mjs'), join(project, 'store-contract.mjs'))
  cpSync(join(root, '__test__', 'support', 'sliding-window.mjs'), join(project, 'sliding-window.mjs'))
  writeFileSync(
    join(project, 'deno.json'),
    `${JSON.stringify({ nodeModulesDir: 'manual', imports: { vitest: './vitest-deno-shim.mjs' } }, null, 2)}\n`,
  )
}, 300_000)

afterAll(async () => {
  if (project) rmSync(project, { recursive: true, force: true })
  if (bare) rmSync(bare, { recursive: true, force: true })
  await deleteRedisKeys(keyPrefix)
})

/** The SMOKE line a run printed, parsed. */
function smokeResult(stdout) {
  const line = stdout.split('\n').find((l) => l.startsWith('SMOKE '))
  expect(line, stdout).toBeDefined()
  return JSON.parse(line.slice('SMOKE '.length))
}

function expectSmoke(result, runtime, how) {
  expect(result).toMatchObject({ runtime, how, skipped: [] })
  expect(result.checks).toEqual(smokeChecks.map((c) => c.replace('<runtime>', runtime)))
  expect(result.addon).toBe(
    join(project, 'node_modules', 'stoma-native-linux-x64-gnu', 'stoma-native.linux-x64-gnu.node'),
  )
}

describe('packed tarballs', () => {
  it('main tarball: no addon; platform tarball: exactly one stripped release addon', () => {
    expect(packed.main.tarball).toBe(`pkg/stoma-native-${packed.main.version}.tgz`)
    expect(packed.platforms.map((p) => p.name)).toContain('stoma-native-linux-x64-gnu')
    expect(Object.keys(packed.main.optionalDependencies)).toEqual(packed.platforms.map((p) => p.name))
    const listing = (tarball) =>
      spawnSync('tar', ['tzf', join(root, tarball)], { encoding: 'utf8' })
        .stdout.trim()
        .split('\n')
    expect(listing(packed.main.tarball).filter((f) => f.endsWith('.node'))).toEqual([])
    for (const p of packed.platforms) {
      expect(listing(p.tarball).sort()).toEqual(
        ['package/README.md', 'package/package.json', `package/${p.node}`].sort(),
      )
    }
    const installed = join(project, 'node_modules', 'stoma-native-linux-x64-gnu', 'stoma-native.linux-x64-gnu.node')
    expect(spawnSync('file', ['-b', installed], { encoding: 'utf8' }).stdout).toMatch(/ELF 64-bit.*x86-64.*, stripped/)
  })

  it('install into an empty project, with no Rust toolchain and no registry, compiles nothing', () => {
    for (const tool of ['cargo', 'rustc']) expect(spawnSync(tool, ['--version'], { env }).error?.code).toBe('ENOENT')
    const modules = join(project, 'node_modules')
    expect(
      readdirSync(modules)
        .filter((d) => !d.startsWith('.'))
        .sort(),
    ).toEqual(['stoma-native', 'stoma-native-linux-x64-gnu'])
    expect(readdirSync(join(modules, 'stoma-native')).filter((f) => f.endsWith('.node'))).toEqual([])
    const manifest = JSON.parse(readFileSync(join(modules, 'stoma-native', 'package.json'), 'utf8'))
    // no install hooks, nor scripts for files the tarball lacks (demo, test, bench), nor devDependencies
    expect(manifest.scripts).toBeUndefined()
    expect(manifest.devDependencies).toBeUndefined()
    expect(manifest.optionalDependencies).toEqual({ 'stoma-native-linux-x64-gnu': manifest.version })
    expect(readdirSync(join(modules, 'stoma-native-linux-x64-gnu')).filter((f) => f.endsWith('.node'))).toEqual([
      'stoma-native.linux-x64-gnu.node',
    ])
  })

  it('TypeScript resolves the declarations through exports (import and require)', async () => {
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          strict: true,
          noEmit: true,
          types: [],
          lib: ['ES2022', 'DOM'],
        },
        files: ['types-check.mts', 'types-check.cts'],
      }),
    )
    await run(bin('tsc'), ['-p', 'tsconfig.json'], { cwd: project, env })
  })
})

describe('main package without its platform package', () => {
  // What each runtime shows for the load failure: the message and the cause's message.
  const probe = (load) =>
    `try { ${load}; console.log('LOADED') } catch (e) { console.log('MISSING ' + JSON.stringify({ message: e.message, cause: e.cause?.message })) }`

  /** The MISSING line a probe printed, parsed. */
  function missing(stdout) {
    const line = stdout.split('\n').find((l) => l.startsWith('MISSING '))
    expect(line, stdout).toBeDefined()
    return JSON.parse(line.slice('MISSING '.length))
  }

  /** The error leads with the platform package this machine needs and how to get it; the loader's error is its cause. */
  function expectNamesPlatformPackage({ message, cause }) {
    expect(message.match(/stoma-native-[\w-]+/)?.[0], message).toBe('stoma-native-linux-x64-gnu')
    expect(message.split('\n')[0]).toContain('(linux x64 glibc), is not installed')
    expect(message).toContain('npm install stoma-native-linux-x64-gnu@0.1.0')
    expect(message).toContain('--omit=optional')
    expect(cause).toMatch(/^Cannot find native binding/)
  }

  beforeAll(async () => {
    bare = mkdtempSync(join(tmpdir(), 'stoma-native-missing-'))
    writeFileSync(join(bare, 'package.json'), `${JSON.stringify({ name: 'stoma-native-missing', private: true })}\n`)
    // The main tarball alone: its optional dependency on the platform package fails to fetch (no registry) and is skipped.
    await installTarballs(bare, [packed.main.tarball])
    writeFileSync(join(bare, 'missing.cjs'), probe("require('stoma-native')"))
    writeFileSync(join(bare, 'missing.mjs'), probe("await import('stoma-native')"))
    writeFileSync(join(bare, 'deno.json'), `${JSON.stringify({ nodeModulesDir: 'manual' })}\n`)
  }, 150_000)

  it('npm installed the main package and skipped the platform package', () => {
    expect(readdirSync(join(bare, 'node_modules')).filter((d) => !d.startsWith('.'))).toEqual(['stoma-native'])
  })

  it('node: the error printed for require and for import names stoma-native-linux-x64-gnu first', async () => {
    for (const args of [
      ['-e', "require('stoma-native')"],
      ['--input-type=module', '-e', "import 'stoma-native'"],
    ]) {
      const failure = await run(process.execPath, args, { cwd: bare, env }).then(
        () => null,
        (error) => error,
      )
      expect(failure?.code, args.join(' ')).toBe(1)
      // Node prints the thrown error's stack, its message first, then the causes.
      const shown = failure.message.match(/^Error: (.*)$/m)?.[1]
      expect(shown, failure.message).toMatch(/^stoma-native-linux-x64-gnu, which holds stoma-native's addon/)
      expect(failure.message.indexOf(shown)).toBeLessThan(failure.message.indexOf('Cannot find native binding'))
    }
  })

  it('node, bun and deno: the caught error and its cause', async () => {
    const runtimes = [
      // Node 20 also reports a caught dynamic import of this ESM entry as uncaught (its ESM-importing-CommonJS
      // path), so Node's import is checked above, by the error it prints.
      [process.execPath, [], ['missing.cjs']],
      [bin('bun'), [], ['missing.cjs', 'missing.mjs']],
      [bin('deno'), ['run', ...denoPermissions], ['missing.cjs', 'missing.mjs']],
    ]
    for (const [command, prefix, files] of runtimes) {
      for (const file of files) {
        const { stdout } = await run(command, [...prefix, file], { cwd: bare, env })
        expectNamesPlatformPackage(missing(stdout))
      }
    }
  })
})

describe('smoke script in every runtime', () => {
  it('node, ESM (import)', async () => {
    expectSmoke(
      smokeResult((await run(process.execPath, ['smoke.mjs', '--esm'], { cwd: project, env })).stdout),
      'node',
      'import',
    )
  })

  it('node, CommonJS (require)', async () => {
    expectSmoke(
      smokeResult((await run(process.execPath, ['smoke.cjs'], { cwd: project, env })).stdout),
      'node',
      'require',
    )
  })

  it('bun, ESM and CommonJS', async () => {
    expectSmoke(
      smokeResult((await run(bin('bun'), ['smoke.mjs', '--esm'], { cwd: project, env })).stdout),
      'bun',
      'import',
    )
    expectSmoke(smokeResult((await run(bin('bun'), ['smoke.cjs'], { cwd: project, env })).stdout), 'bun', 'require')
  })

  it('deno, ESM and CommonJS', async () => {
    expectSmoke(
      smokeResult(
        (await run(bin('deno'), ['run', ...denoPermissions, 'smoke.mjs', '--esm'], { cwd: project, env })).stdout,
      ),
      'deno',
      'import',
    )
    expectSmoke(
      smokeResult((await run(bin('deno'), ['run', ...denoPermissions, 'smoke.cjs'], { cwd: project, env })).stdout),
      'deno',
      'require',
    )
  })
})

describe('store contract in other runtimes', () => {
  const suites = (runtime) => ['memory', 'TestAdapter', 'redis'].map((b) => `${runtime} ${b}: store contract`)

  it('bun test (vitest imports mapped to bun:test)', async () => {
    const { stdout, stderr } = await run(bin('bun'), ['test', './contract.test.mjs'], {
      cwd: project,
      env,
      timeout: 120_000,
    })
    const output = stdout + stderr
    expect(output).toMatch(/\b42 pass\b/)
    expect(output).toMatch(/\b0 fail\b/)
    for (const suite of suites('bun')) expect(output).toContain(suite)
  }, 150_000)

  it('deno test (vitest imports mapped to a describe/it/expect shim on Deno.test)', async () => {
    const { stdout, stderr } = await run(bin('deno'), ['test', '--no-check', ...denoPermissions, 'contract.test.mjs'], {
      cwd: project,
      env,
      timeout: 120_000,
    })
    const output = stdout + stderr
    expect(output).toMatch(/ok \| 3 passed \(51 steps\) \| 0 failed/)
    for (const suite of suites('deno')) expect(output).toContain(`${suite} ... ok`)
  }, 150_000)
})

describe("the memory stores' road in Bun and Deno (ffi.test.mjs)", () => {
  // The FFI road (lib/ffi.js), which the store contract above took, then the
  // N-API road it falls back to; the panic hook needs STOMA_NATIVE_TEST_HOOKS.
  const roads = [
    { label: 'bun:ffi and Deno.dlopen', extra: { STOMA_NATIVE_TEST_HOOKS: '1' }, bun: 12, deno: '3 passed (12 steps)' },
    { label: 'N-API with STOMA_NATIVE_FFI=0', extra: { STOMA_NATIVE_FFI: '0' }, bun: 7, deno: '2 passed (7 steps)' },
  ]
  for (const { label, extra, bun, deno } of roads) {
    it(`bun test, ${label}: the road, shared state with workers and N-API, the C boundary`, async () => {
      const { stdout, stderr } = await run(bin('bun'), ['test', './ffi.test.mjs'], {
        cwd: project,
        env: { ...env, ...extra },
        timeout: 60_000,
      })
      const output = stdout + stderr
      expect(output).toMatch(new RegExp(`\\b${bun} pass\\b`))
      expect(output).toMatch(/\b0 fail\b/)
    }, 90_000)

    it(`deno test, ${label}: the road, shared state with workers and N-API, the C boundary`, async () => {
      const { stdout, stderr } = await run(bin('deno'), ['test', '--no-check', ...denoPermissions, 'ffi.test.mjs'], {
        cwd: project,
        env: { ...env, ...extra },
        timeout: 60_000,
      })
      expect(stdout + stderr).toContain(`ok | ${deno} | 0 failed`)
    }, 90_000)
  }
})

describe('the sliding-window contract in Bun and Deno (sliding.test.mjs)', () => {
  // The FFI road, then N-API; the frozen clock needs STOMA_NATIVE_TEST_HOOKS.
  const roads = [
    { label: 'bun:ffi and Deno.dlopen', extra: { STOMA_NATIVE_TEST_HOOKS: '1' }, bun: 'bun:ffi', deno: 'Deno.dlopen' },
    {
      label: 'N-API with STOMA_NATIVE_FFI=0',
      extra: { STOMA_NATIVE_TEST_HOOKS: '1', STOMA_NATIVE_FFI: '0' },
      bun: 'N-API',
      deno: 'N-API',
    },
  ]
  // 3 suites: the store's 9 cases, the runtime adapter's 8 (no options case), the TestAdapter's 9.
  const cases = 9 + 8 + 9
  for (const { label, extra, bun, deno } of roads) {
    it(`bun test, ${label}`, async () => {
      const { stdout, stderr } = await run(bin('bun'), ['test', './sliding.test.mjs'], {
        cwd: project,
        env: { ...env, ...extra },
        timeout: 120_000,
      })
      const output = stdout + stderr
      expect(output).toMatch(new RegExp(`\\b${cases} pass\\b`))
      expect(output).toMatch(/\b0 fail\b/)
      // The suites are named after the road the stores took.
      expect(output).toContain(`bun ${bun} MemoryRateLimitStore: sliding-window contract`)
    }, 150_000)

    it(`deno test, ${label}`, async () => {
      const { stdout, stderr } = await run(
        bin('deno'),
        ['test', '--no-check', ...denoPermissions, 'sliding.test.mjs'],
        {
          cwd: project,
          env: { ...env, ...extra },
          timeout: 120_000,
        },
      )
      expect(stdout + stderr).toContain(`ok | 3 passed (${cases} steps) | 0 failed`)
      expect(stdout + stderr).toContain(`deno ${deno} MemoryRateLimitStore: sliding-window contract ... ok`)
    }, 150_000)
  }
})
