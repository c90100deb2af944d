// Load for the fault tests: loops of calls running until stopped, each
// outcome recorded for the test to examine afterwards.
import { sleep } from './processes.mjs'

/**
 * Runs `workers` loops of `call(n)` (`n` numbers the calls in the order
 * they start) until `done()`, which resolves once every loop has stopped.
 * Each outcome records `n`, the `phase` (`state.phase` when the call
 * started; `phase` at first), `ok`, the `value` or error `message`, how many `ms` it took and
 * when it finished (`at`). A loop pauses `pauseMs` after a failure, so a
 * server that is down is not hammered.
 */
export function load(call, { workers = 32, pauseMs = 5, phase } = {}) {
  const state = { phase, stop: false, outcomes: [], calls: 0 }
  const loops = Array.from({ length: workers }, async () => {
    while (!state.stop) {
      const n = state.calls++
      const phase = state.phase
      const started = performance.now()
      try {
        const value = await call(n)
        state.outcomes.push({ n, phase, ok: true, value, ms: performance.now() - started, at: Date.now() })
      } catch (error) {
        const ms = performance.now() - started
        state.outcomes.push({ n, phase, ok: false, message: error.message, ms, at: Date.now() })
        await sleep(pauseMs)
      }
    }
  })
  state.done = () => {
    state.stop = true
    return Promise.all(loops)
  }
  return state
}
