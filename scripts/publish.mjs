// CI's publish job (.github/workflows/CI.yml): publish the tarballs in pkg/,
// the very ones CI's test job installed and ran, to npm: every platform
// package first, then the main package, so no published main package ever
// points at platform packages that are not there yet.
//
//   node scripts/publish.mjs [--dry-run]
//
// Before publishing anything it checks that pkg/ holds the main tarball and
// one per npm/<platform>/ package (one per napi target), all at
// package.json's version; that the main package
// lists every platform package as an optional dependency at that version (as
// `node scripts/package.mjs --all-optional` writes it); on a tag, that the tag
// is v<version>; and, with provenance (on GitHub Actions), that every
// package.json names this repository, which npm requires to accept the
// provenance statement. A version with a prerelease part (0.2.0-rc.1) goes to
// the `next` dist-tag, so `npm install stoma-native` keeps the last release.
// A package already on the registry at this version is skipped, so a rerun
// after a partial failure publishes the rest.
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const dryRun = process.argv.includes('--dry-run')
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const { name, version } = manifest
const provenance = process.env.GITHUB_ACTIONS === 'true'

function fail(message) {
  console.error(`publish: ${message}`)
  process.exit(1)
}

/** The package.json inside a tarball. */
function packedManifest(tarball) {
  return JSON.parse(execFileSync('tar', ['xzOf', tarball, 'package/package.json'], { encoding: 'utf8' }))
}

// The platform packages are npm/<platform>/, as scripts/package.mjs packs them.
const platformNames = readdirSync(join(root, 'npm'))
  .sort()
  .map((dir) => JSON.parse(readFileSync(join(root, 'npm', dir, 'package.json'), 'utf8')).name)
if (platformNames.length !== manifest.napi.targets.length)
  fail(
    `npm/ has ${platformNames.length} platform packages, package.json's napi.targets ${manifest.napi.targets.length}`,
  )
const packages = [...platformNames, name].map((pkg) => ({ pkg, tarball: join(root, 'pkg', `${pkg}-${version}.tgz`) }))
for (const { pkg, tarball } of packages) {
  if (!existsSync(tarball))
    fail(`${tarball} is missing: pack every target with node scripts/package.mjs --all-optional`)
  const packed = packedManifest(tarball)
  if (packed.name !== pkg || packed.version !== version)
    fail(`${tarball} holds ${packed.name}@${packed.version}, not ${pkg}@${version}`)
}
const optional = packedManifest(packages.at(-1).tarball).optionalDependencies ?? {}
for (const pkg of platformNames)
  if (optional[pkg] !== version) fail(`${name}'s tarball lists ${pkg}@${optional[pkg]} as optional, not ${version}`)

if (process.env.GITHUB_REF_TYPE === 'tag' && process.env.GITHUB_REF_NAME !== `v${version}`)
  fail(`tag ${process.env.GITHUB_REF_NAME} is not v${version}, package.json's version`)

if (provenance) {
  const repository = `${process.env.GITHUB_SERVER_URL}/${process.env.GITHUB_REPOSITORY}`
  for (const { pkg, tarball } of packages) {
    const { repository: field } = packedManifest(tarball)
    const url = (typeof field === 'string' ? field : (field?.url ?? '')).replace(/^git\+/, '').replace(/\.git$/, '')
    if (url !== repository)
      fail(`${pkg}'s package.json has repository ${JSON.stringify(field)}; npm's provenance check wants ${repository}`)
  }
}

const distTag = version.includes('-') ? 'next' : 'latest'
for (const { pkg, tarball } of packages) {
  const existing = spawnSync('npm', ['view', `${pkg}@${version}`, 'version'], { encoding: 'utf8' })
  if (existing.status === 0 && existing.stdout.trim() === version) {
    console.log(`${pkg}@${version} is already on the registry: skipped`)
    continue
  }
  const args = ['publish', tarball, '--access', 'public', '--tag', distTag]
  if (provenance) args.push('--provenance')
  if (dryRun) args.push('--dry-run')
  console.log(`npm ${args.join(' ')}`)
  const published = spawnSync('npm', args, { stdio: 'inherit' })
  if (published.status !== 0) fail(`npm publish ${tarball} failed`)
}
