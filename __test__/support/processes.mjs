// Child Node processes for the tests, the entry points they load, and the
// servers the suites share (REDIS_URL, DATABASE_URL).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import net from 'node:net'
import { fileURLToPath } from 'node:url'

export const entry = fileURLToPath(new URL('../../index.js', import.meta.url))
export const nativeEntry = fileURLToPath(new URL('../../native.js', import.meta.url))
export const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379'
export const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres'
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Resolves once something accepts TCP connections on `port` (or throws after `limitMs`). */
export async function waitForPort(port, limitMs = 10_000) {
  const started = Date.now()
  while (Date.now() - started < limitMs) {
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1')
      socket.once('connect', () => {
        socket.destroy()
        resolve(true)
      })
      socket.once('error', () => resolve(false))
    })
    if (ok) return Date.now() - started
    await sleep(10)
  }
  throw new Error(`nothing listens on port ${port} after ${limitMs} ms`)
}

/**
 * Runs a Node script (ESM source) in a child process with `env`; resolves
 * with `{ code, stdout, stderr }`, or code 'timeout' after `limitMs`.
 */
export async function runNode(source, { args = [], env = {}, limitMs = 60_000 } = {}) {
  const child = spawn(process.execPath, [...args, '--input-type=module', '-e', source], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, STOMA_NATIVE: entry, STOMA_NATIVE_BINDING: nativeEntry, ...env },
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => (stdout += chunk))
  child.stderr.on('data', (chunk) => (stderr += chunk))
  const timer = setTimeout(() => child.kill('SIGKILL'), limitMs)
  const [code, signal] = await once(child, 'exit')
  clearTimeout(timer)
  return { code: signal === 'SIGKILL' ? 'timeout' : (code ?? signal), stdout, stderr }
}

/** The last line of a child's stdout, parsed as JSON. */
export function lastJson(stdout) {
  const lines = stdout.trim().split('\n')
  return JSON.parse(lines[lines.length - 1])
}
