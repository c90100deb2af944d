// Builds the release addon in place (cargo rebuilds only what changed).
// Without a Rust toolchain, an existing build or installed prebuilt is used.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const hasCargo = spawnSync('cargo', ['--version'], { stdio: 'ignore' }).status === 0
if (hasCargo) {
  const built = spawnSync('npm', ['run', '--silent', 'build'], { cwd: root, stdio: 'inherit' })
  process.exit(built.status ?? 1)
}
if (
  !readdirSync(root).some((f) => f.endsWith('.node')) &&
  !existsSync(`${root}node_modules/stoma-native-linux-x64-gnu`)
) {
  console.error(
    'stoma-native: no Rust toolchain (cargo) on PATH and no built addon; install Rust from https://rustup.rs',
  )
  process.exit(1)
}
