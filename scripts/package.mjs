// npm run package: pack the main package and every platform package whose
// addon is on this machine into pkg/ (gitignored), ready for
// `npm install pkg/*.tgz` with no Rust toolchain and no registry.
//
// - Each napi target's platform package (npm/<platform>/) is packed when its
//   release addon exists: the host's build output at the repo root
//   (stoma-native.<platform>.node, built by `npm run build`, stripped) is
//   copied into npm/<platform>/ first; an addon already in npm/<platform>/
//   (e.g. a CI artifact) is packed as it is.
// - The main package is packed from a staging copy of exactly the files
//   `npm pack` would take, without the repository's scripts and
//   devDependencies, and with the platform packages added to its
//   package.json as optionalDependencies (as `napi prepublish` does): the
//   repository's package.json lists none, since they are not on the registry
//   and `npm ci` would fail on a lock file without them. By default it lists
//   only the platform packages packed beside it: listing the others too makes
//   npm ask the registry about unpublished packages (with no network it
//   retries for minutes). `--all-optional` lists every npm/<platform>/
//   package, for a release whose platform packages are all published.
//
// It checks what it packed: no .node in the main tarball, exactly one
// stripped release .node in each platform tarball, every platform package at
// the main package's version. Prints a JSON summary.
import { execFileSync, spawnSync } from 'node:child_process'
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const pkgDir = join(root, 'pkg')
const allOptional = process.argv.includes('--all-optional')
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const binaryName = manifest.napi.binaryName

function fail(message) {
  console.error(`package: ${message}`)
  process.exit(1)
}

// npm's own npm_* variables (from `npm run package`, e.g. npm_config_local_prefix) stay out of the nested npm pack.
const npmEnv = {
  ...Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key))),
  npm_config_update_notifier: 'false',
  npm_config_fund: 'false',
}

/** `npm pack` in `cwd` into pkg/; returns { filename, files: [{ path, size }] }. */
function npmPack(cwd) {
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', pkgDir, '--ignore-scripts'], {
    cwd,
    encoding: 'utf8',
    env: npmEnv,
  })
  const [result] = JSON.parse(out)
  return result
}

/** The ELF/Mach-O/PE check that matters: no symbol table left in an ELF. */
function isStripped(file) {
  const probe = spawnSync('file', ['-b', file], { encoding: 'utf8' })
  if (probe.status !== 0) return null // no `file` here: unknown
  if (!/ELF/.test(probe.stdout)) return null // only ELF is checked on this machine
  return /, stripped/.test(probe.stdout)
}

mkdirSync(pkgDir, { recursive: true })
for (const f of readdirSync(pkgDir))
  if (f.endsWith('.tgz') || f === '.stage') rmSync(join(pkgDir, f), { recursive: true, force: true })

// Platform packages.
const platforms = []
const packed = []
for (const platform of readdirSync(join(root, 'npm')).sort()) {
  const dir = join(root, 'npm', platform)
  const platformManifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
  if (platformManifest.version !== manifest.version)
    fail(`${platformManifest.name} is at ${platformManifest.version}, ${manifest.name} at ${manifest.version}`)
  platforms.push(platformManifest.name)
  const addon = `${binaryName}.${platform}.node`
  const built = join(root, addon)
  if (existsSync(built)) copyFileSync(built, join(dir, addon))
  if (!existsSync(join(dir, addon))) continue
  if (isStripped(join(dir, addon)) === false)
    fail(`${addon} is not stripped; build it with npm run build (release, --strip)`)
  const result = npmPack(dir)
  const nodes = result.files.filter((f) => f.path.endsWith('.node'))
  if (nodes.length !== 1 || nodes[0].path !== addon) {
    fail(`${result.filename} must carry exactly ${addon}, has ${JSON.stringify(nodes.map((f) => f.path))}`)
  }
  packed.push({
    name: platformManifest.name,
    version: platformManifest.version,
    tarball: `pkg/${result.filename}`,
    node: addon,
    nodeBytes: nodes[0].size,
    tarballBytes: statSync(join(pkgDir, result.filename)).size,
  })
}
if (packed.length === 0) fail(`no platform addon found; run npm run build first`)

// Main package, from a staging copy of exactly the files npm would pack.
const dryRun = JSON.parse(
  execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
    cwd: root,
    encoding: 'utf8',
    env: npmEnv,
  }),
)[0]
const stage = join(pkgDir, '.stage', manifest.name)
for (const { path } of dryRun.files) {
  mkdirSync(dirname(join(stage, path)), { recursive: true })
  cpSync(join(root, path), join(stage, path))
}
const listed = allOptional ? platforms : packed.map((p) => p.name)
// No scripts or devDependencies in the published manifest: the scripts (build,
// test, demo, bench, …) run files the tarball does not contain, and an
// installed package's devDependencies are never used.
const { scripts, devDependencies, ...published } = manifest
const staged = {
  ...published,
  optionalDependencies: {
    ...manifest.optionalDependencies,
    ...Object.fromEntries(listed.map((name) => [name, manifest.version])),
  },
}
writeFileSync(join(stage, 'package.json'), `${JSON.stringify(staged, null, 2)}\n`)
const main = npmPack(stage)
rmSync(join(pkgDir, '.stage'), { recursive: true, force: true })
const mainNodes = main.files.filter((f) => f.path.endsWith('.node'))
if (mainNodes.length > 0)
  fail(`${main.filename} must not carry an addon, has ${JSON.stringify(mainNodes.map((f) => f.path))}`)

console.log(
  JSON.stringify(
    {
      main: {
        name: manifest.name,
        version: manifest.version,
        tarball: `pkg/${main.filename}`,
        files: main.files.length,
        optionalDependencies: staged.optionalDependencies,
      },
      platforms: packed,
    },
    null,
    2,
  ),
)
