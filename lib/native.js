'use strict'
// The addon, through napi-rs's generated loader (../native.js, rewritten by
// every `npm run build`, so not edited by hand). Every store requires it from
// here. When no addon loads, the loader's error leads with the WASI fallback
// it tried last and a generic npm hint, the missing package three causes
// deep; the error thrown here says first which platform package this machine
// needs and how to get it, and keeps the loader's error as its cause.

const { existsSync, readFileSync } = require('node:fs')
const { dirname, join } = require('node:path')

const root = join(__dirname, '..')

try {
  module.exports = require('../native.js')
} catch (error) {
  throw missingAddonError(error)
}

/** napi-rs's name for a Rust target triple: x86_64-unknown-linux-gnu → linux-x64-gnu, x86_64-apple-darwin → darwin-x64. */
function napiPlatform(triple) {
  const [cpu, , system, abi] = triple.split('-')
  const arch = { x86_64: 'x64', aarch64: 'arm64', i686: 'ia32', armv7: 'arm' }[cpu] ?? cpu
  const platform = { windows: 'win32' }[system] ?? system
  return abi ? `${platform}-${arch}-${abi}` : `${platform}-${arch}`
}

/** 'musl' or 'gnu', decided as the generated loader decides it, so both name the same package. */
function linuxLibc() {
  try {
    return readFileSync('/usr/bin/ldd', 'utf8').includes('musl') ? 'musl' : 'gnu'
  } catch {}
  if (typeof process.report?.getReport !== 'function') return 'gnu'
  process.report.excludeNetwork = true
  const report = process.report.getReport()
  if (report?.header?.glibcVersionRuntime) return 'gnu'
  const musl = report?.sharedObjects?.some?.((f) => f.includes('libc.musl-') || f.includes('ld-musl-'))
  return musl ? 'musl' : 'gnu'
}

function missingAddonError(cause) {
  const manifest = require('../package.json')
  const { platform, arch } = process
  const abi = { linux: linuxLibc(), win32: 'msvc' }[platform]
  const machine = `${platform} ${arch}${abi ? ` ${abi === 'gnu' ? 'glibc' : abi}` : ''}`
  const here = abi ? `${platform}-${arch}-${abi}` : `${platform}-${arch}`
  const platforms = manifest.napi.targets.map(napiPlatform)
  const packageName = `${manifest.napi.packageName ?? manifest.name}-${here}`

  let message
  if (process.env.NAPI_RS_NATIVE_LIBRARY_PATH) {
    message = `NAPI_RS_NATIVE_LIBRARY_PATH names ${process.env.NAPI_RS_NATIVE_LIBRARY_PATH}, which did not load as ${manifest.name}'s addon.`
  } else if (!platforms.includes(here)) {
    message =
      `${manifest.name} has no prebuilt addon for this machine (${machine}); its platform packages cover ` +
      `${platforms.join(', ')}. Build one from source with a Rust toolchain (napi build --platform --release).`
  } else {
    let installed = null
    try {
      installed = dirname(require.resolve(`${packageName}/package.json`))
    } catch {}
    message = installed
      ? `${packageName} (${manifest.name}'s addon for ${machine}) is installed at ${installed}, but its addon did not load; the loader's errors follow as the cause.`
      : `${packageName}, which holds ${manifest.name}'s addon for this machine (${machine}), is not installed.\n` +
        `Install it with \`npm install ${packageName}@${manifest.version}\`, or reinstall without --omit=optional / ` +
        `--no-optional: npm installs it as an optional dependency of ${manifest.name}. If npm skipped it anyway, ` +
        'remove node_modules and package-lock.json and install again (https://github.com/npm/cli/issues/4828).'
  }
  // A checkout of the repository (the published package has no Cargo.toml) builds its own addon.
  if (existsSync(join(root, 'Cargo.toml'))) message += '\nIn a checkout of the repository, `npm run build` builds it.'
  const error = new Error(message)
  // assigned, as the loader does: the `{ cause }` option is ignored by older runtimes
  error.cause = cause
  return error
}
